"""Unit tests for the helper VM launcher: command line, channels' parsing, version check (no VM)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from snf_image import jail
from snf_image.contract import constants
from snf_image.errors import HelperError
from snf_image.helperimage.codelayer import code_layer_files, helper_version
from snf_image.jail import channels
from snf_image.jail.command import build_qemu_command
from snf_image.jail.config import Channels, PassedFd
from snf_image.jail.vm import passed_fds
from tests import leftovers


def _channels(tmp: Path, debug: bool = False) -> Channels:
    ports = [PassedFd(10 + n, n, name) for n, name in enumerate(("console", "result", "progress"), start=2)]
    return Channels(*ports, tmp / "debug.sock" if debug else None)


def _cmd(tmp_path: Path, **kwargs) -> list[str]:
    config = jail.HelperConfig(helper_dir=Path("/h"), **kwargs.pop("config", {}))
    disks = kwargs.pop("disks", [jail.JailDisk("/dev/sdz", 0), jail.JailDisk("/srv/disk1.img", 1)])
    return build_qemu_command(
        config,
        kwargs.pop("accel", "tcg"),
        disks,
        PassedFd(9, 1, "rules"),
        _channels(Path("/w"), kwargs.pop("debug_channel", False)),
        **kwargs,
    )


def _values(cmd: list[str], option: str) -> list[str]:
    return [cmd[i + 1] for i, arg in enumerate(cmd) if arg == option]


def test_no_network_no_display_no_defaults(tmp_path):
    cmd = _cmd(tmp_path)
    assert "-nodefaults" in cmd
    assert _values(cmd, "-nic") == ["none"]
    assert _values(cmd, "-display") == ["none"]
    assert _values(cmd, "-monitor") == ["none"]
    assert "-no-reboot" in cmd
    assert not any(arg.startswith(("-net", "-netdev")) for arg in cmd if arg != "-nic")


def test_runas_sandbox_memory_kernel(tmp_path):
    cmd = _cmd(tmp_path, config={"memory_mib": 300, "user": "nobody"})
    assert _values(cmd, "-runas") == ["nobody"]
    assert _values(cmd, "-sandbox")[0].startswith("on,")
    assert "spawn=deny" in _values(cmd, "-sandbox")[0]
    assert _values(cmd, "-m") == ["300"]
    assert _values(cmd, "-kernel") == ["/h/kernel"]
    assert _values(cmd, "-initrd") == ["/h/initrd"]
    append = _values(cmd, "-append")[0].split()
    assert constants.CMDLINE_ACTIVATE in append and "console=ttyS0" in append and "ro" in append
    assert constants.CMDLINE_DEBUG not in append
    assert not any(w.startswith("snf_image_runner=") for w in append)


def test_no_sandbox_no_user(tmp_path):
    cmd = _cmd(tmp_path, config={"user": None}, sandbox=False)
    assert "-runas" not in cmd and "-sandbox" not in cmd


def test_accelerator(tmp_path):
    tcg = _cmd(tmp_path, accel="tcg")
    assert _values(tcg, "-machine") == ["pc,accel=tcg"]
    # RDRAND, trusted by the kernel: its RNG is ready at once (Python's start does not wait ~1 s for entropy)
    assert _values(tcg, "-cpu") == ["qemu64,+rdrand"]
    assert "random.trust_cpu=on" in _values(tcg, "-append")[0].split()
    kvm = _cmd(tmp_path, accel="kvm")
    assert _values(kvm, "-machine") == ["pc,accel=kvm"]
    assert _values(kvm, "-cpu") == ["host"]
    with pytest.raises(ValueError):
        _cmd(tmp_path, accel="auto")


def test_disks_by_serial_raw_and_readonly_root(tmp_path):
    cmd = _cmd(tmp_path, block_devices=frozenset({"/dev/sdz"}))
    drives = _values(cmd, "-drive")
    devices = _values(cmd, "-device")
    assert all("format=raw" in d for d in drives)
    assert drives[0] == (
        "if=none,id=helper-root,format=raw,file.driver=file,file.filename=/h/image,cache=writeback,readonly=on"
    )
    assert drives[1].startswith("if=none,id=rules,format=raw,file.driver=file,file.filename=/dev/fdset/1,")
    assert drives[1].endswith("readonly=on")
    assert "file.driver=host_device,file.filename=/dev/sdz" in drives[2]
    assert "file.driver=file,file.filename=/srv/disk1.img" in drives[3]
    assert "readonly" not in drives[2] + drives[3]
    assert devices == [
        "virtio-blk-pci,drive=helper-root,serial=snf-helper-root",
        "virtio-blk-pci,drive=rules,serial=snf-rules",
        "virtio-blk-pci,drive=disk0,serial=snf-disk0",
        "virtio-blk-pci,drive=disk1,serial=snf-disk1",
    ]


def test_uri_passed_as_is_and_commas_escaped(tmp_path):
    cmd = _cmd(
        tmp_path, disks=[jail.JailDisk("nbd://127.0.0.1:10809/exp", 0), jail.JailDisk("/srv/a,b.img", 3, readonly=True)]
    )
    drives = _values(cmd, "-drive")
    assert "format=raw,file=nbd://127.0.0.1:10809/exp," in drives[2]
    assert "file.filename=/srv/a,,b.img," in drives[3] and drives[3].endswith("readonly=on")
    assert "serial=snf-disk3" in _values(cmd, "-device")[3]


@pytest.mark.parametrize("bad", ['json:{"driver":"file"}', "relative.img", "http://x/y", "file:/etc/passwd"])
def test_refuses_guessable_disks(tmp_path, bad):
    with pytest.raises(HelperError, match="unsupported disk"):
        _cmd(tmp_path, disks=[jail.JailDisk(bad, 0)])


def test_serial_ports_in_order(tmp_path):
    cmd = _cmd(tmp_path)
    assert _values(cmd, "-serial") == ["chardev:console", "chardev:result", "chardev:progress"]
    chardevs = _values(cmd, "-chardev")
    assert chardevs[0] == "file,id=console,path=/dev/fdset/2,append=on"
    assert chardevs[2] == "file,id=progress,path=/dev/fdset/4,append=on"
    debug = _cmd(tmp_path, config={"debug": True}, debug_channel=True)
    assert _values(debug, "-serial")[3] == "chardev:debug"
    assert "socket,id=debug,path=/w/debug.sock,server=on,wait=off" in _values(debug, "-chardev")
    assert constants.CMDLINE_DEBUG in _values(debug, "-append")[0].split()


def test_rules_and_ports_are_passed_descriptors_never_paths(tmp_path):
    """The rules (secrets) and the ports have no path: qemu inherits exactly these descriptors."""
    cmd = _cmd(tmp_path)
    assert _values(cmd, "-add-fd") == [
        "fd=12,set=2,opaque=console",
        "fd=13,set=3,opaque=result",
        "fd=14,set=4,opaque=progress",
        "fd=9,set=1,opaque=rules",
    ]
    assert passed_fds(cmd) == (12, 13, 14, 9)
    assert passed_fds(_cmd(tmp_path, probe=True)) == (12, 13, 14)


def test_runner_override_and_probe(tmp_path):
    cmd = _cmd(tmp_path, config={"runner": "jailprobe"})
    assert "snf_image_runner=jailprobe" in _values(cmd, "-append")[0].split()
    with pytest.raises(HelperError):
        _cmd(tmp_path, config={"runner": "x y"})
    probe = _cmd(tmp_path, accel="kvm", probe=True)
    assert "-drive" not in probe
    assert "snf_image_probe" in _values(probe, "-append")[0].split()
    assert constants.CMDLINE_ACTIVATE not in _values(probe, "-append")[0].split()
    # the probe hears the kernel: a silent console is how it tells a hung one
    assert "quiet" not in _values(probe, "-append")[0].split() and "quiet" in _values(cmd, "-append")[0].split()


def _feed(lines: list[bytes]) -> list[dict]:
    got: list[dict] = []
    progress = channels.ProgressReader(got.append)
    progress.feed(b"".join(lines))
    progress.finish()
    return got


def test_progress_valid_lines_become_helper_messages():
    got = _feed(
        [b'{"subtype":"task-start","task":"FixPartitionTable"}\r\n', b"\n", b'{"subtype":"warning","messages":["a"]}']
    )
    assert [m["subtype"] for m in got] == ["task-start", "warning"]
    assert all(m["type"] == constants.MSG_HELPER and isinstance(m["timestamp"], float) for m in got)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json\n", "not UTF-8 JSON"),
        (b"[1]\n", "not a JSON object"),
        (b'{"subtype":"task-start","task":"../x"}\n', "invalid message"),
        (b'{"subtype":"bogus"}\n', "invalid message"),
        (b"\xff\xfe\n", "not UTF-8 JSON"),
        (b"{" + b" " * constants.HELPER_MAX_LINE + b"}\n", "longer than"),
        (b" " * (constants.HELPER_MAX_LINE + 1), "longer than"),
        (b'{"subtype":"task-end","task":"A"}\n' * (constants.HELPER_MAX_LINES_PER_SECOND + 1), "per second"),
    ],
    ids=["garbage", "array", "bad-task", "bad-subtype", "not-utf8", "long-line", "long-partial", "rate"],
)
def test_progress_violations(data, reason):
    """Each hostile input is refused with a reason (ids kept short: the data can be long)."""
    with pytest.raises(channels.ProtocolViolation, match=reason):
        _feed([data])


def test_progress_total_line_limit(monkeypatch):
    clock = iter(range(10**6))
    monkeypatch.setattr(channels.time, "monotonic", lambda: float(next(clock)))
    progress = channels.ProgressReader(lambda _: None)
    with pytest.raises(channels.ProtocolViolation, match="more than"):
        for _ in range(constants.HELPER_MAX_LINES + 1):
            progress.feed(b'{"subtype":"task-end","task":"A"}\n')
    assert progress.count == constants.HELPER_MAX_LINES + 1


def test_sanitize():
    assert channels.sanitize("a\x1b[31mb\x07\tc") == "a?[31mb? c"
    assert channels.sanitize("x" * 1000, 10) == "x" * 10 + "..."


TOKEN = "c0ffee" * 10 + "c0de"
FORGED = f"Result(success=False, reason={channels.FORGED_SUCCESS!r})"


@pytest.mark.parametrize(
    ("data", "verdict"),
    [
        (b"", "None"),
        (b"\n\r\n", "None"),
        (f"SUCCESS {TOKEN}\n".encode(), "Result(success=True, reason='')"),
        (f"SUCCESS {TOKEN}\r\n".encode(), "Result(success=True, reason='')"),
        (f"SUCCESS {TOKEN}".encode(), "Result(success=True, reason='')"),  # the port closed before the newline
        (b"ERROR: helper init: no disk\n", "Result(success=False, reason='helper init: no disk')"),
        (b"SUCCESS\n", FORGED),
        (b"SUCCESS \n", FORGED),
        (f"SUCCESS {TOKEN[:-1]}\n".encode(), FORGED),
        (f"SUCCESS {TOKEN}0\n".encode(), FORGED),
        (f"SUCCESS {TOKEN.upper()}\n".encode(), FORGED),
        (f"SUCCESS\nSUCCESS {TOKEN}\n".encode(), FORGED),  # image code wrote first
        (f"SUCCESS {TOKEN}\nSUCCESS\n".encode(), FORGED),  # or after
        (f"SUCCESS {TOKEN}\nERROR: x\nSUCCESS {'0' * 64}\n".encode(), FORGED),
        (
            f"SUCCESS {TOKEN}\nSUCCESS {TOKEN}\n".encode(),
            "Result(success=False, reason='the result port carried 2 lines where the runner writes one')",
        ),
        (
            f"ERROR: planted\nSUCCESS {TOKEN}\n".encode(),
            "Result(success=False, reason='the result port carried 2 lines where the runner writes one; "
            "the first error: planted')",
        ),
        (
            b"garbage\n",
            "Result(success=False, reason='the result port carried something that is not a result line')",
        ),
        (b"\xff\xfe\n", "Result(success=False, reason='the result port carried something that is not a result line')"),
    ],
)
def test_result_verdict(data, verdict):
    """Only the runner's one SUCCESS line with the token is success; a SUCCESS without it is named a forgery."""
    assert repr(channels.result_verdict(data, TOKEN)) == verdict


