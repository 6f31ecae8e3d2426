#!/usr/bin/python3
"""Hostile image code: tries every way out of the sandbox and records what it got.

Deployed by tests/integration/test_image_code_sandbox.py as a ``CUSTOM_TASK``
(no argument) and as an image's ``overwrite_task_<Name>`` (argument
``pre-exec`` / ``post-exec``). It runs with the helper's python3 inside the
helper VM, so it imports only the standard library. Each attack's outcome goes
into ``$SNF_IMAGE_TARGET/root/sandbox-attacks.json`` as soon as it is known (the
last attacks, if they worked, would power the VM off): ``{"attack":
{"refused": bool, "detail": str}}``, plus ``"abilities"``: what image code must
still be able to do, and ``"environment"``: what it was given. The test reads that file back from the deployed disk.

As a CUSTOM_TASK it ends with exit code 1 ("attacks finished"): the deployment
must then fail with that reason, whatever the attacks wrote on the way. As an
overwrite script it asks for the original task (101) and succeeds in post-exec.
"""

import ctypes
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time

TARGET = os.environ.get("SNF_IMAGE_TARGET", "/")
REPORT = os.path.join(TARGET, "root", "sandbox-attacks.json")
PLANTED = os.path.join(TARGET, "root", "planted")
# What the rules disk holds (built at run time: this file's own bytes must not match).
MARKERS = (b'"result' + b'_token"', b'"instance' + b'_name"')
FORGED = b"SUCCESS\n"
FORK_TRIES = 1500
libc = ctypes.CDLL(None, use_errno=True)
results: dict = {}


def save() -> None:
    with open(REPORT + ".tmp", "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.rename(REPORT + ".tmp", REPORT)


def err(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def last_errno() -> str:
    return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


def record(name: str, refused: bool, detail: object) -> None:
    results[name] = {"refused": refused, "detail": str(detail)[:2000]}
    save()


def device_nodes(top: str = "/dev"):
    for root, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(root, name)
            try:
                yield path, os.lstat(path)
            except OSError:
                continue


def write_forged(path: str) -> str | None:
    """Open ``path`` and write a forged result; the error, or None if it worked."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return err(exc)
    try:
        os.write(fd, FORGED)
    except OSError as exc:
        return f"opened, write {err(exc)}"
    finally:
        os.close(fd)
    return None


def has_rules(path: str) -> bool:
    """Whether the block device at ``path`` holds the rules (its first MiB)."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError:
        return False
    return any(marker in data for marker in MARKERS)


def attack_serial_ports() -> None:
    opened = {}
    for path in ("/dev/ttyS1", "/dev/ttyS0", "/dev/ttyS2", "/dev/ttyS3", "/dev/console", "/dev/tty", "/dev/kmsg"):
        problem = write_forged(path) if path == "/dev/ttyS1" else None
        if path != "/dev/ttyS1":
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK))
            except OSError as exc:
                problem = err(exc)
        if problem is None:
            opened[path] = "opened"
    record("serial_ports", not opened, opened or "none of the helper's ports or consoles could be opened")


def attack_mknod_result_port() -> None:
    outcome = []
    for directory in ("/tmp", "/dev", os.path.join(TARGET, "root")):
        node = os.path.join(directory, "forged-ttyS1")
        try:
            os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(4, 65))
        except OSError as exc:
            outcome.append(f"{directory}: mknod {err(exc)}")
            continue
        problem = write_forged(node)
        os.unlink(node)
        if problem is None:
            record("mknod_result_port", False, f"made and wrote {node}")
            return
        outcome.append(f"{directory}: made, {problem}")
    record("mknod_result_port", True, "; ".join(outcome))


def attack_result_port_from_sysfs() -> None:
    try:
        with open("/sys/class/tty/ttyS1/dev") as f:
            major, minor = map(int, f.read().split(":"))
    except OSError as exc:
        record("result_port_from_sysfs", True, f"/sys/class/tty/ttyS1/dev: {err(exc)}")
        return
    wanted = os.makedev(major, minor)
    for path, st in device_nodes():
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == wanted and write_forged(path) is None:
            record("result_port_from_sysfs", False, f"found {major}:{minor} at {path} and wrote it")
            return
    record("result_port_from_sysfs", True, f"no usable node for {major}:{minor}")


