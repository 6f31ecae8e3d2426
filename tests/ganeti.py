"""A throw-away single-node Ganeti 3.0 cluster for end-to-end tests (a Python port of cluster.sh).

Everything network- and hostname-related happens inside private net, UTS and
mount namespaces held open by a ``sleep infinity`` process: the host's
hostname, ``/etc/hosts``, ``/sys`` and network stay untouched and no packet
can leave the machine (the namespace has only ``lo`` and an empty bridge).
Ganeti's own files (``/var/lib/ganeti``, ``/var/log/ganeti``, ``/etc/ganeti``,
``/srv/ganeti``) are shared with the host.

Every side effect outside Ganeti is recorded in ``STATE_DIR/state.json``
*before* it is made (holder pid, loop devices, mounts, files replaced, dirs
created, helper processes started), so :meth:`Cluster.down` undoes exactly
that, also after a failed test, and :meth:`Cluster.up` first cleans up what a
crashed run left behind: it re-enters the old namespace if any of its
processes is still alive, or starts Ganeti's daemons in a fresh one just to
let ``gnt-cluster destroy`` remove the stale cluster.

From a shell (``/usr/bin/python3 -m tests.ganeti up|down|exec CMD...``) it is
the same cluster the pytest fixtures use.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from snf_image import __version__
from tests import debpkg

STATE_DIR = Path(os.environ.get("SNF_IMAGE_GANETI_STATE", "/var/tmp/snf-image-gnt"))
NET = "198.51.100"
NODE = "node1.gnt.test"
NODE_IP = f"{NET}.10"
CLUSTER = "cluster.gnt.test"
BRIDGE = "gntbr0"
#: Instance names the tests may use, resolvable inside the namespace.
INSTANCES = tuple(f"inst{i}.gnt.test" for i in range(1, 10))
SRV = Path("/srv/ganeti")
FILE_STORAGE = SRV / "file-storage"
SHARED_FILE_STORAGE = SRV / "shared-file-storage"
FILE_STORAGE_PATHS = Path("/etc/ganeti/file-storage-paths")
GANETI_CONFIG = Path("/var/lib/ganeti/config.data")
GANETI_PIDS = Path("/var/run/ganeti")
EXPORT_DIR = Path("/var/lib/ganeti/export")
OS_LOG_DIR = Path("/var/log/ganeti/os")
DAEMON_UTIL = "/usr/lib/ganeti/daemon-util"
ADOPT_DIR = Path("/dev/disk/gnt")
#: What Ganeti's daemons and our commands get: a node's clean environment, not pytest's.
NS_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C"}
IPOLICY = (
    "min:cpu-count=1,disk-count=1,disk-size=1,memory-size=1,nic-count=0,spindle-use=1"
    "/max:cpu-count=8,disk-count=16,disk-size=1048576,memory-size=32768,nic-count=8,spindle-use=12"
)
KVM_PARAMS = "kvm:kvm_path=/usr/bin/qemu-system-x86_64,kvm_flag=disabled,vnc_bind_address=,kernel_path=,initrd_path="
#: Arguments every test instance needs on this node (no DNS, one node, no iallocator).
COMMON_ADD_ARGS = ("--no-name-check", "--no-ip-check", "--no-start", "-n", NODE)


class ClusterError(RuntimeError):
    """A cluster command failed; the message carries its output."""


def log(message: str) -> None:
    """Progress on stderr: cluster setup and teardown take seconds and a silent test looks hung."""
    print(f"[ganeti] {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Result:
    """What a command did: exit code and its stdout+stderr interleaved (what an operator sees)."""

    argv: tuple[str, ...]
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    timeout: float = 900,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> Result:
    """The one subprocess helper of the harness: argument list, output captured for the error message."""
    args = tuple(os.fspath(a) for a in argv)
    stdin = None if input is not None else subprocess.DEVNULL
    proc = subprocess.run(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=timeout,
        env=env,
        input=input,
        stdin=stdin,
    )
    result = Result(args, proc.returncode, proc.stdout)
    if check and not result.ok:
        raise ClusterError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-6000:]}")
    return result


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _net_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _pids_in_net_ns(ns: str) -> list[int]:
    """Every process sitting in the network namespace ``ns`` (ours: it is private to the harness)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()) and _net_ns(entry.name) == ns:
            found.append(int(entry.name))
    return found


