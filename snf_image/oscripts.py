"""The Ganeti OS scripts (create, import, export, rename, verify) behind their few-line entry files.

Each reads the environment once into typed objects, loads the settings, does
its job and returns an exit code. A failure the operator can act on is one
``ERROR: ...`` line on stderr (which Ganeti shows in the job and keeps in
the OS log) and, for create, exactly one ``image-error`` progress message;
anything unexpected is logged with its traceback as an internal error.
SIGTERM, SIGINT or SIGHUP (Ganeti's timeout) stops a script the same way, after
everything it started is stopped and removed (:mod:`snf_image.lifecycle`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from . import deploy, summary, tempdirs, transfer
from .errors import SnfImageError
from .ganeti import ScriptEnvironment, parse_environment
from .lifecycle import Interrupted, forget_parameters, termination_raises
from .progress import Progress
from .settings import DEFAULT_CONFIG_DIR, DEFAULT_VARIANTS_DIR, Settings, load_settings

log = logging.getLogger("snf-image")

#: Environment variables that relocate the configuration (tests, standalone use).
CONFIG_DIR_VARIABLE = "SNF_IMAGE_CONFIG_DIR"
VARIANTS_DIR_VARIABLE = "SNF_IMAGE_VARIANTS_DIR"
INTERNAL_ERROR = "Internal error: image deployment failed (see the OS log for details)"


def setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
        force=True,
    )


def official_variants(os_dir: Path) -> tuple[str, ...]:
    """The variants listed in the OS definition's variants.list."""
    try:
        lines = (os_dir / "variants.list").read_text("utf-8").splitlines()
    except OSError:
        return ()
    return tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))


def settings_for(env: ScriptEnvironment, environ: Mapping[str, str], os_dir: Path) -> Settings:
    return load_settings(
        config_dir=Path(environ.get(CONFIG_DIR_VARIABLE) or DEFAULT_CONFIG_DIR),
        variants_dir=Path(environ.get(VARIANTS_DIR_VARIABLE) or DEFAULT_VARIANTS_DIR),
        variant=env.os.variant,
        official_variants=official_variants(os_dir),
    )


def _run(script: str, args: list[str], environ: Mapping[str, str], os_dir: Path) -> int:
    env = parse_environment(environ, script)
    forget_parameters(os.environ)
    setup_logging(env.os.debug_level > 0)
    settings = settings_for(env, environ, os_dir)
    if script == "verify":
        if args != ["parameters"]:
            raise SnfImageError(f"verify: unsupported check {' '.join(args) or '(none)'}; only 'parameters' exists")
        deploy.verify_params(env.os.osparams, settings)
        return 0
    instance = env.instance
    assert instance is not None  # every script but verify has one
    tempdirs.remove_orphans()
    if script == "export":
        assert env.transfer is not None
        transfer.export_disk(env.transfer.path, sys.stdout.fileno(), env.transfer.size_fd)
        return 0
    if script == "import":
        assert env.transfer is not None
        written = transfer.import_disk(env.transfer.path, sys.stdin.fileno())
        log.info("imported %d bytes onto %s", written, env.transfer.path)
        return 0
    with (
        Progress(settings.progress_monitor, instance.name) as progress,
        summary.watch(script, instance.name, settings, progress),
    ):
        try:
            if script == "create":
                deploy.create(instance, env.os.osparams, settings, progress)
            else:
                deploy.rename(instance, env.os.osparams, settings, progress)
        except (SnfImageError, Interrupted) as exc:
            progress.error(str(exc).splitlines()[0])
            raise
        except Exception:
            progress.error(INTERNAL_ERROR)
            raise
    return 0


def main(script: str, os_dir: Path, args: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one OS script; the exit code Ganeti sees."""
    setup_logging(False)
    try:
        with termination_raises():
            return _run(
                script, sys.argv[1:] if args is None else args, os.environ if environ is None else environ, os_dir
            )
    except SnfImageError as exc:
        for line in str(exc).splitlines():
            print(f"ERROR: {line}", file=sys.stderr, flush=True)
        return 1
    except Interrupted as exc:
        print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        return 128 + exc.signum
    except Exception:
        log.exception("internal error in the %s script", script)
        print(f"ERROR: {INTERNAL_ERROR}", file=sys.stderr, flush=True)
        return 1
