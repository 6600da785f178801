"""edgefleet.core.refs: the distribution reference grammar, pure unit tests."""

from __future__ import annotations

import pytest

from edgefleet.core import refs
from edgefleet.core.errors import InvalidReference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("localhost:5000/model", "localhost:5000", "model", None, None),
        ("localhost/model:beta", "localhost", "model", "beta", None),
        (
            "127.0.0.1:5000/team/model-server:v1.2",
            "127.0.0.1:5000",
            "team/model-server",
            "v1.2",
            None,
        ),
        (f"reg.example:443/a/b/c@{D}", "reg.example:443", "a/b/c", None, D),
        (f"reg.example/a__b/c.d-e:latest@{D}", "reg.example", "a__b/c.d-e", "latest", D),
        ("[::1]:5000/model:x", "[::1]:5000", "model", "x", None),
        ("Host.Example/model", "Host.Example", "model", None, None),
        ("reg.example/m:_under", "reg.example", "m", "_under", None),
    ],
)
def test_parse_accepts_grammar(text, registry, repository, tag, digest) -> None:
    ref = refs.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert str(ref) == text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("model", "no registry host"),
        ("model:latest", "no registry host"),
        ("team/model", "no registry host"),  # "team" is not a host: no '.', ':' or localhost
        ("localhost:5000/Model", "invalid repository path"),
        ("localhost:5000/model/", "invalid repository path"),
        ("localhost:5000//model", "invalid repository path"),
        ("localhost:5000/mo--del_", "invalid repository path"),
        ("localhost:5000/model:", "invalid tag"),
        ("localhost:5000/model:-x", "invalid tag"),
        ("localhost:5000/model:" + "a" * 129, "invalid tag"),
        ("localhost:5000/model@sha256:abc", "invalid digest"),
        ("localhost:5000/model@sha256:" + "A" * 64, "sha256"),
        ("localhost:5000/model@" + "0" * 64, "invalid digest"),
        ("local host:5000/model", "white space"),
        ("localhost:5000/model\n", "white space"),
        ("-bad.host/model", "no registry host"),
        ("reg.example/" + "a" * 250, "longer than 255"),
    ],
)
def test_parse_rejects(text, fragment) -> None:
    with pytest.raises(InvalidReference, match=fragment):
        refs.parse(text)


def test_parse_rejects_non_string() -> None:
    with pytest.raises(InvalidReference):
        refs.parse(None)  # type: ignore[arg-type]


def test_with_digest_drops_tag_and_checks() -> None:
    ref = refs.parse("localhost:5000/team/model:beta")
    pinned = ref.with_digest(D)
    assert str(pinned) == f"localhost:5000/team/model@{D}"
    assert pinned.last_component == "model"
    with pytest.raises(InvalidReference):
        ref.with_digest("sha256:nothex")
    assert str(pinned.with_tag("stable")) == "localhost:5000/team/model:stable"
    with pytest.raises(InvalidReference):
        ref.with_tag("bad tag")


def test_is_pinned() -> None:
    assert refs.is_pinned(f"localhost:5000/m@{D}")
    assert refs.is_pinned(f"localhost:5000/m:beta@{D}")
    assert not refs.is_pinned("localhost:5000/m:beta")
    assert not refs.is_pinned("not a ref")
    assert not refs.is_pinned("localhost:5000/m@sha512:" + "a" * 128)


@pytest.mark.parametrize(
    ("name", "allowed", "ok"),
    [
        ("reg:5000/team/model", ("reg:5000/team",), True),
        ("reg:5000/team/model", ("reg:5000",), True),
        ("reg:5000/team/model", ("reg:5000/team/model",), True),
        ("reg:5000/teamx/model", ("reg:5000/team",), False),
        ("reg:50001/team/model", ("reg:5000",), False),
        ("reg:5000/team/model", ("reg:5000/team/",), True),
        ("reg:5000/team/model", ("", " "), False),
        ("reg:5000/team/model", (), False),
        ("other:5000/team/model", ("reg:5000", "other:5000/team"), True),
    ],
)
def test_registry_allows_whole_components(name, allowed, ok) -> None:
    assert refs.registry_allows(refs.parse(name), allowed) is ok
