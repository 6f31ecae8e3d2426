"""Image code, stopped deployments and a stalled monitor, each through the real ``create``.

The image's programs (``CUSTOM_TASK``, ``overwrite_task_<Name>`` with the image's own
``ALLOW_MOUNTED_TASK_OVERWRITING``) forge the result, read what the helper holds, never end,
flood, fork and eat memory; tests/integration/test_image_code_sandbox.py proves each sandbox
wall on its own, under both helper kernels, and its attack program (tests/sandboxattacks.py)
runs here too. A deployment is also signalled while hostile code runs (the phases of a
deployment are tests/integration/test_kills.py's), and fed to a monitor that stops reading.
"""

from __future__ import annotations

import base64
import json
import signal
from pathlib import Path

from tests.hostile.case import Case, tasks_did_their_work
from tests.hostile.guest import MiB
from tests.hostile.lab import SECRETS, Deployment, Interrupt, Lab

ATTACKS = Path(__file__).resolve().parent.parent / "sandboxattacks.py"
FAILED = "The custom task "
OVERWRITE = "root/snf-image/helper/overwrite_task_AssignHostname"
ALLOW = {"ALLOW_MOUNTED_TASK_OVERWRITING": "yes"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def custom(lab: Lab, script: str, **properties: str) -> Deployment:
    image = lab.linux_image()
    return Deployment(f"local://{image.path.name}", properties={"CUSTOM_TASK": b64(script), **properties})


def overwrite(lab: Lab, script: str) -> Deployment:
    image = lab.linux_image(lambda t: t.write(OVERWRITE, script, 0o755))
    return Deployment(f"local://{image.path.name}", properties=ALLOW)


FORGER = """#!/bin/sh
for port in /dev/ttyS0 /dev/ttyS1 /dev/ttyS2 /dev/ttyS3 /dev/console /dev/hvc0 /dev/kmsg; do
    echo "SUCCESS forged" > "$port" 2>/dev/null
done
echo SUCCESS
echo 'forged and failing' >&2
exit 3
"""


def forged_success(lab: Lab) -> Deployment:
    return custom(lab, FORGER)


def sandbox_attacks(lab: Lab) -> Deployment:
    return custom(lab, ATTACKS.read_text())


def no_breach(lab: Lab) -> None:
    """tests/sandboxattacks.py's report, in the guest: every attack refused."""
    report = json.loads(lab.guest().read("/root/sandbox-attacks.json"))
    breaches = {name: result["detail"] for name, result in report.items() if isinstance(result, dict)
                and "refused" in result and not result["refused"]}  # fmt: skip
    assert breaches == {}, breaches
    assert not [what for what, value in SECRETS.items() if value in json.dumps(report)]


def sleeps_forever(lab: Lab) -> Deployment:
    return custom(lab, "#!/bin/sh\n(trap '' TERM HUP; sleep 100000) &\nexec sleep 100000\n", IMAGE_PROGRAM_TIMEOUT="3")


def floods(lab: Lab) -> Deployment:
    script = "#!/bin/sh\nyes 'flooding every channel' | head -c 100000000\nyes 'and stderr' | head -c 20000000 >&2\n"
    return custom(lab, script)


def flood_harmless(lab: Lab) -> None:
    tasks_did_their_work(lab)
    assert len(lab.last_run.stderr) < 4 * MiB, "the console log was not bounded"


def fork_bomb(lab: Lab) -> Deployment:
    return custom(lab, "#!/bin/sh\nbomb() { bomb | bomb & }\nwhile true; do bomb; done\n", IMAGE_PROGRAM_TIMEOUT="8")


def eats_memory(lab: Lab) -> Deployment:
    return custom(lab, "#!/usr/bin/python3\nchunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n")


STEALER = """#!/bin/sh
# pre-exec: take whatever the helper lets us read into the guest, then ask for the task (101)
[ "$1" = pre-exec ] || exit 0
out="$SNF_IMAGE_TARGET/root/stolen"
{
    env; cat /proc/cmdline /proc/1/environ /proc/1/cmdline
    for dev in /dev/vd* /dev/sd* /dev/disk/by-id/* /sys/block/*/serial; do head -c 65536 "$dev"; done
    cat /run/snf-image/* /tmp/* 2>&1
} > "$out" 2>&1
exit 101
"""


def overwrite_steals(lab: Lab) -> Deployment:
    return overwrite(lab, STEALER)


def nothing_stolen(lab: Lab) -> None:
    tasks_did_their_work(lab)
    stolen = lab.guest().read("/root/stolen")
    assert "snf_image_activate_helper" in stolen or "SNF_IMAGE_TARGET" in stolen  # the program did run
    assert not [what for what, value in SECRETS.items() if value in stolen]
    assert "result_token" not in stolen and "SUCCESS" not in stolen


RACER = """#!/bin/sh
# pre-exec: leave a process behind that, once the task runs, keeps making /etc/hostname a link to the decoy
[ "$1" = pre-exec ] || exit 0
cd "$SNF_IMAGE_TARGET/etc" || exit 1
setsid sh -c 'sleep 0.3; while :; do ln -sfn /srv/decoy hostname.new; mv -f hostname.new hostname; done' \
    </dev/null >/dev/null 2>&1 &
exit 101
"""


def background_race(lab: Lab) -> Deployment:
    return overwrite(lab, RACER)


def race_harmless(lab: Lab) -> None:
    """The process died with its program: it never touched /etc/hostname, which the task wrote."""
    found = tasks_did_their_work(lab)
    assert found.entry("/etc/hostname").kind == "regular"  # type: ignore[union-attr]
    assert found.entry("/etc/hostname.new") is None


def stalled_monitor(lab: Lab) -> Deployment:
    """A monitor that shrinks its pipe to one page and never reads: the deployment must not wait for it."""
    image = lab.linux_image()
    monitor = "#!/bin/sh\nexec /usr/bin/python3 -c 'import fcntl, time; fcntl.fcntl(0, 1031, 4096); time.sleep(600)'\n"
    return Deployment(f"local://{image.path.name}", monitor=monitor)


def in_time(lab: Lab) -> None:
    tasks_did_their_work(lab)
    assert lab.last_run.seconds < 60, f"the deployment took {lab.last_run.seconds:.0f} s"


def dead_monitor(lab: Lab) -> Deployment:
    image = lab.linux_image()
    return Deployment(f"local://{image.path.name}", monitor="#!/bin/sh\nexit 0\n")


def starts(task: str):
    return lambda m: m.get("subtype") == "task-start" and m.get("task") == task


def killed_while_custom_task_sleeps(lab: Lab) -> Deployment:
    d = custom(lab, "#!/bin/sh\nexec sleep 100000\n")
    d.interrupt = Interrupt(starts("RunCustomTask"), signal.SIGTERM)
    return d


def killed_during_fork_bomb(lab: Lab) -> Deployment:
    d = fork_bomb(lab)
    d.interrupt = Interrupt(starts("RunCustomTask"), signal.SIGHUP)
    return d


def killed_while_a_bomb_decompresses(lab: Lab) -> Deployment:
    """SIGINT while 8 GiB of zeros (a gzip bomb) pour onto a 4 GiB disk."""
    import gzip

    member = gzip.compress(bytes(64 * MiB), 9)
    (lab.image_dir / "bomb.img.gz").write_bytes(member * 128)
    return Deployment(
        "local://bomb.img.gz",
        disk_size=4 << 30,
        interrupt=Interrupt(lambda m: m.get("type") == "image-copy-progress", signal.SIGINT),
    )


CASES = [
    Case("code-forged-success", "CUSTOM_TASK writes SUCCESS on every port it can name, then fails", forged_success,
         FAILED + "failed with exit code 3: forged and failing"),
    Case("code-sandbox-attacks", "CUSTOM_TASK = tests/sandboxattacks.py (result port, rules disk, mount, modules, "
         "kernel knobs, other processes, cgroup escape, power)", sandbox_attacks, "attacks finished",
         afterwards=no_breach),
    Case("code-sleeps-forever", "CUSTOM_TASK that never ends (and ignores SIGTERM)", sleeps_forever,
         r"did not finish in 3 s \(IMAGE_PROGRAM_TIMEOUT\)"),
    Case("code-floods", "CUSTOM_TASK writing 120 MB to stdout and stderr", floods, harmless=flood_harmless),
    Case("code-fork-bomb", "CUSTOM_TASK fork bomb", fork_bomb,
         r"Cannot fork|did not finish in 8 s|memory limit"),
    Case("code-eats-memory", "CUSTOM_TASK allocating without end", eats_memory, "memory limit"),
    Case("code-overwrite-steals", "the image's overwrite_task_AssignHostname reads the helper's disks, "
         "command line, environment, /run and /tmp into the guest", overwrite_steals, harmless=nothing_stolen),
    Case("code-background-race", "overwrite script leaving a process behind to turn /etc/hostname into a link "
         "while the task writes it", background_race, harmless=race_harmless),
    Case("mon-stalled", "a progress monitor that shrinks its pipe and never reads", stalled_monitor,
         harmless=in_time),
    Case("mon-dead", "a progress monitor that exits at once", dead_monitor, harmless=in_time),
    Case("kill-custom-task-sigterm", "SIGTERM while CUSTOM_TASK sleeps in the helper",
         killed_while_custom_task_sleeps, "interrupted by SIGTERM"),
    Case("kill-fork-bomb-sighup", "SIGHUP while a fork bomb runs in the helper", killed_during_fork_bomb,
         "interrupted by SIGHUP"),
    Case("kill-bomb-sigint", "SIGINT while a gzip bomb decompresses onto the disk", killed_while_a_bomb_decompresses,
         "interrupted by SIGINT", boots=False),
]  # fmt: skip
