"""InitializeDatasource: give cloud-init a NoCloud seed for this instance (CLOUD_INIT only).

Runs only when the ``CLOUD_INIT`` property is set; the image must have
cloud-init installed (``/etc/cloud/cloud.cfg.d`` or
``/usr/local/etc/cloud/cloud.cfg.d``). It writes:

- ``cloud.cfg.d/98_snf-image.cfg``: ``datasource_list: [ NoCloud ]``, and
  with the ``cloud_init_debug`` setting a DEBUG log in
  ``/var/log/snf-image/cloud-init-debug.log``;
- ``/var/lib/cloud/seed/nocloud-net/meta-data`` (0600): ``instance-id``,
  the instance name plus a random suffix, new for every deployment so
  cloud-init always treats the deployed disk as a new instance (an image
  captured from an instance of the same name would otherwise skip the
  per-instance work: new host keys, passwords). The hostname, SSH keys,
  passwords, swap and files are added by the tasks that own them
  (AssignHostname, ChangePassword, ...; see ``tasks/_cloud_init.py``);
- ``user-data`` (0600): the ``cloud_userdata`` parameter base64-decoded,
  byte for byte, or empty with a warning;
- ``network-config`` (version 1): the NICs as ConfigureNetwork plans them,
  matched by MAC; it applies when ConfigureNetwork leaves the network to
  cloud-init (no native configuration it knows in the image);
- a per-once script that empties the user-data (seed and cloud-init's
  copies) at first boot, left non-executable with ``cloud_init_debug``.

Properties: CLOUD_INIT. Settings: cloud_init_debug, the NIC settings.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid

from helper import fsutil
from helper.commands import TaskError
from helper.framework import UNIX, Context, Task

from . import _cloud_init, _nics

TASK = Task(
    name="InitializeDatasource",
    order=35,
    families=UNIX,
    excludable=False,
    mounted=True,
    resize=False,
    cloudinit_skip=False,
    overridable=True,
)

log = logging.getLogger(__name__)

USER_DATA_COPIES = ("/var/lib/cloud/instance/user-data.txt", "/var/lib/cloud/instance/user-data.txt.i")

DEBUG_LOGCFG = """\
[loggers]
keys=root,cloudinit
[handlers]
keys=ch,cf
[formatters]
keys=
[logger_root]
level=DEBUG
handlers=
[logger_cloudinit]
level=DEBUG
qualname=cloudinit
handlers=ch,cf
[handler_ch]
class=StreamHandler
level=DEBUG
args=(sys.stderr,)
[handler_cf]
class=FileHandler
level=DEBUG
args=('/var/log/snf-image/cloud-init-debug.log',)
"""


def decode_user_data(value: str | None) -> bytes | None:
    """The user-data bytes of the base64 ``cloud_userdata`` parameter, None when not given."""
    if value is None or not value.strip():
        return None
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TaskError("cloud_userdata is not valid base64") from exc


def instance_id(name: str) -> str:
    """A fresh instance-id for this deployment of instance ``name``."""
    return f"{name}-{uuid.uuid4().hex[:12]}"


def datasource_config(debug: bool) -> dict[str, object]:
    """The cloud.cfg.d snippet: NoCloud only (no probing of network datasources), DEBUG logging if asked."""
    data: dict[str, object] = {"datasource_list": ["NoCloud"]}
    if debug:
        data["logcfg"] = DEBUG_LOGCFG
    return data


def run(ctx: Context) -> None:
    """Write the seed, the datasource snippet and the first-boot cleanup."""
    if not ctx.cloud_init:
        log.info("CLOUD_INIT is not set; no cloud-init datasource to initialize")
        return
    root = ctx.target
    debug = _cloud_init.debug(ctx)
    cfg_dir = _cloud_init.config_dir(root)
    if debug:
        fsutil.make_dirs(root, _cloud_init.DEBUG_LOG_DIR, mode=0o755)
    text = _cloud_init.HEADER + _cloud_init.dump(datasource_config(debug))
    fsutil.write_file(root, f"{cfg_dir}/{_cloud_init.DATASOURCE_CFG}", text.encode(), mode=0o644)

    seed = _cloud_init.ensure_seed(root)
    name = ctx.rules.instance_name or "instance"
    # a fresh meta-data: whatever the image carried belongs to another instance
    fsutil.write_file(
        root, f"{seed}/meta-data", _cloud_init.dump({"instance-id": instance_id(name)}).encode(), mode=0o600
    )

    user_data = decode_user_data(ctx.rules.cloud_userdata)
    if user_data is None:
        ctx.warning("No cloud user-data provided")
        user_data = b""
    fsutil.write_file(root, f"{seed}/user-data", user_data, mode=0o600)

    _cloud_init.write_network_config(ctx, _nics.plan(ctx))

    _cloud_init.at_first_boot(ctx, "clear-user-data", truncate=[f"{seed}/user-data", *USER_DATA_COPIES])
