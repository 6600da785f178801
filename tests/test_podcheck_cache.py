"""device.podcheck.CachedModelCheck over the real child check: a manifest is judged once."""

from __future__ import annotations

import threading

from support.sync import FAKE_DIGEST, TEST_REGISTRY, pod_yaml

from device.podcheck import CachedModelCheck, ChildModelCheck

GOOD = pod_yaml("web", f"{TEST_REGISTRY}/edgefleet/web@{FAKE_DIGEST}")
BAD = "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec: {containers: 7}\n"


class Counting:
    def __init__(self) -> None:
        self.inner = ChildModelCheck(timeout=120)
        self.calls: list[list[str]] = []

    def __call__(self, manifests):  # type: ignore[no-untyped-def]
        self.calls.append(sorted(manifests))
        return self.inner(manifests)


def test_verdicts_are_cached_by_text_and_concurrent_callers_share_one_child() -> None:
    child = Counting()
    check = CachedModelCheck(child, capacity=2)
    answers: list[dict] = []
    threads = [
        threading.Thread(target=lambda: answers.append(check({"web": GOOD, "bad": BAD})))
        for _ in range(5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(child.calls) == 1  # five agents, one child
    assert all(a["web"] is None and isinstance(a["bad"], str) for a in answers)
    # Same text under another name: still a hit; a new text: only it goes to the child.
    again = check({"other-name": GOOD, "new": GOOD.replace("web", "web2")})
    assert again["other-name"] is None and again["new"] is None
    assert child.calls[-1] == ["new"]
    assert check.hits == 9 and check.misses == 3
    # Bounded: the least recently used verdict is gone.
    check({"bad": BAD})
    assert child.calls[-1] == ["bad"]


def test_a_shared_directory_lets_other_processes_reuse_a_verdict(tmp_path) -> None:
    """The fleet simulator's worker processes: the second cache never runs its child."""
    first, second = Counting(), Counting()
    a = CachedModelCheck(first, shared=tmp_path / "verdicts")
    b = CachedModelCheck(second, shared=tmp_path / "verdicts")
    assert a({"web": GOOD, "bad": BAD}) == b({"web": GOOD, "bad": BAD})
    assert len(first.calls) == 1 and second.calls == []
    # A damaged file is no verdict: that manifest is judged again.
    key = next(p for p in (tmp_path / "verdicts").iterdir() if not p.name.startswith("."))
    key.write_text('{"v": 7}')
    c_child = Counting()
    CachedModelCheck(c_child, shared=tmp_path / "verdicts")({"web": GOOD, "bad": BAD})
    assert len(c_child.calls) == 1 and len(c_child.calls[0]) == 1
