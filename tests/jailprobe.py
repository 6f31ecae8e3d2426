"""A stand-in runner for the helper VM, injected into a test copy of the helper's code layer.

It follows the runner contract through tests/serialprobe.py: rules from the
disk found by serial, progress lines on /dev/ttyS2 and one result line on
/dev/ttyS1, power off. ``rules["probe"]`` picks a behaviour, good or hostile,
so the launcher's handling of each can be tested against the real VM.
"""

import hashlib
import json
import os
import time

import serialprobe


def main(ports: serialprobe.Ports) -> None:
    raw, rules = serialprobe.read_rules()
    probe = rules.get("probe")
    serialprobe.console(f"jailprobe: pid {os.getpid()}, probe {probe}, uptime {serialprobe.uptime()}")
    behave(probe, raw, rules, ports)


#: Result-port forgeries: what image code that reached the port might write, with or around the runner's line.
FORGERIES = {
    "forged": lambda ports: ports.result.write("SUCCESS\n"),
    "wrong_token": lambda ports: ports.result.write("SUCCESS " + "0" * 64 + "\n"),
    "forged_first": lambda ports: (ports.result.write("SUCCESS\n"), ports.succeed()),
    "success_then_forged": lambda ports: (ports.succeed(), ports.result.write("SUCCESS\n")),
    "twice": lambda ports: (ports.succeed(), ports.succeed()),
    "error_first": lambda ports: (ports.fail("planted"), ports.succeed()),
}


def behave(probe: str, raw: bytes, rules: dict, ports: serialprobe.Ports) -> None:
    """Act out one good or hostile behaviour on the result and progress ports."""
    if probe == "success":
        ports.say({"subtype": "task-start", "task": "Probe"})
        facts = {
            "rules_sha256": hashlib.sha256(raw).hexdigest(),
            "root_ro": os.statvfs("/").f_flag & os.ST_RDONLY != 0,
            "lib": sorted(os.listdir("/run/snf-image/lib")),
            "by_id": sorted(os.listdir("/dev/disk/by-id")),
            "pid": os.getpid(),
        }
        for serial in rules.get("write_disks", []):
            with open(serialprobe.find_disk(serial), "r+b") as f:
                f.write(f"written by jailprobe to {serial}\n".encode())
        ports.say({"subtype": "warning", "messages": [json.dumps(facts)]})
        ports.say({"subtype": "task-end", "task": "Probe"})
        ports.succeed()
    elif probe in FORGERIES:
        FORGERIES[probe](ports)
    elif probe == "error":
        ports.fail("the probe failed \x1b[31mon purpose\x07" + "x" * 2000)
    elif probe == "noresult":
        pass
    elif probe == "garbage":
        ports.progress.write(b"this is not json\n")
        ports.succeed()
    elif probe == "invalid":
        ports.say({"subtype": "task-start", "task": "../../etc"})
        ports.succeed()
    elif probe == "longline":
        ports.progress.write(b"{" + b" " * 10000 + b"}\n")
        ports.succeed()
    elif probe == "flood":
        for _ in range(100000):
            ports.say({"subtype": "task-start", "task": "Flood"})
        ports.succeed()
    elif probe == "hang":
        time.sleep(3600)
    elif probe == "chatter":  # valid progress lines, within the limits but far more than a pipe holds; then hang
        for n in range(400):
            ports.say({"subtype": "warning", "messages": [f"chatter {n} " + "x" * 2000]})
            time.sleep(0.01)
        time.sleep(3600)
    elif probe == "crash":
        serialprobe.console("jailprobe: exiting PID 1 on purpose")
        os._exit(1)


if __name__ == "__main__":
    serialprobe.run(main)
