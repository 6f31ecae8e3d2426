"""Fast checks of the guest-image builder's pure parts: cache keys, layouts, generated config text."""

from __future__ import annotations

import dataclasses
import fcntl
import re
import uuid

import pytest

from tests import guests

MiB = guests.MiB


def test_cache_keys_are_stable_and_distinct() -> None:
    keys = {kind: guests.cache_key(kind) for kind in guests.KINDS}
    assert keys == {kind: guests.cache_key(kind) for kind in guests.KINDS}
    assert len(set(keys.values())) == len(keys)
    assert all(re.fullmatch(r"[0-9a-f]{16}", k) for k in keys.values())


def test_kind_recipe_change_rebuilds_kinds_but_not_the_base(monkeypatch: pytest.MonkeyPatch) -> None:
    base, kind = guests.base_key(), guests.cache_key("ext4-msdos")
    monkeypatch.setattr(guests, "KIND_RECIPE_VERSION", guests.KIND_RECIPE_VERSION + 1)
    assert guests.base_key() == base
    assert guests.cache_key("ext4-msdos") != kind


def test_base_package_change_rebuilds_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    before = {k: guests.cache_key(k) for k in guests.KINDS}
    base = guests.base_key()
    monkeypatch.setattr(guests, "BASE_PACKAGES", (*guests.BASE_PACKAGES, "less"))
    assert guests.base_key() != base
    assert all(guests.cache_key(k) != before[k] for k in guests.KINDS)


def test_base_key_ignores_package_order(monkeypatch: pytest.MonkeyPatch) -> None:
    base = guests.base_key()
    monkeypatch.setattr(guests, "BASE_PACKAGES", tuple(reversed(guests.BASE_PACKAGES)))
    assert guests.base_key() == base


def test_changing_one_kind_leaves_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    before = {k: guests.cache_key(k) for k in guests.KINDS}
    kinds = dict(guests.KINDS)
    kinds["nm"] = dataclasses.replace(kinds["nm"], packages=("network-manager", "less"))
    monkeypatch.setattr(guests, "KINDS", kinds)
    after = {k: guests.cache_key(k) for k in guests.KINDS}
    assert after["nm"] != before["nm"]
    assert {k: v for k, v in after.items() if k != "nm"} == {k: v for k, v in before.items() if k != "nm"}


def test_extdump_follows_its_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    before = guests.cache_key("extdump")
    kinds = dict(guests.KINDS)
    kinds["ext4-msdos"] = dataclasses.replace(kinds["ext4-msdos"], packages=("less",))
    monkeypatch.setattr(guests, "KINDS", kinds)
    assert guests.cache_key("extdump") != before


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("SNF_IMAGE_TEST_CACHE", str(tmp_path / "c"))
    assert guests.cache_dir() == tmp_path / "c" / "guests"
    assert (tmp_path / "c" / "guests").is_dir()
    assert guests.artifact_stem("nm").parent == tmp_path / "c" / "guests"


def test_uuids_are_deterministic_and_shared_by_extdump() -> None:
    assert guests.kind_uuid("nm", "root") == guests.kind_uuid("nm", "root")
    assert guests.kind_uuid("nm", "root") != guests.kind_uuid("networkd", "root")
    uuid.UUID(guests.kind_uuid("nm", "root"))
    ext = guests.layout(guests.KINDS["extdump"])
    msdos = guests.layout(guests.KINDS["ext4-msdos"])
    assert ext == msdos


@pytest.mark.parametrize("kind", [k for k, s in {**guests.KINDS, **guests.BENCHMARK_KINDS}.items() if s.table])
def test_layouts_fit_the_disk_and_are_aligned(kind: str) -> None:
    spec = guests.spec_of(kind)
    parts = guests.layout(spec)
    assert guests.disk_size(spec) == spec.size <= 2048 * MiB
    end = 0
    for p in parts:
        assert p.start % MiB == 0 and p.size % MiB == 0
        assert p.start >= max(end, MiB)
        end = p.start + p.size
    limit = spec.size - (33 * 512 if spec.table == "gpt" else 0)
    assert end <= limit
    assert [p.mountpoint for p in parts].count("/") == 1