def test_helper_version_is_stable_and_tracks_code():
    version = helper_version()
    assert version.startswith(__import__("snf_image").__version__ + "+")
    names = [rel for rel, _ in code_layer_files()]
    assert "helper/init" in names and "helper/runner.py" in names and "snf_image/contract/constants.py" in names
    # the jail gets the contract and nothing else of the host (no sources, no HTTP client, no launcher)
    host = [n for n in names if n.startswith("snf_image/") and not n.startswith("snf_image/contract/")]
    assert host == ["snf_image/__init__.py"]
    assert not any("__pycache__" in n for n in names)


def test_version_mismatch_refused(tmp_path):
    for name in ("image", "kernel", "initrd"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "version").write_text("0.0.1+deadbeef\n")
    with pytest.raises(
        HelperError,
        match=r"helper image version 0\.0\.1\+deadbeef does not match snf-image "
        r".*rebuild it with: snf-image helper build \[--code-only\]",
    ):
        jail.check_helper_dir(tmp_path)
    (tmp_path / "version").unlink()
    with pytest.raises(HelperError, match="missing"):
        jail.check_helper_dir(tmp_path)


def test_run_helper_validates_before_booting(tmp_path):
    for name in ("image", "kernel", "initrd"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "version").write_text(helper_version())
    config = jail.HelperConfig(helper_dir=tmp_path, accel="tcg", qemu="/nonexistent/qemu")
    rules = json.dumps({}).encode()
    with pytest.raises(ValueError, match="needs the deployment's result token"):
        jail.run_helper(config, [], rules, print, print, token="")
    with pytest.raises(HelperError, match="rules"):
        jail.run_helper(config, [], b"", print, print, token=TOKEN)
    with pytest.raises(HelperError, match="does not exist"):
        jail.run_helper(config, [jail.JailDisk(str(tmp_path / "nope"), 0)], rules, print, print, token=TOKEN)
    with pytest.raises(HelperError, match=r"cannot start the helper VM \(/nonexistent/qemu\)"):
        jail.run_helper(config, [], rules, print, lambda _: None, token=TOKEN)
    with pytest.raises(HelperError, match="distinct"):
        disk = str(tmp_path / "image")
        jail.run_helper(config, [jail.JailDisk(disk, 0), jail.JailDisk(disk, 0)], rules, print, print, token=TOKEN)


