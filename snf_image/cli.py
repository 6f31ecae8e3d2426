"""The ``snf-image`` command: Ganeti's create pipeline from a plain command line, and the helper VM image.

``snf-image deploy`` builds the Ganeti-style environment itself (one disk,
optional NICs) and runs exactly what the ``create`` script runs. On a
terminal it draws a live progress bar; otherwise it prints plain lines.
``snf-image helper build`` builds the helper VM image, ``snf-image helper
probe`` probes KVM again for the node, ``snf-image helper status`` says
whether the helper image matches the installed code, and ``snf-image verify``
checks parameters the way Ganeti's ``verify`` does. Secrets never go on the
command line (every user of the node can read it): the password and its hash
come from a file or standard input. Ctrl-C (or SIGTERM, SIGHUP) stops a
deployment after everything it started is stopped and removed.

Help texts are plain text: argparse prints them as they are.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import IO, Any

from . import __version__, deploy, helperimage, osstatus, summary, tempdirs
from .contract.constants import (
    HELPER_TASK_END,
    HELPER_TASK_START,
    IMAGE_FORMATS,
    MSG_COPY_PROGRESS,
    MSG_ERROR,
    MSG_HELPER,
)
from .errors import OperatorError, SnfImageError
from .ganeti import parse_environment
from .helperimage.kernel import DEFAULT_KERNEL, KERNEL_FLAVOURS
from .lifecycle import Interrupted, termination_raises
from .oscripts import setup_logging
from .progress import Progress
from .settings import DEFAULT_CONFIG_DIR, DEFAULT_VARIANTS_DIR, load_settings

log = logging.getLogger("snf-image")

DESCRIPTION = "Deploy VM images onto disks and customize them inside a throw-away helper VM."
EPILOG = """examples:
  snf-image deploy --disk /var/tmp/disk.raw --image ./debian.img --format diskdump --hostname web1
  snf-image deploy --disk /dev/vg/web1 --image https://images.example/debian.img.xz --format diskdump
  snf-image helper build
  snf-image helper status

