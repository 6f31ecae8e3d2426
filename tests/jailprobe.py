"""A stand-in runner for the helper VM, injected into a test copy of the helper's code layer.

It follows the runner contract (see snf_image/jail.py): read the rules disk
found by serial, write progress lines on /dev/ttyS2 and one result line on
/dev/ttyS1, power off. ``rules["probe"]`` picks a behaviour, good or hostile,
so the launcher's handling of each can be tested against the real VM.
"""

import ctypes
import hashlib
import json
import os
import sys
import time

RB_POWER_OFF = 0x4321FEDC


def find_disk(serial: str) -> str:
    for name in sorted(os.listdir("/sys/block")):
        try:
            with open(f"/sys/block/{name}/serial") as f:
                if f.read().strip() == serial:
                    return f"/dev/{name}"
        except OSError:
            continue
    raise RuntimeError(f"no disk with serial {serial}")


def read_rules() -> tuple[bytes, dict]:
    with open(find_disk("snf-rules"), "rb") as f:
        raw = f.read().rstrip(b"\0")
    return raw, json.loads(raw)


def poweroff() -> None:
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(RB_POWER_OFF)
    time.sleep(60)


def main() -> None:
    raw, rules = read_rules()
    probe = rules.get("probe")
    with open("/proc/uptime") as f:
        uptime = f.read().split()[0]
    print(f"jailprobe: pid {os.getpid()}, probe {probe}, uptime {uptime}", flush=True)
    with open("/dev/ttyS1", "w") as result, open("/dev/ttyS2", "wb", buffering=0) as progress:
        behave(probe, raw, rules, result, progress)
    poweroff()


def behave(probe: str, raw: bytes, rules: dict, result, progress) -> None:
    """Act out one good or hostile behaviour on the result and progress ports."""

    def say(obj: dict) -> None:
        progress.write(json.dumps(obj).encode() + b"\n")

    if probe == "success":
        say({"subtype": "task-start", "task": "Probe"})
        facts = {
            "rules_sha256": hashlib.sha256(raw).hexdigest(),
            "root_ro": os.statvfs("/").f_flag & os.ST_RDONLY != 0,
            "lib": sorted(os.listdir("/run/snf-image/lib")),
            "by_id": sorted(os.listdir("/dev/disk/by-id")),
            "pid": os.getpid(),
        }
        for serial in rules.get("write_disks", []):
            with open(find_disk(serial), "r+b") as f:
                f.write(f"written by jailprobe to {serial}\n".encode())
        say({"subtype": "warning", "messages": [json.dumps(facts)]})
        say({"subtype": "task-end", "task": "Probe"})
        result.write("SUCCESS\n")
    elif probe == "error":
        result.write("ERROR: the probe failed \x1b[31mon purpose\x07" + "x" * 2000 + "\n")
    elif probe == "noresult":
        pass
    elif probe == "garbage":
        progress.write(b"this is not json\n")
        result.write("SUCCESS\n")
    elif probe == "invalid":
        say({"subtype": "task-start", "task": "../../etc"})
        result.write("SUCCESS\n")
    elif probe == "longline":
        progress.write(b"{" + b" " * 10000 + b"}\n")
        result.write("SUCCESS\n")
    elif probe == "flood":
        for _ in range(100000):
            say({"subtype": "task-start", "task": "Flood"})
        result.write("SUCCESS\n")
    elif probe == "hang":
        result.flush()
        time.sleep(3600)
    elif probe == "chatter":  # valid progress lines, within the limits but far more than a pipe holds; then hang
        for n in range(400):
            say({"subtype": "warning", "messages": [f"chatter {n} " + "x" * 2000]})
            time.sleep(0.01)
        time.sleep(3600)
    elif probe == "crash":
        raise SystemExit("jailprobe: exiting PID 1 on purpose")
    result.flush()


if __name__ == "__main__":
    try:
        main()
    except SystemExit as exc:
        print(exc, file=sys.stderr, flush=True)
        raise
