"""The custom kernel's recipe: the config fragment, the check that it survived, the cache key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from snf_image import helperimage
from snf_image.helperimage import kernel as build
from snf_image.helperimage.codelayer import helper_version


def test_fragment_of_the_repository_names_what_the_jail_needs() -> None:
    fragment = build.config_fragment()
    for option in (
        "CONFIG_UFS_FS_WRITE",
        "CONFIG_BSD_DISKLABEL",
        "CONFIG_VIRTIO_BLK",
        "CONFIG_SERIAL_8250_CONSOLE",
        "CONFIG_EXT4_FS",
        "CONFIG_XFS_FS",
        "CONFIG_FUSE_FS",
        "CONFIG_DEVTMPFS",
        "CONFIG_BLK_DEV_INITRD",
    ):
        assert fragment[option] == "y", option
    assert fragment["CONFIG_SERIAL_8250_NR_UARTS"] == "4"
    assert "CONFIG_MODULES" not in fragment  # everything built in: the initrd loads nothing


def test_fragment_has_what_the_image_code_sandbox_needs() -> None:
    """Namespaces, cgroup v2 limits and seccomp (tests/integration/test_helper_kernel.py tries each)."""
    fragment = build.config_fragment()
    for option in (
        "CONFIG_NAMESPACES",
        "CONFIG_UTS_NS",
        "CONFIG_IPC_NS",
        "CONFIG_PID_NS",
        "CONFIG_NET_NS",
        "CONFIG_CGROUPS",
        "CONFIG_CGROUP_PIDS",
        "CONFIG_MEMCG",
        "CONFIG_SECCOMP",
        "CONFIG_SECCOMP_FILTER",
    ):
        assert fragment[option] == "y", option
    # off on purpose: a process without capabilities must not become root of a namespace of its own
    assert "CONFIG_USER_NS" not in fragment


def test_fragment_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "k.config"
    bad.write_text("# fine\nCONFIG_A=y\nUFS=y\n")
    with pytest.raises(ValueError, match="UFS=y"):
        build.config_fragment(bad)


def test_missing_options_reports_what_kconfig_dropped() -> None:
    config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=4\n"
    assert build.missing_options({"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "8"}, config) == [
        "CONFIG_B=y",
        "CONFIG_C=8",
    ]
    assert build.missing_options({"CONFIG_A": "y"}, config) == []


def test_kernel_key_follows_config_and_source() -> None:
    key = build.kernel_key("6.1.1-1", "CONFIG_A=y\n")
    assert key == build.kernel_key("6.1.1-1", "CONFIG_A=y\n")
    assert key != build.kernel_key("6.1.2-1", "CONFIG_A=y\n")
    assert key != build.kernel_key("6.1.1-1", "CONFIG_A=y\nCONFIG_B=y\n")


def test_unknown_kernel_flavour(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kernel must be one of"):
        helperimage.build(tmp_path / "h", tmp_path / "c", kernel="vanilla")


def _kernel_build(cache: Path, name: str, age: int) -> Path:
    out = cache / name
    out.mkdir(parents=True)
    for part in ("bzImage", "release"):
        (out / part).write_text(part)
    os.utime(out, (age, age))
    return out


def test_cache_keeps_the_newest_builds_and_drops_leftovers(tmp_path: Path) -> None:
    """Checkouts with different fragments share one cache: their kernels stay; half-built ones go."""
    kept = [_kernel_build(tmp_path, f"kernel-{n}", 1000 + n) for n in range(4)]
    scratch = tmp_path / "kernel-x.tmp"
    scratch.mkdir()
    (tmp_path / "kernel-y.result").mkdir()
    wanted = tmp_path / "kernel-new"
    build._prune(tmp_path, keep=wanted)
    left = sorted(p.name for p in tmp_path.iterdir())
    # the new build plus the two newest others make KERNELS_KEPT
    assert build.KERNELS_KEPT == 3
    assert left == [kept[2].name, kept[3].name]
    assert build.cached_kernel(tmp_path) is None  # today's key is not among them


def test_cached_kernel_finds_todays_build(tmp_path: Path) -> None:
    key = build.kernel_key(build.source_version(), build.KERNEL_CONFIG.read_text("utf-8"))
    assert build.cached_kernel(tmp_path) is None
    built = _kernel_build(tmp_path, f"kernel-{key}", 1000)
    assert build.cached_kernel(tmp_path) == built


def test_code_only_update_needs_no_kernel_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A helper built with --kernel debian on a node without linux-source still gets code updates."""
    helper = tmp_path / "helper"
    helper.mkdir()
    for name in ("image", "kernel", "initrd-base", "packages"):
        (helper / name).write_bytes(b"")
    (helper / ".base-key").write_text("some-base\n")
    monkeypatch.setattr(build, "KERNEL_SOURCE", tmp_path / "absent.tar.xz")
    assert build.source_version() is None and build.cached_kernel(tmp_path / "cache") is None
    with pytest.raises(SystemExit, match="--kernel debian"):
        build.ensure_custom_kernel(tmp_path / "cache")
    assert helperimage.build(helper, tmp_path / "cache", code_only=True) is True
    assert (helper / "version").read_text().strip() == helper_version()