def _kill(pids: Sequence[int], grace: float = 5.0) -> None:
    """SIGTERM, wait, SIGKILL: only the given pids (all started by the harness or inside its namespace)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _mounted(path: str) -> bool:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        if line.split()[1].replace("\\040", " ") == path:
            return True
    return False


class State:
    """The harness's record of its side effects, kept on disk so a crashed run can be undone."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.json"
        self.data: dict = {}
        if self.path.is_file():
            with contextlib.suppress(ValueError):
                self.data = json.loads(self.path.read_text())

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name("state.json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        tmp.rename(self.path)

    def get(self, key: str, default=None):
        return self.data.get(key, default)

    def set(self, key: str, value) -> None:
        self.data[key] = value
        self.save()

    def add(self, key: str, value) -> None:
        items = self.data.setdefault(key, [])
        if value not in items:
            items.append(value)
        self.save()

    def discard(self, key: str, value) -> None:
        items = self.data.get(key, [])
        if value in items:
            items.remove(value)
            self.save()


class Cluster:
    """The cluster: up/down, commands inside its namespaces, and test resources it cleans up."""

    def __init__(self, state_dir: Path = STATE_DIR, kvm: bool = False) -> None:
        self.state_dir = state_dir
        self.kvm = kvm
        self.state = State(state_dir)

    # ------------------------------------------------------------------ namespace

    @property
    def holder(self) -> int | None:
        pid = self.state.get("holder")
        return pid if _alive(pid) else None

    def _ns_pid(self) -> int | None:
        """A live process inside our namespaces: the holder, or after a crash any Ganeti daemon left in it."""
        if self.holder:
            return self.holder
        ns = self.state.get("net_ns")
        if not ns:
            return None
        for pidfile in sorted(GANETI_PIDS.glob("*.pid")):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().split()[0])
                if _alive(pid) and _net_ns(pid) == ns:
                    return pid
        pids = _pids_in_net_ns(ns)
        return pids[0] if pids else None

    def _nsenter(self, pid: int, argv: Sequence[str | os.PathLike[str]], net_only: bool = False) -> list[str]:
        spaces = ["-n"] if net_only else ["-n", "-u", "-m"]
        return ["nsenter", "-t", str(pid), *spaces, "--", *[os.fspath(a) for a in argv]]

    def exec(
        self, *argv: str | os.PathLike[str], check: bool = True, timeout: float = 900, input: str | None = None
    ) -> Result:
        """Run a command inside the cluster's namespaces (gnt-* commands, daemon-util, ...)."""
        pid = self._ns_pid()
        if pid is None:
            raise ClusterError("the cluster's namespaces are not up")
        return run(self._nsenter(pid, argv), check=check, timeout=timeout, env=NS_ENV, input=input)

    def gnt(self, *argv: str, check: bool = True, timeout: float = 900) -> Result:
        """A gnt-* command; logged with its duration, since these are what an e2e test spends its time on."""
        start = time.monotonic()
        result = self.exec(*argv, check=check, timeout=timeout)
        log(f"{' '.join(argv)[:140]} -> rc={result.returncode} in {time.monotonic() - start:.1f}s")
        return result

    def _make_namespace(self) -> int:
        """Start the holder and give its namespaces a hostname, /etc/hosts, a bridge and their own /sys."""
        holder = subprocess.Popen(
            ["setsid", "unshare", "--net", "--uts", "--mount", "--propagation", "private", "sleep", "infinity"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.state.set("holder", holder.pid)
        mine = _net_ns("self")
        for _ in range(100):
            if _net_ns(holder.pid) not in (None, mine):
                break
            time.sleep(0.05)
        else:
            raise ClusterError("the namespace holder did not enter a new network namespace")
        self.state.set("net_ns", _net_ns(holder.pid))
        hosts = self.state_dir / "hosts"
        lines = ["127.0.0.1 localhost", f"{NODE_IP} {NODE} node1", f"{NET}.100 {CLUSTER} cluster"]
        lines += [f"{NET}.{21 + i} {name}" for i, name in enumerate(INSTANCES)]
        hosts.write_text("\n".join(lines) + "\n")
        hosts.chmod(0o644)
        for argv in (
            ["hostname", NODE],
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", BRIDGE, "type", "bridge"],
            ["ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE],
            ["ip", "link", "set", BRIDGE, "up"],
            ["mount", "--bind", str(hosts), "/etc/hosts"],
            ["mount", "-t", "sysfs", "sysfs", "/sys"],
        ):
            run(self._nsenter(holder.pid, argv), env=NS_ENV)
        return holder.pid

    # ------------------------------------------------------------------ host files

    def _mkdir(self, path: Path) -> None:
        """mkdir -p, remembering the top-most directory we created so down() removes only that."""
        missing = []
        probe = path
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        if missing:
            self.state.add("created_dirs", str(missing[-1]))
            path.mkdir(parents=True)

    def replace_file(self, path: Path, text: str, mode: int = 0o644) -> None:
        """Write ``path``, saving what was there first (once per run) so down() restores it."""
        saved = self.state.get("saved_files", {})
        if str(path) not in saved:
            backup = None
            if path.exists():
                backups = self.state_dir / "saved"
                backups.mkdir(parents=True, exist_ok=True)
                backup = str(backups / str(path).strip("/").replace("/", "__"))
                shutil.copy2(path, backup)
            saved[str(path)] = backup
            self.state.set("saved_files", saved)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)

    def _restore_files(self) -> None:
        for path, backup in self.state.get("saved_files", {}).items():
            with contextlib.suppress(OSError):
                if backup and Path(backup).exists():
                    shutil.copy2(backup, path)
                else:
                    Path(path).unlink(missing_ok=True)
        self.state.set("saved_files", {})

    # ------------------------------------------------------------------ lifecycle

    def up(self) -> Cluster:
        """Clean up any crashed run, then namespaces + ``gnt-cluster init`` + relaxed ipolicy (+ kvm)."""
        start = time.monotonic()
        if shutil.which("gnt-cluster") is None:
            raise ClusterError("Ganeti is not installed: apt-get install --no-install-recommends ganeti")
        self.cleanup_stale()
        if GANETI_CONFIG.exists():
            raise ClusterError(f"{GANETI_CONFIG} exists: a Ganeti cluster not made by this harness lives here")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o755)
        self.state.set("up_started", time.time())
        self._make_namespace()
        for path in (FILE_STORAGE, SHARED_FILE_STORAGE, SRV / "os"):
            self._mkdir(path)
        self.replace_file(FILE_STORAGE_PATHS, f"{FILE_STORAGE}\n{SHARED_FILE_STORAGE}\n")
        self.state.set("cluster_initialised", True)
        self.gnt(
            "gnt-cluster",
            "init",
            "--no-ssh-init",
            "--no-etc-hosts",
            "--master-netdev",
            BRIDGE,
            "--master-netmask",
            "24",
            "--enabled-hypervisors",
            "fake",
            "--enabled-disk-templates",
            "file,sharedfile,blockdev",
            "--ipolicy-disk-templates",
            "file,sharedfile,blockdev",
            "--file-storage-dir",
            str(FILE_STORAGE),
            "--shared-file-storage-dir",
            str(SHARED_FILE_STORAGE),
            "--nic-parameters",
            f"mode=bridged,link={BRIDGE}",
            CLUSTER,
        )
        self.gnt("gnt-cluster", "modify", "--ipolicy-bounds-specs", IPOLICY)
        if self.kvm:
            self.gnt("gnt-cluster", "modify", "--enabled-hypervisors", "fake,kvm", "-H", KVM_PARAMS)
        log(f"cluster up in {time.monotonic() - start:.1f}s (holder {self.holder})")
        return self

    def cleanup_stale(self) -> None:
        """Undo what a previous run that crashed or was killed left behind."""
        if not self.state.data:
            return
        log(f"cleaning up the state of a previous run ({self.state.path})")
        if self.state.get("cluster_initialised") and GANETI_CONFIG.exists() and not self._daemons_running():
            # Ganeti's own destroy needs its daemons: restart them, in a fresh namespace if nobody is left.
            if self._ns_pid() is None:
                self._make_namespace()
            log("starting Ganeti's daemons to destroy the stale cluster")
            for pidfile in GANETI_PIDS.glob("*.pid"):  # start-stop-daemon refuses stale non-root pidfiles
                with contextlib.suppress(OSError, ValueError, IndexError):
                    if not _alive(int(pidfile.read_text().split()[0])):
                        pidfile.unlink()
            self._try_exec(DAEMON_UTIL, "start-all", timeout=120)
        self.down()

    def _daemons_running(self) -> bool:
        """Whether luxid (what gnt-* commands talk to) runs in our namespace; without it they hang ~90 s."""
        ns = self.state.get("net_ns")
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((GANETI_PIDS / "ganeti-luxid.pid").read_text().split()[0])
            return _alive(pid) and ns is not None and _net_ns(pid) == ns
        return False

    def down(self) -> None:
        """Remove everything: instances, exports, cluster, daemons, namespaces, loops, mounts, files, dirs."""
        start = time.monotonic()
        for pid in self.state.get("processes", []):
            _kill([pid])
        self.state.set("processes", [])
        if GANETI_CONFIG.exists() and self._daemons_running():
            self._remove_all_instances()
            self._try_exec("gnt-cluster", "destroy", "--yes-do-it", timeout=300)
        # destroy leaves noded (briefly) and the on-demand metad running
        self._try_exec(DAEMON_UTIL, "stop-all", timeout=120)
        self._try_exec(DAEMON_UTIL, "stop", "ganeti-metad", timeout=60)
        ns = self.state.get("net_ns")
        if ns:
            _kill(_pids_in_net_ns(ns))
        self.state.set("cluster_initialised", False)
        for mount in reversed(self.state.get("mounts", [])):
            self._umount(mount)
        for loop in self.state.get("loops", []):
            self._detach(loop)
        for link in self.state.get("links", []):
            with contextlib.suppress(OSError):
                Path(link).unlink()
        self._restore_files()
        for directory in reversed(self.state.get("created_dirs", [])):
            shutil.rmtree(directory, ignore_errors=True)
        if GANETI_CONFIG.exists():
            log(f"WARNING: {GANETI_CONFIG} is still there; the cluster was not destroyed")
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.state = State(self.state_dir)
        log(f"down in {time.monotonic() - start:.1f}s")

    def _try_exec(self, *argv: str, timeout: float) -> Result | None:
        """exec() for teardown: nothing if every process of the namespace is already gone."""
        try:
            return self.exec(*argv, check=False, timeout=timeout)
        except (ClusterError, subprocess.TimeoutExpired) as exc:
            log(f"{' '.join(argv)}: {str(exc).splitlines()[0]}")
            return None

    def _remove_all_instances(self) -> None:
        listed = self._try_exec("gnt-instance", "list", "--no-headers", "-o", "name", timeout=120)
        for name in listed.output.split() if listed and listed.ok else []:
            self._try_exec("gnt-instance", "remove", "-f", "--shutdown-timeout=0", name, timeout=300)
        exports = self._try_exec("gnt-backup", "list", "--no-headers", timeout=120)
        for line in exports.output.splitlines() if exports and exports.ok else []:
            fields = line.split()
            if len(fields) >= 2:
                self._try_exec("gnt-backup", "remove", fields[1], timeout=120)

    # ------------------------------------------------------------------ test resources

    def start_process(
        self, argv: Sequence[str | os.PathLike[str]], in_namespace: bool = True, **popen
    ) -> subprocess.Popen:
        """A background process (e.g. an HTTP server) that down() stops if the test does not."""
        args = [os.fspath(a) for a in argv]
        if in_namespace:
            pid = self._ns_pid()
            if pid is None:
                raise ClusterError("the cluster's namespaces are not up")
            args = self._nsenter(pid, args, net_only=True)
        proc = subprocess.Popen(args, env={**NS_ENV, "PYTHONUNBUFFERED": "1"}, **popen)
        self.state.add("processes", proc.pid)
        return proc

    def stop_process(self, proc: subprocess.Popen) -> None:
        _kill([proc.pid])
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self.state.discard("processes", proc.pid)

    @contextlib.contextmanager
    def http_server(self, directory: Path, port: int = 8080) -> Iterator[str]:
        """Serve ``directory`` over HTTP on the node's address inside the namespace; yields the base URL."""
        proc = self.start_process(
            ["/usr/bin/python3", "-m", "http.server", str(port), "--bind", NODE_IP, "--directory", str(directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # "Serving HTTP on ..." once the socket is bound
            if "Serving HTTP" not in line:
                raise ClusterError(f"the HTTP server did not start: {line!r}")
            yield f"http://{NODE_IP}:{port}"
        finally:
            self.stop_process(proc)
            if proc.stdout:
                proc.stdout.close()

    def loop_device(self, name: str, size_mib: int) -> Path:
        """A loop device over a sparse file, linked as /dev/disk/gnt/<name> for ``-t blockdev`` adoption."""
        backing = self.state_dir / f"{name}.img"
        with open(backing, "wb") as fh:
            fh.truncate(size_mib * 1024 * 1024)
        device = run(["losetup", "-f", "--show", backing]).output.strip()
        self.state.add("loops", device)
        self._mkdir(ADOPT_DIR)
        link = ADOPT_DIR / name
        self.state.add("links", str(link))
        link.unlink(missing_ok=True)
        link.symlink_to(device)
        return link

    def _detach(self, device: str) -> None:
        run(["losetup", "-d", device], check=False)
        self.state.discard("loops", device)

    @contextlib.contextmanager
    def mounted_ro(self, disk: Path, offset: int, size: int, fs_type: str = "ext4") -> Iterator[Path]:
        """A read-only, no-journal-replay loop mount of one filesystem of a disk (the test's own check)."""
        mnt = self.state_dir / f"mnt-{os.getpid()}-{time.monotonic_ns()}"
        mnt.mkdir(parents=True)
        self.state.add("mounts", str(mnt))
        opts = f"ro,loop,offset={offset},sizelimit={size},{'norecovery' if fs_type == 'xfs' else 'noload'}"
        try:
            run(["mount", "-t", fs_type, "-o", opts, disk, mnt])
            yield mnt
        finally:
            self._umount(str(mnt))

    def _umount(self, mount: str) -> None:
        if _mounted(mount) and not run(["umount", mount], check=False).ok:
            run(["umount", "-l", mount], check=False)
        with contextlib.suppress(OSError):
            Path(mount).rmdir()
        self.state.discard("mounts", mount)

    # ------------------------------------------------------------------ queries

    def instances(self) -> list[str]:
        return self.exec("gnt-instance", "list", "--no-headers", "-o", "name").output.split()

    def remove_instance(self, name: str) -> None:
        """Remove an instance if it exists (a failed create leaves it in the config)."""
        if name in self.instances():
            self.gnt("gnt-instance", "remove", "-f", "--shutdown-timeout=0", name)

    def disk_path(self, name: str, index: int = 0) -> Path:
        """Node-side path of an instance disk (file template: under the file storage dir; else as adopted)."""
        found = sorted((FILE_STORAGE / name).glob(f"*.disk{index}"))
        if found:
            return found[0]
        info = self.exec("gnt-instance", "info", "--static", name).output
        for line in info.splitlines():
            stripped = line.strip()
            if stripped.startswith("on primary:") and "/" in stripped:
                return Path(stripped.split()[2])
        raise ClusterError(f"cannot find disk {index} of {name}")

    def os_logs(self, kind: str, instance: str) -> list[Path]:
        """The OS script logs of one instance (``add``, ``rename``, ``import``, ``export``), oldest first."""
        return sorted(OS_LOG_DIR.glob(f"{kind}-*-{instance}-*.log"), key=lambda p: p.stat().st_mtime)


# --------------------------------------------------------------------------- pytest fixtures

REPO = Path(__file__).resolve().parent.parent
SNF_CONFIG = Path("/etc/snf-image/snf-image.conf")
SNF_COMMAND = Path("/usr/bin/snf-image")
#: The copy an earlier scripts/install made: it would shadow the package's modules.
LEGACY_COPY = Path("/usr/local/lib/python3.11/dist-packages/snf_image/INSTALLED-BY-SNF-IMAGE")
MONITOR_TEXT = """#!/usr/bin/python3
# PROGRESS_MONITOR of the e2e tests: appends its stdin to monitor/<instance>.jsonl, line by line.
import pathlib
import sys

out = pathlib.Path(__file__).resolve().parent / "monitor" / (sys.argv[1] + ".jsonl")
with open(out, "ab") as f:
    for line in sys.stdin.buffer:
        f.write(line)
        f.flush()
"""


def ensure_ganeti() -> None:
    """Install Debian's ganeti package if missing (a fresh CI machine has only what the suite installs)."""
    if shutil.which("gnt-cluster"):
        return
    log("installing ganeti (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(
        ["apt-get", "-o", "DPkg::Lock::Timeout=1200", "install", "-y", "--no-install-recommends", "ganeti"],
        env=env,
        timeout=1800,
    )


@dataclass
class Deployment:
    """The cluster plus snf-image installed from its .deb and configured: where tests put images and read progress."""

    cluster: Cluster
    image_dir: Path
    monitor_dir: Path
    helper_dir: Path
    metrics_file: Path
    settings: dict[str, str]
    #: What the installation saw (tests check it): the upgrade, and Ganeti's verdict before the helper existed.
    previous_version: str = ""
    settings_edited: str = ""
    settings_after_upgrade: str = ""
    diagnose_before_helper: str = ""
    status_before_helper: Result | None = None

    def configure(self, **extra: str) -> None:
        """Write /etc/snf-image/snf-image.conf, the package's conffile (Ganeti resets the environment)."""
        values = {**self.settings, **extra}
        text = "# edited by snf-image's e2e tests; the package's purge removes it\n"
        text += "".join(f'{key}="{value}"\n' for key, value in values.items())
        SNF_CONFIG.write_text(text)

    def monitor_messages(self, instance: str) -> list[dict]:
        path = self.monitor_dir / f"{instance}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def reset_monitor(self, instance: str) -> None:
        (self.monitor_dir / f"{instance}.jsonl").unlink(missing_ok=True)

    def install(self) -> None:
        """As an operator: the previous build, the settings edited, an upgrade to this build; no helper yet."""
        assert not LEGACY_COPY.exists(), f"{LEGACY_COPY.parent} shadows the package: run scripts/install --remove"
        if debpkg.installed_version() is not None:
            log("purging the snf-image package left installed (by a crashed run?)")
            debpkg.apt("purge", debpkg.PACKAGE)
        deb = debpkg.built_deb()
        self.previous_version = f"{__version__}~e2e.prev"
        previous = debpkg.previous_build(deb, self.previous_version, self.cluster.state_dir)
        debpkg.apt("install", str(previous))
        assert debpkg.installed_version() == self.previous_version
        self.configure()
        self.settings_edited = SNF_CONFIG.read_text()
        debpkg.apt("install", str(deb))
        self.settings_after_upgrade = SNF_CONFIG.read_text()
        self.status_before_helper = run([SNF_COMMAND, "helper", "status"], check=False, env=NS_ENV)
        self.diagnose_before_helper = self.cluster.gnt("gnt-os", "diagnose", check=False).output


@pytest.fixture(scope="session")
def ganeti_cluster() -> Iterator[Cluster]:
    """One cluster (fake and kvm hypervisors) for the session; torn down even when tests fail."""
    assert os.geteuid() == 0, "a Ganeti cluster needs root"
    ensure_ganeti()
    cluster = Cluster(kvm=True)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(scope="session")
def snf_deployment(ganeti_cluster: Cluster) -> Iterator[Deployment]:
    """snf-image installed from its .deb and configured for the cluster; purged at the end of the session."""
    base = ganeti_cluster.state_dir
    deployment = Deployment(
        ganeti_cluster, base / "images", base / "monitor", base / "helper", base / "metrics" / "snf-image.prom", {}
    )
    for directory in (deployment.image_dir, deployment.monitor_dir, deployment.metrics_file.parent):
        directory.mkdir(parents=True, exist_ok=True)
    monitor = base / "progress-monitor"
    monitor.write_text(MONITOR_TEXT)
    monitor.chmod(0o755)
    deployment.settings = {
        "IMAGE_DIR": str(deployment.image_dir),
        "HELPER_DIR": str(deployment.helper_dir),
        # KVM here is nested and broken; "auto" would probe it (seconds) in every create process.
        "HELPER_ACCEL": "tcg",
        "PROGRESS_MONITOR": str(monitor),
        "METRICS_FILE": str(deployment.metrics_file),
    }
    try:
        deployment.install()
        yield deployment
    finally:
        if debpkg.installed_version() is not None:
            debpkg.apt("purge", debpkg.PACKAGE)


@pytest.fixture(scope="session")
def snf_helper(snf_deployment: Deployment) -> Path:
    """The test helper image (tests/helpervm.py) installed as the cluster's HELPER_DIR.

    The big files are symlinked from the test cache; the *installed* snf-image then
    brings the code layer up to date, so the helper matches the code Ganeti runs
    (and, HELPER_DIR being the one its settings name, Ganeti sees the OS valid).
    """
    from tests import helpervm

    built = helpervm.ensure_helper()
    target = snf_deployment.helper_dir
    target.mkdir(parents=True, exist_ok=True)
    for name in ("image", "kernel", "initrd-base", "packages", ".base-key"):
        link = target / name
        if not link.exists():
            link.symlink_to(built / name)
    for name in ("initrd", "version"):
        shutil.copyfile(built / name, target / name)
    run(
        [
            SNF_COMMAND,
            "helper",
            "build",
            "--code-only",
            "--helper-dir",
            target,
            "--cache-dir",
            target.parent / "helper-build",
        ],
        env=NS_ENV,
        timeout=600,
    )
    return target


@pytest.fixture(scope="session")
def debian_image(snf_deployment: Deployment):
    """tests/guests.py's real Debian image (ext4 on msdos), linked into IMAGE_DIR as debian.img."""
    from tests import guests

    image = guests.guest_image("ext4-msdos")
    target = snf_deployment.image_dir / "debian.img"
    if not target.exists():
        try:
            os.link(image.path, target)
        except OSError:
            run(["cp", "--sparse=always", image.path, target])
    return image


def main(argv: list[str] | None = None) -> int:
    """``python3 -m tests.ganeti up [--kvm] | down | exec CMD...``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("up", "down", "exec"):
        print(__doc__)
        return 2
    cluster = Cluster(kvm="--kvm" in args[1:])
    if args[0] == "up":
        cluster.up()
    elif args[0] == "down":
        cluster.cleanup_stale()
    else:
        result = cluster.exec(*args[1:], check=False)
        print(result.output, end="")
        return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
