"""The converter's sandbox, observed from outside: who it runs as, what it sees, its limits, its death.

The converter is started as deployments start it (formats.convert.ConvertedImage) and looked at
through /proc while it serves; the attacks that would read a host file are run against it with
the header checks bypassed, next to the same attack on an unconfined qemu-img that succeeds.
"""

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snf_image.errors import ImageError, OperatorError
from snf_image.formats import convert, headers, sandbox, sniff
from tests.copyrun import CONVERTER, MiB

REPO = Path(__file__).parents[2]
NOBODY = 65534
SECRET = b"SECRET" * 100000


def qemu_img(*args: object) -> None:
    result = subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid``, with its command name."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry.name))
    found, todo = {}, list(children.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            found[child] = Path(f"/proc/{child}/comm").read_text().strip()
        except OSError:
            continue
        todo += children.get(child, [])
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def status(pid: int, field: str) -> str:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
    return line.split(":", 1)[1].split()


def limit(pid: int, name: str) -> list[str]:
    line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if x.startswith(name))
    return line[len(name) :].split()[:2]


@pytest.fixture
def qcow2(tmp_path):
    raw, image = tmp_path / "disk.raw", tmp_path / "image.qcow2"
    raw.write_bytes(os.urandom(MiB) + bytes(3 * MiB))
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, image)
    image.chmod(0o600)
    return image


def open_converted(image: Path, kind: str, config: sandbox.SandboxConfig = CONVERTER) -> convert.ConvertedImage:
    fd = os.open(image, os.O_RDONLY)
    try:
        return convert.ConvertedImage(fd, headers.read_header(kind, fd), config)
    finally:
        os.close(fd)  # the sandbox holds its own copy: this closes nothing it needs


def test_converter_is_unprivileged_alone_and_limited(tmp_path, qcow2, monkeypatch):
    secret = tmp_path / "host-secret"
    secret.write_bytes(SECRET)
    monkeypatch.setenv("OSP_IMG_PASSWD", "hunter2-password")
    before = descendants(os.getpid())  # e.g. a session fixture's own processes (the Ganeti cluster's holder)
    with open_converted(qcow2, sniff.QCOW2) as image:
        processes = {pid: name for pid, name in descendants(os.getpid()).items() if pid not in before}
        daemon = next(pid for pid, name in processes.items() if name.startswith("qemu-storage"))
        assert sorted(processes.values()) == ["bwrap", "bwrap", "python3", "qemu-storage-da"]
        for pid in processes:
            assert status(pid, "Uid") == status(pid, "Gid") == [str(NOBODY)] * 4
            assert status(pid, "Groups") == [] and status(pid, "CapEff") == ["0000000000000000"]
            assert status(pid, "NoNewPrivs") == ["1"]
        for namespace in ("mnt", "pid", "net", "ipc", "uts", "user", "cgroup"):
            assert os.readlink(f"/proc/{daemon}/ns/{namespace}") != os.readlink(f"/proc/self/ns/{namespace}")
        assert limit(daemon, "Max address space") == [str(1024 * MiB)] * 2
        assert limit(daemon, "Max cpu time") == [str(CONVERTER.cpu_seconds)] * 2
        assert limit(daemon, "Max core file size") == ["0", "0"]
        root = Path(f"/proc/{daemon}/root")
        assert sorted(os.listdir(root)) == ["dev", "lib", "lib64", "usr"]
        assert sorted(os.listdir(root / "dev")) == ["null", "urandom", "zero"]
        assert sorted(os.listdir(root / "usr/bin")) == ["python3", "qemu-storage-daemon"]
        assert not (root / str(secret).lstrip("/")).exists() and not (root / "etc").exists()
        environment = Path(f"/proc/{daemon}/environ").read_bytes()
        assert b"OSP_" not in environment and b"hunter2" not in environment
        open_files = [os.readlink(f"/proc/{daemon}/fd/{fd}") for fd in os.listdir(f"/proc/{daemon}/fd")]
        assert str(qcow2) not in open_files  # only nbdserve holds the image
        assert image.size == 4 * MiB
    assert not any(alive(pid) for pid in processes)


def test_converter_cannot_open_a_host_file_it_is_given(tmp_path):
    """A VMDK of capacity 0 makes qemu open the files its descriptor lists: the host's, unconfined."""
    secret = tmp_path / "host-secret"
    secret.write_bytes(SECRET)
    image = tmp_path / "evil.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", image, "1M")
    descriptor = (
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
        f'RW 2048 FLAT "{secret}" 0\n'
    )
    with open(image, "r+b") as f:
        f.seek(12)
        f.write(struct.pack("<Q", 0))
        f.seek(512)
        f.write(descriptor.encode().ljust(20 * 512, b"\0"))
    unconfined = tmp_path / "unconfined.raw"
    qemu_img("convert", "-f", "vmdk", "-O", "raw", image, unconfined)
    assert SECRET[:600] in unconfined.read_bytes()  # the attack works on a bare qemu-img
    fd = os.open(image, os.O_RDONLY)
    try:
        with pytest.raises(ImageError, match=f"^the VMDK image cannot be converted: .*{secret}.*No such file"):
            convert.ConvertedImage(fd, headers.ContainerHeader(sniff.VMDK, MiB), CONVERTER)  # header check skipped
    finally:
        os.close(fd)


def test_converter_ignores_a_backing_file_it_is_given(tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_bytes(SECRET)
    image, unconfined = tmp_path / "evil.qcow2", tmp_path / "unconfined.raw"
    qemu_img("create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", image, "1M")
    qemu_img("convert", "-f", "qcow2", "-O", "raw", image, unconfined)
    assert SECRET[:600] in unconfined.read_bytes()  # the attack works on a bare qemu-img
    fd = os.open(image, os.O_RDONLY)
    try:
        with convert.ConvertedImage(fd, headers.ContainerHeader(sniff.QCOW2, MiB), CONVERTER) as converted:
            data = bytearray(MiB)
            assert converted.readinto(memoryview(data)) == MiB
    finally:
        os.close(fd)
    assert data == bytes(MiB)  # backing=null: the unallocated clusters read as zeros


def test_memory_limit_is_one_clear_error(qcow2):
    small = sandbox.SandboxConfig("nobody", memory_mib=16, cpu_seconds=60)
    message = r"^the qcow2 image cannot be converted: .*16 MiB, setting CONVERTER_MEMORY\)$"
    with pytest.raises(ImageError, match=message):
        open_converted(qcow2, sniff.QCOW2, small)


HOLD_OPEN = """
import os, sys, time
from snf_image.formats import convert, headers
from tests.copyrun import CONVERTER
fd = os.open(sys.argv[1], os.O_RDONLY)
image = convert.ConvertedImage(fd, headers.read_header("qcow2", fd), CONVERTER)
print("serving", flush=True)
time.sleep(120)
"""


def test_converter_dies_with_its_parent(tmp_path, qcow2):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    parent = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(qcow2)], stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "serving\n"
        sandboxed = descendants(parent.pid)
        assert "qemu-storage-da" in sandboxed.values()
        parent.send_signal(signal.SIGKILL)  # no code of the parent runs any more
        parent.wait()
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in sandboxed) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(pid) for pid in sandboxed)
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.parametrize(
    ("user", "reason"), [("root", "is privileged"), ("", "is empty"), ("no-such-user-x", "no user")]
)
def test_converter_user_must_be_an_unprivileged_one(qcow2, user, reason):
    config = sandbox.SandboxConfig(user, 1024, 60)
    with pytest.raises(OperatorError, match=f"^setting HELPER_USER.*{reason}"):
        open_converted(qcow2, sniff.QCOW2, config)
