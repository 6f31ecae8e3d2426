"""The qemu command line of the helper VM, built without any I/O (unit-tested as a pure function).

The VM (qemu, direct kernel boot, ``-nodefaults -nic none``, ``-runas``,
``-sandbox``) gets these virtio-blk disks, found in the guest by serial:

* ``snf-helper-root``  HELPER_DIR/image, read-only
* ``snf-rules``        the rules JSON (UTF-8) padded with NULs to 512 bytes, read-only (a memfd)
* ``snf-disk<N>``      instance disk N (Ganeti index), read-write unless told otherwise

and four serial ports: ttyS0 console, ttyS1 result, ttyS2 progress (JSON
lines), ttyS3 debug shell (only with debug). The rules disk and the first three
ports are file descriptors qemu inherits (``-add-fd``), never paths.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from snf_image.contract import constants
from snf_image.errors import HelperError
from snf_image.targets import USERSPACE_SCHEMES

from .config import DEFAULT_RUNNER, Channels, HelperConfig, JailDisk, PassedFd

#: Disk URIs passed to qemu as they are (the copy opens the same); anything else must be an absolute path.
URI_SCHEMES = USERSPACE_SCHEMES


def _escape(value: str) -> str:
    """Escape a value for qemu's comma-separated option syntax."""
    return value.replace(",", ",,")


def is_uri(path_or_uri: str) -> bool:
    """True if this disk is a qemu URI (passed as is), False for a local absolute path."""
    if path_or_uri.startswith("/"):
        return False
    scheme = re.match(r"([a-z][a-z0-9+.-]*):", path_or_uri)
    if scheme and scheme.group(1) in URI_SCHEMES:
        return True
    raise HelperError(
        f"unsupported disk {path_or_uri[:200]!r}: expected an absolute path or a {'/'.join(URI_SCHEMES)} URI"
    )


def _drive(drive_id: str, source: str, block_device: bool, readonly: bool, cache: str) -> str:
    """A -drive value with the format and protocol always explicit: qemu never guesses."""
    if is_uri(source):
        where = f"file={_escape(source)}"
    else:
        protocol = "host_device" if block_device else "file"
        where = f"file.driver={protocol},file.filename={_escape(source)}"
    opts = [f"if=none,id={drive_id},format=raw,{where},cache={cache}"]
    if readonly:
        opts.append("readonly=on")
    return ",".join(opts)


def kernel_cmdline(debug: bool = False, runner: str = DEFAULT_RUNNER, probe: bool = False) -> str:
    """The helper kernel's command line.

    panic=-1 with qemu's -no-reboot ends the VM at once if PID 1 dies. The rest
    shortens the boot under TCG (measured with benchmarks/helper_boot.py):
    random.trust_cpu=on seeds the kernel's RNG from RDRAND at once (without it
    the first read of /dev/urandom -- Python's start -- waits ~1 s for jitter
    entropy); acpi=noirq routes the PCI interrupts without evaluating ACPI link
    objects (~80 ms per virtio disk); no crypto self-tests, no timer/TSC checks,
    no audit, only the four UARTs we have. The probe keeps the kernel's messages:
    a silent console is how it tells a hung kernel.
    """
    words = [
        "console=ttyS0",
        "ro",
        "panic=-1",
        "random.trust_cpu=on",
        "acpi=noirq",
        "cryptomgr.notests",
        "tsc=reliable",
        "no_timer_check",
        "audit=0",
        "8250.nr_uarts=4",
    ]
    if probe:
        words.append("snf_image_probe")
        return " ".join(words)
    words.insert(1, "quiet")
    words.append(constants.CMDLINE_ACTIVATE)
    if debug:
        words.append(constants.CMDLINE_DEBUG)
    if runner != DEFAULT_RUNNER:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", runner):
            raise HelperError(f"invalid helper runner module {runner!r}")
        words.append(f"snf_image_runner={runner}")
    return " ".join(words)


def build_qemu_command(
    config: HelperConfig,
    accel: str,
    disks: Sequence[JailDisk],
    rules: PassedFd | None,
    channels: Channels,
    *,
    sandbox: bool = True,
    block_devices: frozenset[str] = frozenset(),
    probe: bool = False,
) -> list[str]:
    """The qemu argument list for one helper run (pure: no I/O, unit-tested).

    ``rules`` is the rules disk's descriptor. ``block_devices`` names the local disk paths that
    are block devices (they need qemu's host_device protocol). ``probe`` builds the KVM probe
    boot (no disks).
    """
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accelerator must be kvm or tcg, not {accel!r}")
    helper_dir = Path(config.helper_dir)
    cmd = [
        config.qemu,
        "-nodefaults",
        "-nic",
        "none",
        "-display",
        "none",
        "-vga",
        "none",
        "-monitor",
        "none",
        "-parallel",
        "none",
        "-no-user-config",
        "-no-reboot",
        "-machine",
        f"pc,accel={accel}",
        "-smp",
        "1",
        "-m",
        str(int(config.memory_mib)),
    ]
    # RDRAND seeds the guest kernel's RNG at once (random.trust_cpu=on); TCG's default
    # model lacks it, and KVM's host model has it wherever the CPU does.
    cmd += ["-cpu", "host" if accel == "kvm" else "qemu64,+rdrand"]
    if sandbox:
        # qemu installs its seccomp filter before -runas drops root, so set*uid must stay
        # allowed when it does (nobody cannot regain root anyway); without -runas, deny it.
        elevate = "allow" if config.user else "deny"
        cmd += ["-sandbox", f"on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny"]
    if config.user:
        cmd += ["-runas", config.user]
    cmd += [
        "-kernel",
        str(helper_dir / "kernel"),
        "-initrd",
        str(helper_dir / "initrd"),
        "-append",
        kernel_cmdline(config.debug, config.runner, probe=probe),
    ]
    passed = [channels.console, channels.result, channels.progress]
    if rules is not None and not probe:
        passed.append(rules)
    for fd in passed:
        cmd += ["-add-fd", f"fd={int(fd.fd)},set={int(fd.fdset)},opaque={fd.opaque}"]
    # Serial ports, in guest order ttyS0..ttyS3; append=on: a pipe cannot be truncated.
    for port in (channels.console, channels.result, channels.progress):
        cmd += ["-chardev", f"file,id={port.opaque},path={port.path},append=on", "-serial", f"chardev:{port.opaque}"]
    if config.debug and channels.debug is not None and not probe:
        cmd += [
            "-chardev",
            f"socket,id=debug,path={_escape(str(channels.debug))},server=on,wait=off",
            "-serial",
            "chardev:debug",
        ]
    if probe:
        return cmd

    def blk(drive_id: str, drive: str, serial: str) -> list[str]:
        return ["-drive", drive, "-device", f"virtio-blk-pci,drive={drive_id},serial={serial}"]

    cmd += blk(
        "helper-root",
        _drive("helper-root", str(helper_dir / "image"), False, True, "writeback"),
        constants.SERIAL_HELPER_ROOT,
    )
    if rules is not None:
        cmd += blk("rules", _drive("rules", rules.path, False, True, "writeback"), constants.SERIAL_RULES)
    for disk in disks:
        drive_id = f"disk{int(disk.index)}"
        drive = _drive(drive_id, disk.path_or_uri, disk.path_or_uri in block_devices, disk.readonly, "writeback")
        cmd += blk(drive_id, drive, f"{constants.SERIAL_DISK_PREFIX}{int(disk.index)}")
    return cmd
