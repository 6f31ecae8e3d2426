"""Where a hostile case runs: an OS installation of its own, a canary, distinctive secrets, the real ``create``.

:class:`Lab` lays out one case's directory (the OS definition with its settings and IMAGE_DIR,
the instance disk, a canary file outside the image directory, a progress monitor writing what it
reads to a file, a loopback HTTP server serving ``config_url``), builds the case's input there
and runs ``create`` the way Ganeti does (:mod:`tests.osenv`), sampling every process below it.
Every deployment carries every kind of secret the product knows, each a distinctive value that
the verdict then looks for everywhere it must not be: a password or (every other case) a
password hash, user-data, a product key (from ``config_url``), and credentials and a signed
token in ``config_url`` (and in an image URL, for the cases that fetch one).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from passlib.hash import sha512_crypt

from tests import leftovers
from tests.hostile import guest
from tests.hostile.verdict import Canary, Run
from tests.osenv import create_env, install
from tests.servers import ImageServer

MiB = 1 << 20
INSTANCE = "hostile.example.test"
PASSWORD = "pw-Hostile-Zq81x"
HASH_SALT = "hostSalt7731qq"
PASSWORD_HASH = sha512_crypt.using(salt=HASH_SALT, rounds=5000).hash("hash-pw-Hostile-44")
USERDATA = "#cloud-config\n# hostile-userdata-6672\n"
PRODUCT_KEY = "H7ZK3-X9WPL-M2RTV-8HJNC-4FBQS"
URL_USER, URL_PASSWORD = "deployer", "urlpw-Hostile-3391"
CONFIG_TOKEN, IMAGE_TOKEN = "cfgtok-Hostile-0187", "imgtok-Hostile-5520"
SECRETS = {
    "password": PASSWORD,
    "password hash": PASSWORD_HASH.rsplit("$", 1)[1],
    "password hash salt": HASH_SALT,
    "user-data": "hostile-userdata-6672",
    "user-data (base64)": base64.b64encode(USERDATA.encode()).decode(),
    "product key": PRODUCT_KEY,
    "URL password": URL_PASSWORD,
    "config_url token": CONFIG_TOKEN,
    "image URL token": IMAGE_TOKEN,
}
AUTH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostileCorpusKeyForTheTestsOnly0123456789 corpus@test"
MONITOR = "#!/bin/sh\nexec cat >> {out}\n"
NIC = {
    "NIC_COUNT": "1",
    "NIC_0_MAC": "52:54:00:13:00:01",
    "NIC_0_IP": "192.0.2.10",
    "NIC_0_MODE": "bridged",
    "NIC_0_LINK": "br0",
    "NIC_0_FRONTEND_TYPE": "paravirtual",
    "NIC_0_NETWORK_SUBNET": "192.0.2.0/24",
    "NIC_0_NETWORK_GATEWAY": "192.0.2.1",
}


@dataclass(frozen=True)
class Interrupt:
    """Send ``signal`` once a progress message satisfies ``when``."""

    when: Callable[[dict], bool]
    signal: int = signal.SIGTERM


@dataclass
class Deployment:
    """What a case deploys: the OS parameters that matter to it, the disk, settings."""

    img_id: str
    img_format: str = "diskdump"
    properties: dict[str, str] = field(default_factory=dict)
    #: more OS parameters (lower-case names: img_personality, img_checksum, ...)
    osparams: dict[str, str] = field(default_factory=dict)
    disk_size: int = 64 * MiB
    settings: dict[str, str] = field(default_factory=dict)
    #: the progress monitor's script (``{out}``: the file of what it read)
    monitor: str = MONITOR
    interrupt: Interrupt | None = None


class Lab:
    """One case's world: ``root`` holds all of it, the canary included; :meth:`deploy` runs ``create``."""

    def __init__(self, root: Path, helper_dir: Path, use_hash: bool) -> None:
        self.root = root
        self.osdef = install(root / "inst")
        self.helper_dir = helper_dir
        self.work = root / "work"
        self.work.mkdir()
        self.disk = root / "disk.raw"
        self.canary = Canary.plant(root / "canary")
        self.use_hash = use_hash
        self.servers: list[ImageServer] = []
        config = json.dumps({"os_product_key": PRODUCT_KEY}).encode()
        self.config_url = self.secret_url(self.http({"/config.json": config}), "/config.json", CONFIG_TOKEN)
        self.output = root / "output"
        self.output.mkdir()
        self.last_run: Run | None = None

    @property
    def image_dir(self) -> Path:
        return self.osdef.image_dir

    def http(self, files: dict[str, bytes]) -> ImageServer:
        """A loopback HTTP server of this case (stopped with the lab)."""
        server = ImageServer(files).start()
        self.servers.append(server)
        return server

    @staticmethod
    def secret_url(server: ImageServer, path: str, token: str = IMAGE_TOKEN) -> str:
        """``path`` on ``server`` with credentials and a signed-URL token: secrets the run must never show."""
        url = server.url(path).replace("://", f"://{URL_USER}:{urllib.parse.quote(URL_PASSWORD)}@")
        return f"{url}?sig={token}"

    def linux_image(
        self, edit: Callable[[guest.Tree], None] | None = None, name: str = "guest.img", **disk: object
    ) -> guest.Disk:
        """The sane small guest, changed by ``edit``, in IMAGE_DIR."""
        tree = guest.linux_tree(self.work / f"tree-{name}")
        if edit is not None:
            edit(tree)
        return guest.make_disk(tree, self.image_dir / name, **disk)  # type: ignore[arg-type]

    def guest(self, partition: int = 1) -> guest.Guest:
        """The deployed root filesystem, read from outside."""
        return guest.Guest.of(self.disk, partition)

    def environment(self, d: Deployment) -> dict[str, str]:
        params = {
            "img_id": d.img_id,
            "img_format": d.img_format,
            "img_properties": json.dumps({"USERS": "root alice", **d.properties}),
            "auth_keys": AUTH_KEY,
            "cloud_userdata": base64.b64encode(USERDATA.encode()).decode(),
            "config_url": self.config_url,
            **({"img_passwd_hash": PASSWORD_HASH} if self.use_hash else {"img_passwd": PASSWORD}),
            **d.osparams,
        }
        env = create_env(INSTANCE, self.disk, **{f"OSP_{k.upper()}": v for k, v in params.items()})
        return {**env, **NIC}

    def deploy(self, d: Deployment) -> Run:
        """Run ``create`` on ``d`` to its end (interrupting it if asked) and collect what it showed and left."""
        with open(self.disk, "wb") as f:
            f.truncate(d.disk_size)
        monitor_out = self.output / "monitor.jsonl"
        monitor = self.root / "monitor"
        monitor.write_text(d.monitor.format(out=monitor_out))
        monitor.chmod(0o755)
        settings = {
            "HELPER_DIR": str(self.helper_dir),
            "HELPER_SOFT_TIMEOUT": "120",
            "IMAGE_DIR": str(self.image_dir),
            "PROGRESS_MONITOR": str(monitor),
        }
        self.osdef.configure(**{**settings, **d.settings})
        before = _files(self.root)
        watch = leftovers.Watch(marker=self.root, tmpdir=self.osdef.tmpdir)
        out, err = self.output / "stdout", self.output / "stderr"
        start = time.monotonic()
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = self.osdef.start("create", self.environment(d), stdout=stdout, stderr=stderr)
            with leftovers.ChildSampler(
                interval=0.2, exclude=(proc.pid,), exclude_cmdline="/usr/bin/python3 ./create"
            ) as sampler:
                if d.interrupt is not None:
                    _interrupt_when(proc, d.interrupt, monitor_out)
                proc.wait(timeout=600)
        seconds = time.monotonic() - start
        _, left = watch.wait_clean(10)
        children = {}
        for (pid, line), environ in sampler.seen.items():
            children[f"command line of {pid}"] = line
            children[f"environment of {pid} ({line[:60]})"] = environ
        made = {
            str(path): path.read_bytes().decode("utf-8", "replace")
            for path, stamp in _files(self.root).items()
            if before.get(path) != stamp and path not in (self.disk, out, err, monitor_out)
        }
        self.last_run = Run(
            returncode=proc.returncode,
            stdout=out.read_text(errors="replace"),
            stderr=err.read_text(errors="replace"),
            messages=_messages(monitor_out),
            seconds=seconds,
            leftovers=left,
            children=children,
            files=made,
        )
        return self.last_run

    def close(self) -> None:
        for server in self.servers:
            server.stop()


def _files(root: Path) -> dict[Path, tuple[int, int]]:
    """Regular files under ``root`` (links not followed) -> (size, mtime)."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            st = path.lstat()
            if path.is_file() and not path.is_symlink():
                found[path] = (st.st_size, st.st_mtime_ns)
    return found


def _messages(path: Path) -> list[dict]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            found.append({"type": "unparsable", "line": line})
    return found


def _interrupt_when(proc: subprocess.Popen, interrupt: Interrupt, monitor_out: Path) -> None:
    """Signal ``proc`` once a message satisfies the interrupt's condition (or let it end on its own)."""
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if any(interrupt.when(m) for m in _messages(monitor_out)):
            proc.send_signal(interrupt.signal)
            return
        time.sleep(0.1)