def _fake_qemu(tmp_path: Path, body: str) -> jail.HelperConfig:
    """A helper dir that passes the checks and a stand-in for qemu (a Python script)."""
    for name in ("image", "kernel", "initrd"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "version").write_text(helper_version())
    qemu = tmp_path / "fake-qemu"
    header = (
        "#!/usr/bin/python3\nimport signal, sys, time\n"
        'if sys.argv[1:] == ["-help"]:\n    print("\\n-sandbox on")\n    sys.exit(0)\n'
    )
    qemu.write_text(header + body)
    qemu.chmod(0o755)
    return jail.HelperConfig(helper_dir=tmp_path, accel="tcg", qemu=str(qemu), user=None)


def test_sigterm_ignored_then_sigkill(tmp_path):
    config = _fake_qemu(tmp_path, "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n")
    config.soft_timeout, config.hard_timeout = 0.5, 0.5
    log: list[str] = []
    start = time.monotonic()
    with pytest.raises(
        HelperError,
        match=r"^Image customization failed: the helper VM did not finish on time "
        r"\(0\.5 s\)$",
    ):
        jail.run_helper(config, [], b"{}", print, log.append, token=TOKEN)
    assert time.monotonic() - start < 5
    assert any("sending SIGTERM, SIGKILL 0.5 s on" in line for line in log)
    assert not [pid for pid in leftovers.pids() if str(config.qemu) in leftovers.cmdline(pid)]


