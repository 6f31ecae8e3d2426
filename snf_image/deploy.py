"""One deployment: image source -> instance disk -> helper VM.

The host half of the flow in DESIGN.md. Everything here handles the image
as opaque bytes; whatever reads the image's filesystems runs in the jail
(:func:`customize`).
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from . import formats, params, windows
from .contract.constants import FORMAT_DISKDUMP, FORMAT_EXTDUMP
from .contract.rules import PersonalityFile, Rules, RulesDisk, RulesNic, RulesSettings
from .copy import HashingStream, copy_stream, verify_checksum
from .errors import ImageError, OperatorError
from .ganeti import Instance, Nic
from .lifecycle import child_env
from .params import OsParams
from .progress import Progress
from .settings import Settings
from .sources import select_source, shown_id
from .sources.base import ImageStream
from .sources.network import redact_url
from .targets import DiskTarget, open_target

log = logging.getLogger(__name__)

CONFIG_URL_TIMEOUT = (10, 30)

#: Tasks a rename runs in the jail: what depends on the instance's name.
RENAME_TASKS = ("AssignHostname",)


def fetch_config_url(url: str) -> dict[str, str]:
    """Download the JSON object of ``config_url`` (bounded size); values override OSP_*."""
    shown = redact_url(url)
    log.info("Downloading configuration parameters from %s", shown)
    try:
        with requests.get(url, timeout=CONFIG_URL_TIMEOUT, stream=True) as response:
            response.raise_for_status()
            body = response.raw.read(params.MAX_CONFIG_URL_DOCUMENT + 1, decode_content=True)
    except requests.RequestException as exc:  # its text names the URL, query and all
        raise OperatorError(f"config_url: cannot download {shown}: {type(exc).__name__}") from None
    if len(body) > params.MAX_CONFIG_URL_DOCUMENT:
        raise OperatorError(f"config_url: {shown} is larger than {params.MAX_CONFIG_URL_DOCUMENT} bytes")
    return params.parse_config_document(body.decode("utf-8", "replace"), shown)


def collect_params(osparams: Mapping[str, str], settings: Settings) -> OsParams:
    """Merge, fetch config_url if any, decode and validate the OS parameters of a create."""
    merged = params.merge_sources(settings.param_defaults, osparams)
    if merged.get("config_url"):
        params.validate({"config_url": merged["config_url"]}, require_image=False)
        merged = params.merge_sources(settings.param_defaults, osparams, fetch_config_url(merged["config_url"]))
    result = params.validate(merged)
    assert result is not None  # require_image=True guarantees it
    return result


def verify_params(osparams: Mapping[str, str], settings: Settings) -> None:
    """Everything that can be known before create; the image id is checked against the sources."""
    merged = params.merge_sources(settings.param_defaults, osparams)
    has_config_url = bool(merged.get("config_url"))
    result = params.validate(merged, require_image=not has_config_url)
    windows.check_settings(settings)
    if result is not None:
        select_source(result.img_id, settings).check(result.img_id)


@dataclass(frozen=True)
class CopyOutcome:
    """What the copy learnt that the jail needs: properties implied by the format."""

    implied_properties: Mapping[str, str]


def write_image(stream: ImageStream, target: DiskTarget, img_format: str, progress: Progress) -> CopyOutcome:
    """Decode the container, check the declared format and write the image onto ``target``."""
    peeked = formats.PeekedStream(stream)
    container = formats.detect_container(peeked.head)
    if container == formats.QCOW2:
        _write_qcow2(peeked, target, img_format, progress)
        return CopyOutcome({})
    size = peeked.size
    if container in formats.COMPRESSED:
        log.info("the image is %s-compressed; decoding it in the stream", container)
        peeked = formats.PeekedStream(formats.DecodedStream(peeked, container))
        inner = formats.detect_container(peeked.head)
        if inner != formats.RAW:
            raise ImageError(f"the {container}-compressed image holds a {inner} container; decompress it first")
        size = None
    formats.check_declared_format(img_format, peeked.head)
    offset = 0
    implied: dict[str, str] = {}
    if img_format != FORMAT_DISKDUMP:
        prefix = formats.mbr_prefix(img_format, size, target.size)
        target.write(0, memoryview(prefix))
        offset = formats.PREFIX_BYTES
        implied = {"OSFAMILY": "linux" if img_format == FORMAT_EXTDUMP else "windows", "ROOT_PARTITION": "1"}
    elif size is not None and size > target.size:
        raise ImageError(f"the image ({size} bytes) is larger than the disk ({target.size} bytes)")
    progress.info("Starting image copy...")
    copy_stream(peeked, target, offset=offset, total=size, on_progress=progress.copy_progress)
    progress.info("Image copy finished.")
    return CopyOutcome(implied)


def _write_qcow2(stream: formats.PeekedStream, target: DiskTarget, img_format: str, progress: Progress) -> None:
    """Convert a local qcow2 file onto the disk with qemu-img, the format always given explicitly."""
    if img_format != FORMAT_DISKDUMP:
        raise ImageError(f"a qcow2 image holds a whole disk: use img_format=diskdump, not {img_format}")
    if stream.local_path is None:
        raise ImageError("qcow2 images can only be read from a local file (local source)")
    header = formats.check_qcow2_header(stream.head)
    if header.virtual_size > target.size:
        raise ImageError(f"the image ({header.virtual_size} bytes) is larger than the disk ({target.size} bytes)")
    info = json.loads(
        _run(["qemu-img", "info", "--output=json", "-f", "qcow2", str(stream.local_path)], "qemu-img info")
    )
    if info.get("backing-filename") or info.get("format-specific", {}).get("data", {}).get("data-file"):
        raise ImageError("refusing a qcow2 image with a backing file or an external data file")
    # Whatever checksum wrapper sits below must see every byte of the file.
    drain = bytearray(1 << 20)
    while stream.readinto(memoryview(drain)):
        pass
    progress.info("Starting image copy...")
    target.flush()
    _run(
        ["qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", str(stream.local_path), target.name],
        "qemu-img convert",
    )
    progress.copy_progress(header.virtual_size, header.virtual_size)
    progress.info("Image copy finished.")


def _run(argv: list[str], what: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, env=child_env())
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ImageError(f"{what} failed: {last}")
    return result.stdout


def copy_image(instance: Instance, os_params: OsParams, settings: Settings, progress: Progress) -> CopyOutcome:
    """Fetch the image and write it onto disk 0."""
    progress.info(f"Processing image with ID: {shown_id(os_params.img_id)} and format: {os_params.img_format}")
    source = select_source(os_params.img_id, settings)
    source.check(os_params.img_id)
    if not source.delivers_image:
        progress.info("The null source copies nothing; customizing the disk as it is.")
        return CopyOutcome({})
    with open_target(instance.disks[0].target) as target, source.open(os_params.img_id) as raw:
        stream: ImageStream = raw
        hasher = None
        if os_params.img_checksum:
            hasher = HashingStream(raw, os_params.img_checksum.partition(":")[0])
            stream = hasher
        outcome = write_image(stream, target, os_params.img_format, progress)
        if hasher is not None and os_params.img_checksum:
            verify_checksum(hasher, os_params.img_checksum)
        target.flush()
    return outcome


def build_rules(
    instance: Instance,
    settings: Settings,
    os_params: OsParams | None,
    *,
    implied_properties: Mapping[str, str] | None = None,
    answer_files: Mapping[str, str] | None = None,
    answer_properties: Mapping[str, str] | None = None,
    only_tasks: tuple[str, ...] | None = None,
) -> Rules:
    """The per-deployment rules for the jail, complete.

    Properties, lowest precedence first: what the image format implies
    (``implied_properties``), the image's and the instance's, what the
    answer file demands (``answer_properties``).
    """
    properties = dict(implied_properties or {})
    if os_params is not None:
        properties.update(os_params.properties)
    properties.update(answer_properties or {})
    p = os_params
    return Rules(
        instance_name=instance.name,
        old_instance_name=instance.old_name,
        hypervisor=instance.hypervisor,
        img_format=p.img_format if p else FORMAT_DISKDUMP,
        properties=properties,
        password=p.img_passwd if p else None,
        password_hash=p.img_passwd_hash if p else None,
        auth_keys=p.auth_keys if p else None,
        personality=tuple(_personality_file(entry) for entry in p.img_personality) if p else (),
        os_product_key=p.os_product_key if p else None,
        cloud_userdata=p.cloud_userdata if p else None,
        nics=tuple(_rules_nic(nic) for nic in instance.nics),
        disks=tuple(
            RulesDisk(index=d.index, frontend_type=d.frontend_type, size_bytes=(d.size_mib or 0) * 1024 * 1024)
            for d in instance.disks
        ),
        settings=RulesSettings(
            dhcp_tags=tuple(settings.dhcp_tags),
            stateful_dhcpv6_tags=tuple(settings.stateful_dhcpv6_tags),
            stateless_dhcpv6_tags=tuple(settings.stateless_dhcpv6_tags),
            default_nic_config=settings.default_nic_config,
            windows_timezone=settings.windows_timezone,
            cloud_init_debug=settings.cloud_init_debug,
        ),
        files=dict(answer_files or {}),
        only_tasks=only_tasks,
        debug=settings.helper_debug,
    )


def _rules_nic(nic: Nic) -> RulesNic:
    return RulesNic(
        index=nic.index,
        mac=nic.mac,
        ip=nic.ip,
        mode=nic.mode,
        link=nic.link,
        name=nic.name,
        frontend_type=nic.frontend_type,
        network_name=nic.network.name,
        subnet=nic.network.subnet,
        gateway=nic.network.gateway,
        subnet6=nic.network.subnet6,
        gateway6=nic.network.gateway6,
        tags=tuple(nic.network.tags),
    )


def _personality_file(entry: Mapping[str, Any]) -> PersonalityFile:
    """An img_personality entry (already checked against params.schema.json) as the jail gets it."""
    optional = {key: entry[key] for key in ("owner", "group", "mode") if key in entry}
    return PersonalityFile(path=entry["path"], contents=entry["contents"], **optional)


def customize(instance: Instance, settings: Settings, rules: Rules, progress: Progress) -> None:
    """Hand the disks and the rules to the helper VM and wait for its verdict."""
    from . import jail, schemas

    data = rules.to_json()
    problem = schemas.first_error("rules", json.loads(data))
    if problem is not None:
        raise AssertionError(f"built invalid rules: {problem}")
    config = jail.HelperConfig(
        helper_dir=settings.helper_dir,
        memory_mib=settings.helper_memory,
        soft_timeout=settings.helper_soft_timeout,
        hard_timeout=settings.helper_hard_timeout,
        user=settings.helper_user,
        allow_no_seccomp=settings.helper_allow_no_seccomp,
        accel=settings.helper_accel,
        debug=settings.helper_debug,
        qemu=settings.helper_qemu,
    )
    disks = [jail.JailDisk(disk.target, disk.index, readonly=disk.access == "ro") for disk in instance.disks]
    progress.info("Starting customization VM...")
    jail.run_helper(config, disks, data, progress.helper, log=_helper_log)
    progress.info("Customization VM exited normally.")


def _helper_log(line: str) -> None:
    log.info("%s", line)


def create(instance: Instance, osparams: Mapping[str, str], settings: Settings, progress: Progress) -> None:
    """Ganeti's create (and reinstall): copy the image, then customize it."""
    os_params = collect_params(osparams, settings)
    # before the copy: a bad WINDOWS_TIMEZONE or an unreachable os_answer_file fails fast
    files, answer_properties = windows.answer_files(settings, os_params.os_answer_file)
    outcome = copy_image(instance, os_params, settings, progress)
    rules = build_rules(
        instance,
        settings,
        os_params,
        implied_properties=outcome.implied_properties,
        answer_files=files,
        answer_properties=answer_properties,
    )
    customize(instance, settings, rules, progress)
    progress.info("Image customization finished successfully.")


def rename(instance: Instance, osparams: Mapping[str, str], settings: Settings, progress: Progress) -> None:
    """Ganeti's rename: run the name-dependent tasks on the instance's disks.

    Ganeti also calls rename after every backup import, with the old name when
    the instance keeps it: then there is nothing to change and the disk stays
    byte-identical to the export.
    """
    if instance.old_name == instance.name:
        progress.info(f"The instance keeps its name {instance.name}; nothing to rename.")
        return
    merged = params.merge_sources(settings.param_defaults, osparams)
    props = {k: v for k, v in merged.items() if k in ("img_properties", "inst_properties")}
    decoded = params.validate({"img_id": "null", "img_format": FORMAT_DISKDUMP, **props})
    rules = build_rules(instance, settings, decoded, only_tasks=RENAME_TASKS)
    customize(instance, settings, rules, progress)
    progress.info(f"Renamed the guest from {instance.old_name} to {instance.name}.")