def rules_disk_number() -> tuple[int, int] | None:
    for name in sorted(os.listdir("/sys/block")):
        try:
            with open(f"/sys/block/{name}/serial") as f:
                serial = f.read().strip()
            with open(f"/sys/block/{name}/dev") as f:
                major, minor = map(int, f.read().split(":"))
        except OSError:
            continue
        if serial == "snf-rules":
            return major, minor
    return None


def attack_planted_nodes() -> None:
    """Device nodes shipped inside the image (the test planted them with debugfs)."""
    number = rules_disk_number()
    matched = False
    got = []
    for name in sorted(os.listdir(PLANTED)) if os.path.isdir(PLANTED) else []:
        path = os.path.join(PLANTED, name)
        st = os.lstat(path)
        if number is not None and stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(*number):
            matched = True
        if stat.S_ISCHR(st.st_mode):
            if write_forged(path) is None:
                got.append(f"wrote {name}")
        elif stat.S_ISBLK(st.st_mode) and has_rules(path):
            got.append(f"read the rules through {name}")
    record("planted_nodes", not got, got or f"no planted node opened (rules disk {number}, planted match {matched})")
    results.setdefault("abilities", {})["planted_rules_node"] = matched
    save()


def attack_rules_disk() -> None:
    found = [path for path, st in device_nodes() if stat.S_ISBLK(st.st_mode) and has_rules(path)]
    number = rules_disk_number()
    if number is not None:
        node = "/tmp/forged-rules"
        try:
            os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(*number))
        except OSError as exc:
            found_mknod = f"mknod {err(exc)}"
        else:
            found_mknod = "mknod worked"
            if has_rules(node):
                found.append(node)
            os.unlink(node)
    else:
        found_mknod = "no rules disk in /sys"
    record("rules_disk", not found, found or f"no device with the rules; {found_mknod}")


def attack_mount() -> None:
    worked = []
    for source, fstype in (("none", "tmpfs"), ("proc", "proc"), ("none", "sysfs"), ("none", "cgroup2")):
        if libc.mount(source.encode(), b"/tmp", fstype.encode(), 0, None) == 0:
            worked.append(fstype)
            libc.umount2(b"/tmp", 2)
        else:
            last = last_errno()
    record("mount", not worked, worked or f"every mount refused ({last})")


def attack_namespaces() -> None:
    """A user namespace (root again, with all capabilities inside) or a mount namespace of its own."""
    outcome = {}
    for name, flag in (("user", 0x10000000), ("mount", 0x00020000)):
        pid = os.fork()
        if pid == 0:
            os._exit(0 if libc.unshare(flag) == 0 else 100 + ctypes.get_errno())
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        outcome[name] = "unshared" if code == 0 else errno.errorcode.get(code - 100, str(code))
    record("namespaces", "unshared" not in outcome.values(), outcome)


def attack_load_module() -> None:
    blob = ctypes.create_string_buffer(b"\x7fELF" + b"\0" * 60)
    rc = libc.init_module(blob, ctypes.c_ulong(64), b"")
    code = last_errno() if rc != 0 else "loaded"
    # EPERM: no capability; ENOSYS: a kernel without modules. Anything else: the kernel parsed it.
    record("load_module", code in ("EPERM", "ENOSYS"), f"init_module: {code}")


def attack_kernel_knobs() -> None:
    changed = []
    for path, value in (
        ("/proc/sys/kernel/core_pattern", "|/tmp/pwn"),
        ("/proc/sys/kernel/modprobe", "/tmp/pwn"),
        ("/proc/sys/vm/drop_caches", "1"),
        ("/sys/kernel/uevent_helper", "/tmp/pwn"),
    ):
        try:
            with open(path) as f:
                before = f.read()
        except OSError:
            before = None
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError:
            continue
        changed.append(path)
        if before is not None and not path.endswith("drop_caches"):
            with open(path, "w") as f:
                f.write(before.strip() or "\n")
    record("kernel_knobs", not changed, changed or "no kernel setting could be written")