def test_qemu_dies(tmp_path):
    config = _fake_qemu(tmp_path, "print('qemu: cannot set up guest memory', flush=True)\nsys.exit(3)\n")
    log: list[str] = []
    with pytest.raises(
        HelperError,
        match=r"^Image customization failed: the helper VM died unexpectedly "
        r"\(exit code 3\)$",
    ):
        jail.run_helper(config, [], b"{}", print, log.append, token=TOKEN)
    assert "QEMU: qemu: cannot set up guest memory" in log


def test_a_qemu_without_seccomp_is_refused_unless_allowed(tmp_path, caplog):
    config = _fake_qemu(tmp_path, "sys.exit(0)\n")
    Path(config.qemu).write_text(Path(config.qemu).read_text().replace('print("\\n-sandbox on")', "pass"))
    with pytest.raises(HelperError, match=r"has no seccomp sandbox \(-sandbox\): refusing to run the helper VM"):
        jail.run_helper(config, [], b"{}", print, print, token=TOKEN)
    config.allow_no_seccomp = True
    log: list[str] = []
    with pytest.raises(HelperError, match="ended without a result"):
        jail.run_helper(config, [], b"{}", print, log.append, token=TOKEN)
    assert any(line.startswith("WARNING: ") and "runs without it" in line for line in log)
    assert "runs without it (HELPER_ALLOW_NO_SECCOMP)" in caplog.text
    assert "-sandbox" not in next(line for line in log if line.startswith("starting the helper VM"))
