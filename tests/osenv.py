"""Run the real OS entry scripts the way Ganeti does: reset environment, its PATH, umask 0077,
cwd = the OS directory reached through a symlink, Debian's /usr/bin/python3."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GANETI_PATH = "/sbin:/bin:/usr/sbin:/usr/bin"


@dataclass
class OsDefinition:
    """A symlinked OS directory plus relocated settings, as a test installation."""

    root: Path

    @property
    def os_dir(self) -> Path:
        return self.root / "os" / "snf-image"

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def variants_dir(self) -> Path:
        return self.root / "variants"

    @property
    def image_dir(self) -> Path:
        return self.root / "images"

    @property
    def tmpdir(self) -> Path:
        """The scripts' TMPDIR, so a test can check that a run left no temporary file behind."""
        return self.root / "tmp"

    def configure(self, **settings: str) -> None:
        # the installation's own helper slots: tests of other checkouts on this machine do not queue with its VMs
        private = {"IMAGE_DIR": str(self.image_dir), "HELPER_SLOTS_DIR": str(self.root / "helper-slots")}
        lines = [f'{key}="{value}"' for key, value in {**private, **settings}.items()]
        (self.config_dir / "snf-image.conf").write_text("\n".join(lines) + "\n")

    def script_env(self, env: dict[str, str]) -> dict[str, str]:
        """The whole environment a script gets: Ganeti's PATH, our settings, a TMPDIR of its own, ``env``."""
        return {
            "PATH": GANETI_PATH,
            "SNF_IMAGE_CONFIG_DIR": str(self.config_dir),
            "SNF_IMAGE_VARIANTS_DIR": str(self.variants_dir),
            "TMPDIR": str(self.tmpdir),
            **env,
        }

    def run(
        self, script: str, env: dict[str, str], *args: str, stdin: bytes = b"", pass_fds=()
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["./" + script, *args],
            cwd=self.os_dir,
            env=self.script_env(env),
            input=stdin,
            capture_output=True,
            umask=0o077,
            pass_fds=pass_fds,
            timeout=600,
        )

    def start(self, script: str, env: dict[str, str], *args: str, **popen) -> subprocess.Popen:
        """The script started as :meth:`run` runs it, without waiting (a test may signal it)."""
        return subprocess.Popen(["./" + script, *args], cwd=self.os_dir, env=self.script_env(env), umask=0o077, **popen)


def install(root: Path, repo: Path = REPO) -> OsDefinition:
    """Symlink the repository (or another checkout: benchmarks) as an OS definition; settings under ``root``."""
    definition = OsDefinition(root)
    definition.os_dir.parent.mkdir(parents=True)
    os.symlink(repo, definition.os_dir)
    for path in (definition.config_dir, definition.variants_dir, definition.image_dir, definition.tmpdir):
        path.mkdir()
    (definition.variants_dir / "default.conf").write_text("# default variant\n")
    definition.configure()
    return definition


def create_env(name: str, disk: Path | str, **extra: str) -> dict[str, str]:
    """The environment Ganeti gives create for one file disk and no NIC (as observed)."""
    return {
        "OS_API_VERSION": "20",
        "OS_NAME": "snf-image",
        "OS_VARIANT": "default",
        "DEBUG_LEVEL": "0",
        "INSTANCE_NAME": name,
        "INSTANCE_OS": "snf-image+default",
        "HYPERVISOR": "kvm",
        "DISK_COUNT": "1",
        "DISK_0_PATH": str(disk),
        "DISK_0_ACCESS": "rw",
        "DISK_0_BACKEND_TYPE": "file:loop",
        "DISK_0_FRONTEND_TYPE": "paravirtual",
        "NIC_COUNT": "0",
        **extra,
    }


def monitor_messages(stderr: bytes) -> list[dict]:
    """The progress messages a create without PROGRESS_MONITOR wrote to its log."""
    import json

    prefix = "[MONITOR] "
    return [json.loads(line[len(prefix) :]) for line in stderr.decode().splitlines() if line.startswith(prefix)]


def task_seconds(messages: list[dict]) -> dict[str, float]:
    """How long each task took, from the timestamps of its task-start and task-end messages."""
    started: dict[str, float] = {}
    took: dict[str, float] = {}
    for m in messages:
        if m["type"] == "image-helper" and m.get("subtype") == "task-start":
            started[m["task"]] = m["timestamp"]
        elif m["type"] == "image-helper" and m.get("subtype") == "task-end" and m["task"] in started:
            took[m["task"]] = m["timestamp"] - started[m["task"]]
    return took


def public_key_of(private: str, workdir: Path) -> list[str]:
    """(algorithm, base64) of the public half of an OpenSSH private key, as ssh-keygen derives it."""
    saved = workdir / "derive-key"
    saved.write_text(private)
    saved.chmod(0o600)
    try:
        derived = subprocess.run(["ssh-keygen", "-y", "-f", saved], capture_output=True, text=True, check=True)
    finally:
        saved.unlink()
    return derived.stdout.split()[:2]


def task_events(messages: list[dict]) -> list[tuple[str, str]]:
    """(subtype, task) of every task-start/task-end, in order."""
    return [
        (m["subtype"], m["task"])
        for m in messages
        if m["type"] == "image-helper" and m["subtype"] in ("task-start", "task-end")
    ]