Settings come from /etc/snf-image/snf-image.conf (see snf-image(8))."""
#: Image ids that are not file paths: those with a scheme, and the null source.
NULL_IMAGE = "null"


class TerminalDisplay:
    """Renders progress messages for a person: a bar on a terminal, plain lines elsewhere."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.live = out.isatty()
        self._bar_shown = False

    def __call__(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == MSG_ERROR:
            return  # main() prints the error itself, once
        if kind == MSG_COPY_PROGRESS:
            self._copy(message)
            return
        self._end_bar()
        if kind == MSG_HELPER:
            subtype = message["subtype"]
            if subtype == HELPER_TASK_START:
                text = f"  task {message['task']} ..."
            elif subtype == HELPER_TASK_END:
                text = f"  task {message['task']} done"
            else:
                text = f"  {subtype}: " + " ".join(message.get("messages", [message.get("stderr", "")]))
        else:
            text = " ".join(message.get("messages", []))
        print(text, file=self.out, flush=True)

    def _copy(self, message: dict[str, Any]) -> None:
        position, total = message["position"], message["total"]
        mib = position / (1 << 20)
        if not self.live:
            print(f"  copied {mib:.1f} MiB ({message['progress']:.1f}%)", file=self.out, flush=True)
            return
        width = 40
        filled = int(width * min(position / total, 1)) if total else 0
        bar = "#" * filled + "-" * (width - filled)
        self.out.write(f"\r  [{bar}] {message['progress']:6.2f}%  {mib:,.1f} MiB")
        self.out.flush()
        self._bar_shown = True

    def _end_bar(self) -> None:
        if self._bar_shown:
            self.out.write("\n")
            self._bar_shown = False


def read_secret(path: str | None, option: str) -> str | None:
    """A secret from a file, or from standard input for ``-``: its first line, never the command line."""
    if path is None:
        return None
    try:
        if path == "-":
            text = sys.stdin.readline()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.readline()
    except OSError as exc:
        raise OperatorError(f"{option}: cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise OperatorError(f"{option}: {path} is not UTF-8 text") from None
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise OperatorError(f"{option}: {'standard input' if path == '-' else path} holds no secret on its first line")
    return secret


def _load_personality(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text("utf-8")
    except OSError as exc:
        raise OperatorError(f"--personality: cannot read {path}: {exc.strerror}") from exc


def deploy_environment(args: argparse.Namespace) -> dict[str, str]:
    """The Ganeti environment a create of this deployment would get."""
    env = {
        "OS_API_VERSION": "20",
        "OS_NAME": "snf-image",
        "OS_VARIANT": args.variant or "",
        "INSTANCE_NAME": args.hostname,
        "HYPERVISOR": "kvm",
        "DISK_COUNT": str(1 + len(args.extra_disk)),
        "DISK_0_PATH": args.disk,
        "DISK_0_ACCESS": "rw",
        "NIC_COUNT": str(len(args.nic)),
    }
    for index, disk in enumerate(args.extra_disk, start=1):
        env[f"DISK_{index}_PATH"] = disk
    for index, spec in enumerate(args.nic):
        for item in spec.split(","):
            key, sep, value = item.partition("=")
            if not sep or key not in ("mac", "ip", "subnet", "gateway", "subnet6", "gateway6", "tags", "link", "mode"):
                raise OperatorError(
                    f"--nic: expected key=value with mac, ip, subnet, gateway, subnet6, ...; got {item!r}"
                )
            prefix = "NETWORK_" if key in ("subnet", "gateway", "subnet6", "gateway6", "tags") else ""
            env[f"NIC_{index}_{prefix}{key.upper()}"] = value.replace("+", " ") if key == "tags" else value
    params = {
        "IMG_ID": args.image,
        "IMG_FORMAT": args.format,
        "IMG_PASSWD": read_secret(args.password_file, "--password-file"),
        "IMG_PASSWD_HASH": read_secret(args.password_hash_file, "--password-hash-file"),
        "IMG_PROPERTIES": args.properties,
        "IMG_PERSONALITY": _load_personality(args.personality),
        "IMG_CHECKSUM": args.checksum,
        "AUTH_KEYS": args.auth_keys.read_text("utf-8") if args.auth_keys else None,
    }
    env.update({f"OSP_{k}": v for k, v in params.items() if v is not None})
    return env


def image_file(value: str) -> Path | None:
    """The file ``--image`` names, or None when it is an image id (a scheme, or ``null``).

    The person running the command chose the file, so any path is fine; Ganeti's
    img_id, by contrast, only ever reaches files inside IMAGE_DIR.
    """
    if "://" in value or value == NULL_IMAGE:
        return None
    path = Path(value).resolve()
    if not path.is_file():
        raise OperatorError(
            f"--image: no such image file: {value} (an image id needs a scheme: local://, https://, ...)"
        )
    return path


def cmd_deploy(args: argparse.Namespace) -> int:
    if args.password is not None or args.password_hash is not None:
        raise OperatorError(
            "--password and --password-hash are refused: a command line is readable by every user of the node; "
            "use --password-file FILE or --password-file - (standard input), or --password-hash-file"
        )
    if args.password_file == "-" and args.password_hash_file == "-":
        raise OperatorError("--password-file - and --password-hash-file -: only one can read standard input")
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise OperatorError(f"--set: expected KEY=VALUE, got {item!r}")
        overrides[key] = value
    path = image_file(args.image)
    if path is not None:
        # the local source serves it, confined to the file's own directory
        overrides["IMAGE_DIR"] = str(path.parent)
        args.image = f"local://{path.name}"
    settings = load_settings(
        config_dir=args.config_dir, variants_dir=args.variants_dir, variant=args.variant or "", overrides=overrides
    )
    env = parse_environment(deploy_environment(args), "create")
    assert env.instance is not None
    tempdirs.remove_orphans()
    display = TerminalDisplay(sys.stdout)
    with (
        Progress(settings.progress_monitor, env.instance.name, listener=display) as progress,
        summary.watch("create", env.instance.name, settings, progress) as record,
    ):
        try:
            if args.no_customize:
                os_params = deploy.collect_params(env.os.osparams, settings)
                deploy.copy_image(env.instance, os_params, settings, progress)
            else:
                deploy.create(env.instance, env.os.osparams, settings, progress)
        except (SnfImageError, Interrupted) as exc:
            progress.error(str(exc).splitlines()[0])
            raise
    print(record.line())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    settings = load_settings(config_dir=args.config_dir, variants_dir=args.variants_dir, variant=args.variant or "")
    osparams = {"img_id": args.image, "img_format": args.format}
    if args.properties is not None:
        osparams["img_properties"] = args.properties
    deploy.verify_params(osparams, settings)
    print("parameters are valid")
    return 0


def cmd_helper_build(args: argparse.Namespace) -> int:
    from .helperimage import plan

    settings = load_settings(config_dir=args.config_dir, variants_dir=args.variants_dir)
    helper_dir = args.helper_dir or settings.helper_dir
    steps = plan.describe(helper_dir, args.cache_dir, args.code_only, args.force, args.kernel)
    if not steps:
        print(f"The helper VM image in {helper_dir} is up to date; nothing to build.")
    else:
        print(
            f"Building the helper VM image in {helper_dir}:", *(f"  - {step}" for step in steps), sep="\n", flush=True
        )
    start = time.monotonic()
    helperimage.build(helper_dir, args.cache_dir, code_only=args.code_only, force=args.force, kernel=args.kernel)
    if steps:
        print(f"Helper VM image ready in {helper_dir} ({time.monotonic() - start:.0f} s).")
    if helper_dir == settings.helper_dir:
        osstatus.record(helper_dir)
    else:
        print(f"Ganeti uses HELPER_DIR={settings.helper_dir}, not this directory.")
    return 0


def cmd_helper_status(args: argparse.Namespace) -> int:
    settings = load_settings(config_dir=args.config_dir, variants_dir=args.variants_dir)
    problem = osstatus.record(settings.helper_dir)
    if problem is None:
        print(f"snf-image: the helper VM image in {settings.helper_dir} is ready for this snf-image.")
        return 0
    print(f"snf-image: the helper VM image is not ready: {problem}")
    print(
        "snf-image: the first build takes minutes, one after an upgrade seconds;"
        " until then gnt-os diagnose reports snf-image invalid."
    )
    return 1


def cmd_helper_probe(args: argparse.Namespace) -> int:
    from . import jail
    from .jail.accel import verdict

    settings = load_settings(config_dir=args.config_dir, variants_dir=args.variants_dir)
    config = jail.HelperConfig.from_settings(settings)
    jail.check_helper_dir(config.helper_dir)
    verdict(config, print, reprobe=True)
    if config.accel != "auto":
        print(f"HELPER_ACCEL={config.accel} overrides the verdict: deployments use {config.accel}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="snf-image",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"snf-image {__version__}")
    top.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="settings directory [%(default)s]")
    top.add_argument("--variants-dir", type=Path, default=DEFAULT_VARIANTS_DIR, help="variants [%(default)s]")
    top.add_argument("--debug", action="store_true", help="log debugging details")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dep = sub.add_parser(
        "deploy",
        help="deploy an image onto a disk and customize it",
        description="Copy an image onto a disk and customize it in the helper VM, as Ganeti's create does.",
    )
    dep.add_argument("--disk", required=True, help="disk file, block device or userspace URI (nbd://...)")
    dep.add_argument("--extra-disk", action="append", default=[], help="a further instance disk (swap, data)")
    dep.add_argument(
        "--image",
        required=True,
        help="an image file (./debian.img), or an image id: local://NAME (in IMAGE_DIR), http(s)://, ftp(s)://, "
        "pithos://, null",
    )
    dep.add_argument("--format", required=True, choices=IMAGE_FORMATS, help="image format")
    dep.add_argument("--hostname", default="snf-image-guest", help="the guest's hostname [%(default)s]")
    dep.add_argument(
        "--password-file",
        metavar="FILE",
        help="file whose first line is the password of the image's users; - reads it from standard input",
    )
    dep.add_argument("--password-hash-file", metavar="FILE", help="the same for a crypt(3) hash instead of a password")
    dep.add_argument("--password", help="refused: on a command line every user of the node can read it")
    dep.add_argument("--password-hash", help="refused, as --password")
    dep.add_argument("--properties", help="image properties, a JSON object")
    dep.add_argument("--personality", type=Path, help="JSON file: files to inject (img_personality)")
    dep.add_argument("--auth-keys", type=Path, help="file of SSH public keys for the users")
    dep.add_argument("--checksum", help="ALGORITHM:HEX of the image as delivered")
    dep.add_argument("--nic", action="append", default=[], help="mac=..,ip=..,subnet=..,gateway=.. (repeatable)")
    dep.add_argument("--variant", help="variant settings to apply")
    dep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    dep.add_argument("--no-customize", action="store_true", help="copy only; do not start the helper VM")
    dep.set_defaults(func=cmd_deploy)

    ver = sub.add_parser(
        "verify",
        help="validate OS parameters as Ganeti's verify does",
        description="Check OS parameters before any disk is touched, as Ganeti's verify script does.",
    )
    ver.add_argument("--image", required=True, help="image id, as img_id")
    ver.add_argument("--format", required=True, help="image format, as img_format")
    ver.add_argument("--properties", help="image properties, a JSON object")
    ver.add_argument("--variant", help="variant settings to apply")
    ver.set_defaults(func=cmd_verify)

    helper = sub.add_parser(
        "helper",
        help="the helper VM image",
        description="Build the helper VM image, check that it matches the installed snf-image, or probe KVM "
        "for this node.",
    )
    helper_sub = helper.add_subparsers(dest="helper_command", required=True, metavar="COMMAND")
    build = helper_sub.add_parser(
        "build",
        help="build (or refresh) the helper image",
        description="Build the helper VM image into HELPER_DIR, or refresh what changed. The first build "
        "debootstraps a Debian root filesystem (minutes); later ones reuse it from the build cache.",
    )
    build.add_argument("--helper-dir", type=Path, help="output directory [HELPER_DIR]")
    build.add_argument(
        "--cache-dir", type=Path, default=helperimage.DEFAULT_CACHE_DIR, help="build cache [%(default)s]"
    )
    build.add_argument("--code-only", action="store_true", help="rebuild only snf-image's own code layer")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build.add_argument(
        "--kernel",
        choices=KERNEL_FLAVOURS,
        default=DEFAULT_KERNEL,
        help="custom: our own, built from linux-source (faster, writes UFS: BSD images need it); "
        "debian: the rootfs' cloud kernel, a fallback [%(default)s]",
    )
    build.set_defaults(func=cmd_helper_build)
    status = helper_sub.add_parser(
        "status",
        help="say whether the helper image matches this snf-image",
        description="Say whether the helper VM image in HELPER_DIR matches the installed snf-image, and record "
        "it where gnt-os diagnose reads it. Exit status 1 when it does not.",
    )
    status.set_defaults(func=cmd_helper_status)
    probe = helper_sub.add_parser(
        "probe",
        help="probe KVM again for this node and print the verdict",
        description="Boot the helper kernel under KVM once more and keep the verdict (kvm or tcg) that every "
        "deployment on this node uses until the host reboots (with HELPER_ACCEL=auto).",
    )
    probe.set_defaults(func=cmd_helper_probe)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.debug)
    if not args.debug:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        with termination_raises():
            return args.func(args)
    except SnfImageError as exc:
        for line in str(exc).splitlines():
            print(f"snf-image: error: {line}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"snf-image: error: {exc}", file=sys.stderr)
        return 128 + exc.signum
