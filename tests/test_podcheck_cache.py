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
