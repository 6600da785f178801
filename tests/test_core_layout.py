"""edgefleet.core.layout: object names and name checks."""

from __future__ import annotations

import pytest

from edgefleet.core import layout
from edgefleet.core.errors import InvalidInput


def test_object_names() -> None:
    assert layout.set_object("x86_64", "beta") == "sets/x86_64/beta.json"
    assert layout.manifest_object("aarch64", "stable", "model") == "aarch64/stable/model-pod.yaml"
    assert layout.manifest_object("armv7l", "all", "agent") == "armv7l/all/agent-pod.yaml"
    assert layout.template_object("model-server") == "templates/model-server.yaml.j2"
    assert layout.status_object("pi-7.lab_1") == "status/pi-7.lab_1.json"


@pytest.mark.parametrize("arch", ["amd64", "arm64", "X86_64", "", "riscv64"])
def test_unknown_arch_rejected(arch) -> None:
    with pytest.raises(InvalidInput, match="unknown arch"):
        layout.set_object(arch, "beta")


@pytest.mark.parametrize(
    "channel", ["all", "buildcache", "Beta", "-x", "x-", "a" * 64, "", "a/b", "a.b"]
)
def test_bad_channel_rejected(channel) -> None:
    with pytest.raises(InvalidInput, match="invalid channel"):
        layout.check_channel(channel)


@pytest.mark.parametrize("name", ["../x", "a_b", "A", "", "x" * 64, ".hidden", "a/b"])
def test_bad_names_rejected(name) -> None:
    with pytest.raises(InvalidInput):
        layout.manifest_file_name(name)


@pytest.mark.parametrize("device", ["", "-x", "a b", "a/b", "x" * 129, "../etc"])
def test_bad_device_ids_rejected(device) -> None:
    with pytest.raises(InvalidInput):
        layout.status_object(device)


def test_is_manifest_file_name() -> None:
    assert layout.is_manifest_file_name("model-pod.yaml")
    assert not layout.is_manifest_file_name(".model-pod.yaml")
    assert not layout.is_manifest_file_name("sub/model-pod.yaml")
    assert not layout.is_manifest_file_name("model.yaml")
    assert not layout.is_manifest_file_name("-pod.yaml")


def test_parse_channels() -> None:
    assert layout.parse_channels(None) == layout.DEFAULT_CHANNELS
    assert layout.parse_channels("  ") == layout.DEFAULT_CHANNELS
    assert layout.parse_channels("beta, stable,beta") == ("beta", "stable")
    with pytest.raises(InvalidInput):
        layout.parse_channels("beta,all")


def test_arch_aliases() -> None:
    assert layout.arch_from_alias("AMD64") == "x86_64"
    assert layout.arch_from_alias("arm64") == "aarch64"
    assert layout.arch_from_alias("armhf") == "armv7l"
    assert layout.arch_from_alias("s390x") is None


def test_parse_arches_defaults_dedupes_and_rejects_unknown():
    assert layout.parse_arches(None) == layout.ARCHES
    assert layout.parse_arches(" aarch64, x86_64,aarch64 ") == ("aarch64", "x86_64")
    with pytest.raises(InvalidInput, match="unknown arch 'mips'"):
        layout.parse_arches("x86_64,mips")
