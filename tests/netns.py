"""Run a test scenario in private network and mount namespaces, where a public address lives on loopback.

The redirect policy treats public and private addresses differently, and a
test must exercise it on real connections without reaching the Internet. In
a fresh network namespace nothing is routed anywhere, so the loopback
interface can carry a globally routed address (:data:`PUBLIC_V4`); servers
bind it, the code under test connects to it and sees a public peer. A
private mount namespace lets the scenario give names to addresses with its
own ``/etc/hosts`` (bind-mounted over the real one) and change them while it
runs, which is how DNS rebinding looks to a client.

    result = run_isolated(f"{__name__}:scenario", {"images.example": [PUBLIC_V4]}, tmp_path, arg=1)

runs ``scenario(arg=1)`` in the namespaces (a child ``/usr/bin/python3``)
and returns what it returned (anything JSON can carry).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: A globally routed address (is_global), harmless inside a namespace that has no route out.
PUBLIC_V4 = "93.184.216.34"
_BASE_HOSTS = {"localhost": ["127.0.0.1", "::1"]}


def hosts_text(hosts: dict[str, list[str]]) -> str:
    """``/etc/hosts`` lines giving each name its addresses (glibc returns them all with ``multi on``)."""
    lines = [f"{address} {name}" for name, addresses in {**_BASE_HOSTS, **hosts}.items() for address in addresses]
    return "\n".join(lines) + "\n"


def set_hosts(hosts: dict[str, list[str]]) -> None:
    """Inside a scenario: rename addresses from now on (rewrites the bind-mounted file in place)."""
    with open("/etc/hosts", "w") as fh:
        fh.write(hosts_text(hosts))


def run_isolated(function: str, hosts: dict[str, list[str]], tmp: Path, timeout: float = 30, **kwargs: Any) -> Any:
    """Run ``function`` (``module:name``) with ``kwargs`` in new network + mount namespaces; return its result."""
    spec = {"function": function, "hosts": hosts, "hosts_file": str(tmp / "hosts"), "kwargs": kwargs}
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp)}
    proc = subprocess.run(
        ["unshare", "--net", "--mount", "--", "/usr/bin/python3", "-m", "tests.netns", json.dumps(spec)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AssertionError(f"scenario {function} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(spec: dict[str, Any]) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", f"{PUBLIC_V4}/32", "dev", "lo"], check=True)
    hosts_file = Path(spec["hosts_file"])
    hosts_file.write_text(hosts_text(spec["hosts"]))
    subprocess.run(["mount", "--bind", str(hosts_file), "/etc/hosts"], check=True)
    module, _, name = spec["function"].partition(":")
    result = getattr(importlib.import_module(module), name)(**spec["kwargs"])
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    if os.getuid() != 0:
        raise SystemExit("tests.netns needs root (network and mount namespaces)")
    _child(json.loads(sys.argv[1]))
