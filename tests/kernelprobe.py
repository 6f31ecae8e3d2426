"""A test-only runner for the helper VM: what its kernel offers the tasks and the image-code sandbox.

Injected with tests/serialprobe.py into a test copy of the code layer and run
instead of helper.runner (tests/integration/test_helper_kernel.py). It tries
each feature for real rather than reading a config: namespaces by unshare(1)
into all of them, capabilities by setpriv(1), cgroup v2 by limiting a child's
processes and memory, seccomp by a filter that denies one system call. Each
finding is one fact (a JSON object); then SUCCESS.
"""

import ctypes
import errno
import json
import os
import struct
import subprocess

import serialprobe

CGROUP = "/sys/fs/cgroup"
SANDBOX = f"{CGROUP}/sandbox"
NAMESPACES = ("mnt", "pid", "ipc", "uts", "net", "cgroup")

#: Run inside the namespaces: what the sandboxed process sees.
INSIDE = """
import json, os, socket, subprocess, sys
os.makedirs("/tmp/inside", exist_ok=True)
subprocess.run(["mount", "-t", "tmpfs", "inside", "/tmp/inside"], check=True)
socket.sethostname("sandboxed")
print(json.dumps({
    "pid": os.getpid(),
    "ns": {n: os.readlink(f"/proc/self/ns/{n}") for n in sys.argv[1:]},
    "hostname": socket.gethostname(),
    "mounted": os.path.ismount("/tmp/inside"),
    "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
}))
"""


def namespaces() -> dict:
    os.makedirs("/tmp/inside", exist_ok=True)
    outside = {n: os.readlink(f"/proc/self/ns/{n}") for n in NAMESPACES}
    argv = ["unshare", "--mount", "--pid", "--ipc", "--uts", "--net", "--cgroup", "--fork", "--mount-proc"]
    proc = subprocess.run([*argv, "--", "python3", "-c", INSIDE, *NAMESPACES], capture_output=True, text=True)
    inside = json.loads(proc.stdout) if proc.returncode == 0 else None
    return {
        "unshare_rc": proc.returncode,
        "unshare_stderr": proc.stderr[-500:],
        "outside": outside,
        "inside": inside,
        "hostname_after": os.uname().nodename,
        "mount_leaked": os.path.ismount("/tmp/inside"),
    }


def capabilities() -> dict:
    """setpriv drops every capability and sets no_new_privs; the child's status says what it kept."""
    argv = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", "cat", "/proc/self/status"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    status = dict(line.split(":\t", 1) for line in proc.stdout.splitlines() if ":\t" in line)
    keys = ("CapInh", "CapPrm", "CapEff", "CapBnd", "NoNewPrivs", "Seccomp")
    return {"setpriv_rc": proc.returncode, **{k: status.get(k, "").strip() for k in keys}}


def _in_child(work) -> dict:
    """Run ``work()`` in a forked child; its dict comes back through a pipe, or how it died."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            result = work()
        except BaseException as exc:
            result = {"error": repr(exc)}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    _, status = os.waitpid(pid, 0)
    found = json.loads(data) if data else {}
    if os.WIFSIGNALED(status):
        found["killed_by"] = os.WTERMSIG(status)
    return found


def cgroups() -> dict:
    os.makedirs(CGROUP, exist_ok=True)
    subprocess.run(["mount", "-t", "cgroup2", "cgroup2", CGROUP], check=True)
    with open(f"{CGROUP}/cgroup.controllers") as f:
        controllers = f.read().split()
    with open(f"{CGROUP}/cgroup.subtree_control", "w") as f:
        f.write("+pids +memory")
    os.mkdir(SANDBOX)
    for name, value in (("pids.max", "4"), ("memory.max", "16M")):
        with open(f"{SANDBOX}/{name}", "w") as f:
            f.write(value)

    def join() -> None:
        with open(f"{SANDBOX}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    def fork_many() -> dict:
        join()
        children, failure = [], None
        for _ in range(10):
            try:
                children.append(subprocess.Popen(["sleep", "30"]))
            except OSError as exc:
                failure = errno.errorcode.get(exc.errno, str(exc.errno))
                break
        for child in children:
            child.kill()
            child.wait()
        return {"started": len(children), "failure": failure}

    def eat_memory() -> dict:
        join()
        hog = b"\1" * (64 << 20)  # written, so charged (a calloc'd buffer would not be)
        return {"allocated": len(hog)}

    forks = _in_child(fork_many)
    memory = _in_child(eat_memory)
    values = {}
    for name in ("pids.max", "memory.max", "pids.events", "memory.events"):
        with open(f"{SANDBOX}/{name}") as f:
            values[name] = f.read().strip()
    return {"controllers": controllers, "forks": forks, "memory": memory, "values": values}


def seccomp() -> dict:
    """A filter that makes uname(2) fail with EPERM; everything else allowed."""

    def filtered() -> dict:
        ld_nr = struct.pack("HBBI", 0x20, 0, 0, 0)  # BPF_LD|BPF_W|BPF_ABS: seccomp_data.nr
        is_uname = struct.pack("HBBI", 0x15, 0, 1, 63)  # BPF_JMP|BPF_JEQ|BPF_K: __NR_uname
        deny = struct.pack("HBBI", 0x06, 0, 0, 0x00050000 | errno.EPERM)  # SECCOMP_RET_ERRNO
        allow = struct.pack("HBBI", 0x06, 0, 0, 0x7FFF0000)  # SECCOMP_RET_ALLOW
        program = ctypes.create_string_buffer(ld_nr + is_uname + deny + allow)

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        fprog = SockFprog(4, ctypes.cast(program, ctypes.c_void_p))
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            return {"installed": False, "errno": ctypes.get_errno()}
        if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
            return {"installed": False, "errno": errno.errorcode.get(ctypes.get_errno())}
        try:
            os.uname()
            uname = "allowed"
        except OSError as exc:
            uname = errno.errorcode.get(exc.errno, str(exc.errno))
        with open("/proc/self/status") as f:
            mode = next(line.split(":")[1].strip() for line in f if line.startswith("Seccomp:"))
        return {"installed": True, "uname": uname, "getpid_works": os.getpid() > 0, "mode": mode}

    return _in_child(filtered)


def filesystems() -> dict:
    with open("/proc/filesystems") as f:
        names = sorted(line.split()[-1] for line in f if line.strip())
    return {"filesystems": names, "dev_fuse": os.path.exists("/dev/fuse")}


def main(ports: serialprobe.Ports) -> None:
    for name, check in (
        ("filesystems", filesystems),
        ("namespaces", namespaces),
        ("capabilities", capabilities),
        ("cgroups", cgroups),
        ("seccomp", seccomp),
    ):
        ports.fact({"check": name, **check()})
    ports.succeed()


if __name__ == "__main__":
    serialprobe.run(main)
