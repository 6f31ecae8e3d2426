"""AddSwap: SWAP parsing, the fstab editor, and runs with image files standing in for the disks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from helper import disks
from helper.commands import TaskError
from tasks import add_swap
from tasks._swap import parse_swap
from tests.fakeguest import CLOUD_INIT_GUEST, make_ctx, make_guest

UUID = "0b7e4d6f-1c2a-4a7e-9a51-3f1b8b0c9d11"


def test_parse_swap() -> None:
    assert parse_swap("") is None
    assert parse_swap(" B ") == "b"
    assert parse_swap("3:512") == (3, 512)
    for bad in ("0:1", "3:", "bb", "3:1:1", "-1"):
        with pytest.raises(TaskError, match="Invalid SWAP"):
            parse_swap(bad)


def test_disk_index() -> None:
    assert add_swap.disk_index("b", 2) == 1
    with pytest.raises(TaskError, match="cannot be the first disk"):
        add_swap.disk_index("a", 3)
    with pytest.raises(TaskError, match="Swap disk c is not available"):
        add_swap.disk_index("c", 2)


def test_add_fstab_swap() -> None:
    line = f"UUID={UUID}\tnone\tswap\tsw\t0\t0"
    assert add_swap.add_fstab_swap("", UUID) == line + "\n"
    assert add_swap.add_fstab_swap("# fstab\nUUID=x / ext4 defaults 0 1", UUID) == (
        f"# fstab\nUUID=x / ext4 defaults 0 1\n{line}\n"
    )
    root_line = "UUID=x / ext4 defaults 0 1\r\n"
    assert add_swap.add_fstab_swap(root_line, UUID) == f"{root_line}{line}\r\n"
    present = f'UUID="{UUID.upper()}" none swap sw 0 0\n'
    assert add_swap.add_fstab_swap(present, UUID) == present
    commented = f"#UUID={UUID} none swap sw 0 0\n"
    assert add_swap.add_fstab_swap(commented, UUID) == commented + line + "\n"


def image(path: Path, mib: int = 16) -> Path:
    with open(path, "wb") as f:
        f.truncate(mib * 1024 * 1024)
    return path


def test_run_whole_disk_and_rerun(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    disk_b = image(tmp_path / "b.img")
    ctx = make_ctx(root, properties={"SWAP": "b"}, disks=[tmp_path / "a.img", disk_b])
    add_swap.run(ctx)
    info = disks.probe(disk_b)
    assert info["TYPE"] == "swap"
    fstab = (root / "etc/fstab").read_text()
    assert fstab.endswith(f"UUID={info['UUID']}\tnone\tswap\tsw\t0\t0\n")
    add_swap.run(ctx)
    assert disks.probe(disk_b)["UUID"] == info["UUID"]
    assert (root / "etc/fstab").read_text() == fstab


def test_run_partition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_guest(tmp_path / "root")
    part = image(tmp_path / "part2")
    ctx = make_ctx(root, properties={"SWAP": "2:16"})
    monkeypatch.setattr(ctx, "partition", lambda n: part if n == 2 else pytest.fail(f"partition {n}"))
    add_swap.run(ctx)
    assert disks.probe(part)["TYPE"] == "swap"
    assert "\tswap\tsw\t0\t0\n" in (root / "etc/fstab").read_text()


def test_run_refuses_to_destroy_data(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    disk_b = image(tmp_path / "b.img")
    subprocess.run(["mkfs.ext4", "-q", "-F", disk_b], check=True)
    ctx = make_ctx(root, properties={"SWAP": "b"}, disks=[tmp_path / "a.img", disk_b])
    with pytest.raises(TaskError, match="holds ext4; refusing"):
        add_swap.run(ctx)
    ctx = make_ctx(root, properties={"SWAP": "1:16"})
    with pytest.raises(TaskError, match="root partition"):
        add_swap.run(ctx)


def test_run_missing_fstab(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root", {"etc/fstab": None})
    disk_b = image(tmp_path / "b.img")
    with pytest.raises(TaskError, match="no /etc/fstab"):
        add_swap.run(make_ctx(root, properties={"SWAP": "b"}, disks=[tmp_path / "a.img", disk_b]))
    assert disks.probe(disk_b).get("TYPE") is None


def test_run_nothing_without_swap(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    before = (root / "etc/fstab").read_text()
    add_swap.run(make_ctx(root))
    assert (root / "etc/fstab").read_text() == before


def test_run_cloud_init_partition_becomes_cloud_init_swap(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root", CLOUD_INIT_GUEST)
    before = (root / "etc/fstab").read_text()
    add_swap.run(make_ctx(root, properties={"SWAP": "2:512", "CLOUD_INIT": "yes"}))
    config = yaml.safe_load((root / "etc/cloud/cloud.cfg.d/98_snf-image-AddSwap.cfg").read_text())
    assert config == {"swap": {"filename": "/swap.img", "size": 512 << 20, "maxsize": 512 << 20}}
    assert (root / "etc/fstab").read_text() == before  # no partition to format: FixPartitionTable did not run
