"""A test-only runner for the helper VM: reads UFS partitions back, read-only, for the BSD tests.

The host has no UFS driver, so the tests look at a deployed BSD disk through
the helper's kernel. This module is injected with tests/serialprobe.py into a
test copy of the code layer (tests/helpervm.py: probe_helper_dir) and run
instead of helper.runner; it shares no code with what it checks (its own
superblock probe, no helper.* imports), so a bug in the tasks cannot hide itself here.

rules: {"inspect": [{"partition": N, "paths": [...], "dirs": [...]}]}. Each
fact is one progress "warning" whose message is a JSON object; then SUCCESS.
"""

import os
import stat
import struct
import subprocess

import serialprobe

MAX_TEXT = 2048


def node(disk: str, number: int) -> str:
    """The partition's node, made from sysfs (no udev)."""
    name = f"{os.path.basename(disk)}{number}"
    path = f"/dev/{name}"
    if not os.path.exists(path):
        with open(f"/sys/class/block/{name}/dev") as f:
            major, minor = (int(x) for x in f.read().split(":"))
        os.mknod(path, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
    return path


def ufstype(device: str) -> str:
    with open(device, "rb") as f:
        f.seek(65536 + 1372)
        if struct.unpack("<I", f.read(4))[0] == 0x19540119:
            return "ufs2"
        f.seek(8192 + 1372)
        if struct.unpack("<I", f.read(4))[0] == 0x011954:
            return "44bsd"
    return "none"


def describe(root: str, path: str) -> dict:
    host = root + path
    fact: dict = {"path": path}
    try:
        st = os.lstat(host)
    except FileNotFoundError:
        return {**fact, "exists": False}
    fact.update(exists=True, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid, size=st.st_size)
    if stat.S_ISREG(st.st_mode):
        with open(host, "rb") as f:
            fact["text"] = f.read(MAX_TEXT).decode("utf-8", "replace")
    return fact


def main(ports: serialprobe.Ports) -> None:
    _, rules = serialprobe.read_rules()
    disk = serialprobe.find_disk("snf-disk0")
    with open("/proc/partitions") as f:
        ports.fact({"partitions": f.read().split("\n", 2)[2], "disk": os.path.basename(disk)})
    for item in rules["inspect"]:
        device = node(disk, item["partition"])
        kind = ufstype(device)
        ports.fact({"partition": item["partition"], "ufstype": kind})
        if kind == "none":
            continue
        os.makedirs("/tmp/ufs", exist_ok=True)
        subprocess.run(["mount", "-t", "ufs", "-o", f"ro,ufstype={kind}", device, "/tmp/ufs"], check=True)
        try:
            vfs = os.statvfs("/tmp/ufs")
            ports.fact({"partition": item["partition"], "fs_bytes": vfs.f_blocks * vfs.f_frsize})
            for path in item.get("paths", []):
                ports.fact(describe("/tmp/ufs", path))
            for path in item.get("dirs", []):
                ports.fact({"dir": path, "entries": sorted(os.listdir("/tmp/ufs" + path))})
        finally:
            subprocess.run(["umount", "/tmp/ufs"], check=True)
    ports.succeed()


if __name__ == "__main__":
    serialprobe.run(main)