def test_the_benchmark_image_is_xfs_gpt_on_2_gib() -> None:
    """Issue #14's figures: a 2 GiB image, GPT, ext4 /boot, XFS root; its own key, the suite's keys untouched."""
    big, suite = guests.spec_of("xfs-gpt-2g"), guests.KINDS["xfs-gpt"]
    assert guests.disk_size(big) == 2 * 1024 * MiB
    assert [(p.mountpoint, p.fs_type) for p in guests.layout(big)] == [("/boot", "ext4"), ("/", "xfs")]
    assert guests.layout(big)[1].size - guests.layout(suite)[1].size == 512 * MiB
    assert guests.cache_key("xfs-gpt-2g") not in {guests.cache_key(k) for k in guests.KINDS}
    assert "xfs-gpt-2g" not in guests.KINDS  # the suite does not build it
    with pytest.raises(ValueError, match="unknown guest kind"):
        guests.spec_of("xfs-gpt-3g")


def test_xfs_gpt_has_root_last_and_separate_boot() -> None:
    parts = guests.layout(guests.KINDS["xfs-gpt"])
    assert [(p.number, p.mountpoint, p.fs_type) for p in parts] == [(1, "/boot", "ext4"), (2, "/", "xfs")]
    assert parts[1].gpt_type == guests.GPT_ROOT_X86_64


def test_sfdisk_scripts() -> None:
    dos = guests.sfdisk_script(guests.KINDS["ext4-msdos"])
    assert "label: dos" in dos
    assert re.search(r"^start=2048, size=3143680, type=83, bootable$", dos, re.M)
    gpt = guests.sfdisk_script(guests.KINDS["xfs-gpt"])
    assert "label: gpt" in gpt
    assert gpt.count("start=") == 2
    assert guests.kind_uuid("xfs-gpt", "part-root").upper() in gpt


def test_fstab_names_every_filesystem_by_uuid() -> None:
    parts = guests.layout(guests.KINDS["xfs-gpt"])
    text = guests.fstab_text(parts)
    lines = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    assert [(f[0], f[1], f[2]) for f in lines] == [
        (f"UUID={parts[1].fs_uuid}", "/", "xfs"),
        (f"UUID={parts[0].fs_uuid}", "/boot", "ext4"),
    ]
    ext4 = guests.fstab_text(guests.layout(guests.KINDS["ext4-msdos"]))
    assert "errors=remount-ro" in ext4


def test_hosts_has_debian_127_0_1_1_line() -> None:
    text = guests.hosts_text("snf-guest")
    assert "127.0.1.1\tsnf-guest\n" in text
    assert text.startswith("127.0.0.1\tlocalhost\n")


def test_network_texts() -> None:
    assert "iface eth0 inet dhcp" in guests.INTERFACES_HEADER + guests.INTERFACES_ETH0
    assert "eth0" not in guests.INTERFACES_HEADER
    assert "renderer: networkd" in guests.NETPLAN_YAML and 'name: "en*"' in guests.NETPLAN_YAML


def test_file_lock_is_exclusive(tmp_path) -> None:
    lock = tmp_path / "x.lock"
    with guests.file_lock(lock), open(lock) as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_stale_temporaries_are_removed(tmp_path) -> None:
    final = tmp_path / "nm-0123.img"
    stale = tmp_path / ".nm-0123.img.tmp-999"
    (stale / "root").mkdir(parents=True)
    keep = tmp_path / ".other.tmp-1"
    keep.mkdir()
    guests._clean_stale_tmp(final)
    assert not stale.exists() and keep.exists()


def test_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown guest kind"):
        guests.guest_image("windows")


def test_failed_commands_show_their_output() -> None:
    with pytest.raises(guests.CommandFailed, match="boom"):
        guests.run(["sh", "-c", "echo boom; exit 3"])


def test_guest_paths_map_to_the_partition_that_holds_them(tmp_path) -> None:
    spec = guests.KINDS["xfs-gpt"]
    meta = {"fs_type": "xfs", "partitions": [dataclasses.asdict(p) for p in guests.layout(spec)]}
    image = guests.GuestImage(tmp_path / "x.img", meta)
    boot, root = guests.layout(spec)
    assert image._locate("/boot/vmlinuz-6") == (boot.start, boot.size, "ext4", "/vmlinuz-6")
    assert image._locate("/boot") == (boot.start, boot.size, "ext4", "/")
    assert image._locate("/bootx/y") == (root.start, root.size, "xfs", "/bootx/y")
    assert image._locate("/etc/fstab") == (root.start, root.size, "xfs", "/etc/fstab")
    bare = guests.GuestImage(tmp_path / "e.img", {"fs_type": "ext4", "partitions": []})
    assert bare._locate("/etc/fstab") == (0, None, "ext4", "/etc/fstab")