def attack_other_processes() -> None:
    mine = os.getpid()
    seen = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != mine:
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    seen[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
            except OSError:
                seen[int(entry)] = "?"
    touched = []
    for pid in sorted(seen):
        if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
            touched.append(f"ptrace {pid}")
            os.waitpid(pid, 0)
            libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                f.read()
            touched.append(f"environ {pid}")
        except OSError:
            pass
    runner = [pid for pid, cmd in seen.items() if "helper.runner" in cmd]
    bad = touched + [f"the runner is visible as {pid}" for pid in runner]
    record("other_processes", not bad, bad or f"visible: {seen}")


def attack_signal_init() -> None:
    """Whatever is PID 1 here (the sandbox's init, or the runner without a sandbox) must not die of a signal."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGKILL):
        try:
            os.kill(1, sig)
        except OSError as exc:
            record("signal_init", True, f"kill {sig.name}: {err(exc)}")
            return
        time.sleep(0.3)
    # still here: our PID 1 took every signal without dying (a dying init takes its namespace along)
    record("signal_init", True, "PID 1 ignored SIGINT, SIGTERM, SIGHUP, SIGUSR1 and SIGKILL")


def attack_cgroup_escape() -> None:
    escaped = []
    for path in ("/sys/fs/cgroup/cgroup.procs", "/sys/fs/cgroup/unified/cgroup.procs"):
        try:
            with open(path, "w") as f:
                f.write("0")
            escaped.append(path)
        except OSError:
            pass
    record("cgroup_escape", not escaped, escaped or "no cgroup file writable")


def attack_fork_limit() -> None:
    children = []
    stop = ""
    for _ in range(FORK_TRIES):
        try:
            pid = os.fork()
        except OSError as exc:
            stop = err(exc)
            break
        if pid == 0:
            signal.pause()
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    for pid in children:
        os.waitpid(pid, 0)
    record("fork_limit", len(children) < FORK_TRIES, f"{len(children)} processes, then {stop or 'no limit'}")


def attack_power() -> None:
    """Last: if either works the VM is gone."""
    outcome = []
    try:
        with open("/proc/sysrq-trigger", "w") as f:
            f.write("o")
        outcome.append("sysrq written")
    except OSError as exc:
        outcome.append(f"sysrq {err(exc)}")
    time.sleep(1)
    rc = libc.reboot(0x4321FEDC)  # RB_POWER_OFF
    outcome.append("reboot returned 0" if rc == 0 else f"reboot {last_errno()}")
    record("power", outcome[0].startswith("sysrq E") and rc != 0, outcome)


def abilities() -> None:
    """What image code must keep: the guest, its disk, /tmp, /dev/null, chroot into the guest."""
    can = results.setdefault("abilities", {})
    device = os.environ.get("SNF_IMAGE_DEV", "")
    try:
        with open(device, "rb") as f:
            can["read_instance_disk"] = len(f.read(4096)) == 4096
    except OSError as exc:
        can["read_instance_disk"] = err(exc)
    with open("/tmp/scratch", "w") as f:
        can["write_tmp"] = f.write("x") == 1
    with open("/dev/null", "w") as f:
        can["dev_null"] = f.write("x") == 1
    chroot = subprocess.run(["chroot", TARGET, "/bin/sh", "-c", "echo chrooted"], capture_output=True, text=True)
    can["chroot_into_guest"] = chroot.stdout.strip() == "chrooted"
    results["environment"] = dict(os.environ)
    save()


def main() -> int:
    phase = sys.argv[1] if len(sys.argv) > 1 else ""
    if phase == "post-exec":
        with open(os.path.join(TARGET, "root", "sandbox-post-exec"), "w") as f:
            f.write("post-exec ran\n")
        return 0
    results["phase"] = phase or "custom-task"
    abilities()
    for attack in (
        attack_serial_ports,
        attack_mknod_result_port,
        attack_result_port_from_sysfs,
        attack_planted_nodes,
        attack_rules_disk,
        attack_mount,
        attack_namespaces,
        attack_load_module,
        attack_kernel_knobs,
        attack_other_processes,
        attack_signal_init,
        attack_cgroup_escape,
        attack_fork_limit,
        attack_power,
    ):
        try:
            attack()
        except Exception as exc:  # an attack that crashed proves nothing: the test sees why
            record(attack.__name__[len("attack_") :], False, f"the attack itself failed: {exc!r}")
    if phase == "pre-exec":
        return 101
    print("attacks finished", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
