"""The serial-console side of the test probes that run as PID 1 in the helper VM instead of helper.runner.

A probe (tests/jailprobe.py, tests/ufsprobe.py, tests/kernelprobe.py, the boot
benchmark's) is injected with this module into a test copy of the code layer
(tests/helpervm.py: probe_helper_dir) and follows the runner's contract: rules
from the disk with serial ``snf-rules``, progress lines on ttyS2, one result line
on ttyS1, power-off. It imports nothing of ``helper``, so a bug there cannot hide
itself in what a probe reports.

    import serialprobe

    def main(ports: serialprobe.Ports) -> None:
        ports.fact({"answer": 42})   # one progress "warning" holding a JSON object
        ports.succeed()

    serialprobe.run(main)
"""

import ctypes
import json
import os
import sys
import time
from collections.abc import Callable
from typing import NoReturn

RB_POWER_OFF = 0x4321FEDC
RESULT_PORT = "/dev/ttyS1"
PROGRESS_PORT = "/dev/ttyS2"
#: Pause after each fact: stays under the launcher's progress line rate limit.
FACT_GAP = 0.006


def find_disk(serial: str) -> str:
    """The /dev node of the virtio disk with ``serial``."""
    for name in sorted(os.listdir("/sys/block")):
        try:
            with open(f"/sys/block/{name}/serial") as f:
                if f.read().strip() == serial:
                    return f"/dev/{name}"
        except OSError:
            continue
    raise RuntimeError(f"no disk with serial {serial}")


def read_rules() -> tuple[bytes, dict]:
    """The rules disk's JSON: the raw bytes (NUL padding stripped) and the object."""
    with open(find_disk("snf-rules"), "rb") as f:
        raw = f.read().rstrip(b"\0")
    return raw, json.loads(raw)


def uptime() -> float:
    """Seconds since the guest kernel started."""
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def console(text: str) -> None:
    """One line on the console (ttyS0: the launcher logs it as ``HELPER: ...``)."""
    print(text, flush=True)


class Ports:
    """The result (text) and progress (binary) ports, open for the probe's lifetime."""

    def __init__(self) -> None:
        self.result = open(RESULT_PORT, "w")  # noqa: SIM115 - closed only by the power-off
        self.progress = open(PROGRESS_PORT, "wb", buffering=0)  # noqa: SIM115

    def say(self, message: dict) -> None:
        """One progress line, as given."""
        self.progress.write(json.dumps(message).encode() + b"\n")

    def fact(self, obj: dict) -> None:
        """A fact for the test: a progress warning whose one message is ``obj`` as JSON."""
        self.say({"subtype": "warning", "messages": [json.dumps(obj)]})
        time.sleep(FACT_GAP)

    def succeed(self) -> None:
        """SUCCESS with the rules' result token: the launcher accepts no other (helpervm.probe_rules)."""
        _, rules = read_rules()
        self.result.write(f"SUCCESS {rules.get('result_token', '')}\n")
        self.result.flush()

    def fail(self, reason: str) -> None:
        self.result.write(f"ERROR: {reason}\n")
        self.result.flush()


def power_off() -> NoReturn:
    """Flush and power the VM off; PID 1 must never return."""
    os.sync()
    ctypes.CDLL(None, use_errno=True).reboot(RB_POWER_OFF)
    time.sleep(60)
    os._exit(1)


def run(main: Callable[[Ports], None]) -> NoReturn:
    """Run ``main`` with the ports open; any exception becomes an ERROR result; always power off."""
    ports = None
    try:
        ports = Ports()
        main(ports)
    except BaseException as exc:
        print(f"probe: {exc!r}", file=sys.stderr, flush=True)
        if ports is not None:
            ports.fail(f"probe: {exc!r}")
    power_off()
