"""One deployment: image source -> instance disk -> helper VM.

The host half of the flow in DESIGN.md. Everything here handles the image
as opaque bytes; whatever reads the image's filesystems runs in the jail
(:func:`customize`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import hostkeys, params, summary, windows
from .contract.constants import FORMAT_DISKDUMP, FORMAT_EXTDUMP
from .contract.rules import HostKey, PersonalityFile, Rules, RulesDisk, RulesNic, RulesSettings, new_result_token
from .copy import HashingStream, copy_stream, verify_checksum
from .errors import ImageError
from .formats import convert, headers, mbr, sniff, streams
from .formats.sandbox import SandboxConfig
from .ganeti import Instance, Nic
from .helperslots import helper_slot
from .params import OsParams
from .progress import Progress
from .settings import Settings
from .sources import select_source
from .sources.base import ImageStream
from .sources.fetch import local_image, open_image
from .sources.local import LocalStream
from .sources.urls import redact_id
from .targets import DiskTarget, open_target

log = logging.getLogger(__name__)

#: Tasks a rename runs in the jail: what depends on the instance's name.
RENAME_TASKS = ("AssignHostname",)


def fetch_config_url(url: str, settings: Settings) -> dict[str, str]:
    """Download the JSON object of ``config_url`` (bounded size); values override OSP_*.

    Through the image download path: the network source's TLS settings,
    timeouts, retries, redirect policy and minimum rate; http(s) and ftp(s).
    """
    from .sources.network import fetch_document
    from .sources.urls import redact_url

    log.info("Downloading configuration parameters from %s", redact_url(url))
    body = fetch_document(url, settings, params.MAX_CONFIG_URL_DOCUMENT, "config_url")
    return params.parse_config_document(body.decode("utf-8", "replace"), redact_url(url))


def collect_params(osparams: Mapping[str, str], settings: Settings) -> OsParams:
    """Merge, fetch config_url if any, decode and validate the OS parameters of a create."""
    merged = params.merge_sources(settings.param_defaults, osparams)
    if merged.get("config_url"):
        params.validate({"config_url": merged["config_url"]}, require_image=False)
        merged = params.merge_sources(
            settings.param_defaults, osparams, fetch_config_url(merged["config_url"], settings)
        )
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


def write_image(
    stream: ImageStream,
    target: DiskTarget,
    img_format: str,
    progress: Progress,
    converter: SandboxConfig,
    verify_source: Callable[[], None] | None = None,
    localize: Callable[[], LocalStream] | None = None,
) -> CopyOutcome:
    """Decode the container, check the declared format and write the image onto ``target``.

    ``verify_source`` runs once every byte of the source has been read (the checksum): for a
    container before the converter opens it, for a stream once it is copied. ``localize``
    gives the image as a checked local file when a container arrives as a remote stream.
    """
    peeked = streams.PeekedStream(stream)
    container = sniff.detect_container(peeked.head)
    if container in sniff.CONTAINERS:
        with contextlib.ExitStack() as cleanup:
            if peeked.local_fd is None and localize is not None:
                # qcow2/VMDK/... need seeking: fetch the image once into a local file (the node's image
                # cache, or a private unnamed file), checksum verified there, then convert from its descriptor
                progress.info(f"Fetching the {sniff.NAMES[container]} image to a local file before converting it...")
                peeked.close()
                peeked = streams.PeekedStream(cleanup.enter_context(localize()))
                verify_source = None
            _write_container(peeked, container, target, img_format, progress, converter, verify_source)
        return CopyOutcome({})
    size = peeked.size
    if container in sniff.COMPRESSED:
        log.info("the image is %s-compressed; decoding it in the stream", container)
        peeked = streams.PeekedStream(streams.DecodedStream(peeked, container))
        inner = sniff.detect_container(peeked.head)
        if inner != sniff.RAW:
            raise ImageError(
                f"the {container}-compressed image holds a {sniff.NAMES[inner]} container; decompress it first"
            )
        size = None
    if not peeked.head:
        raise ImageError("the image is empty" + (f" once {container}-decoded" if container != sniff.RAW else ""))
    sniff.check_declared_format(img_format, peeked.head)
    offset = 0
    implied: dict[str, str] = {}
    if img_format != FORMAT_DISKDUMP:
        prefix = mbr.mbr_prefix(img_format, size, target.size)
        target.write(0, memoryview(prefix))
        offset = mbr.PREFIX_BYTES
        implied = {"OSFAMILY": "linux" if img_format == FORMAT_EXTDUMP else "windows", "ROOT_PARTITION": "1"}
    elif size is not None and size > target.size:
        raise ImageError(f"the image ({size} bytes) is larger than the disk ({target.size} bytes)")
    progress.info("Starting image copy...")
    copy_stream(peeked, target, offset=offset, total=size, on_progress=progress.copy_progress)
    progress.info("Image copy finished.")
    if verify_source is not None:
        verify_source()
    return CopyOutcome(implied)


def _write_container(
    stream: streams.PeekedStream,
    container: str,
    target: DiskTarget,
    img_format: str,
    progress: Progress,
    converter: SandboxConfig,
    verify_source: Callable[[], None] | None,
) -> None:
    """Check, hash, then convert a qcow2/VMDK/VHD/VHDX/VDI image in the sandbox, all from one descriptor.

    The descriptor is the source's own (``local_fd``): the header is read from it, every byte
    goes through the checksum from it, and the converter reads it; no path is opened again.
    """
    name = sniff.NAMES[container]
    if img_format != FORMAT_DISKDUMP:
        raise ImageError(f"a {name} image holds a whole disk: use img_format=diskdump, not {img_format}")
    if stream.local_fd is None:
        raise ImageError(f"{name} images can only be read from a local file")
    header = headers.read_header(container, stream.local_fd)
    headers.check_fits(header, target.size)
    if verify_source is not None:  # the checksum sees every byte before the converter opens the file
        _drain(stream)
        verify_source()
    with convert.ConvertedImage(stream.local_fd, header, converter) as raw:
        size = raw.size or 0
        if size > target.size:
            raise ImageError(f"the {name} image's disk ({size} bytes) is larger than the disk ({target.size} bytes)")
        disk = streams.PeekedStream(raw)
        inner = sniff.detect_container(disk.head)
        if inner != sniff.RAW:
            raise ImageError(f"the {name} image holds a {sniff.NAMES[inner]} container, not a disk")
        sniff.check_declared_format(FORMAT_DISKDUMP, disk.head)
        progress.info(f"Starting image copy (converting the {name} image)...")
        copy_stream(disk, target, total=size, on_progress=progress.copy_progress)
        progress.info("Image copy finished.")


def _drain(stream: ImageStream) -> None:
    """Read the source to its end, so that the checksum wrapping it has seen every byte."""
    view = memoryview(bytearray(1 << 20))
    while stream.skip_hole() + stream.readinto(view):
        pass


@summary.timed(summary.PHASE_COPY)
def copy_image(instance: Instance, os_params: OsParams, settings: Settings, progress: Progress) -> CopyOutcome:
    """Fetch the image and write it onto disk 0."""
    progress.info(f"Processing image with ID: {redact_id(os_params.img_id)} and format: {os_params.img_format}")
    source = select_source(os_params.img_id, settings)
    summary.note_image(os_params.img_id, source.name, os_params.properties)
    source.check(os_params.img_id)
    if not source.delivers_image:
        progress.info("The null source copies nothing; customizing the disk as it is.")
        return CopyOutcome({})
    converter = SandboxConfig.from_settings(settings)
    with (
        open_target(instance.disks[0].target) as target,
        open_image(source, os_params.img_id, settings, os_params.img_checksum) as raw,
    ):
        stream: ImageStream = raw
        verify = None
        if os_params.img_checksum:
            hasher = HashingStream(raw, os_params.img_checksum.partition(":")[0])
            stream = hasher
            verify = functools.partial(verify_checksum, hasher, os_params.img_checksum)
        localize = functools.partial(local_image, os_params.img_id, settings, os_params.img_checksum)
        outcome = write_image(stream, target, os_params.img_format, progress, converter, verify, localize)
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
    ssh_host_keys: tuple[HostKey, ...] = (),
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
        result_token=new_result_token(),
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
        ssh_host_keys=ssh_host_keys,
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
    """Hand the disks and the rules to the helper VM and wait for its verdict (first for a slot, if all are taken)."""
    with helper_slot(settings.helper_max_running, settings.helper_slots_dir, progress.info):
        _run_helper(instance, settings, rules, progress)


@summary.timed(summary.PHASE_HELPER)
def _run_helper(instance: Instance, settings: Settings, rules: Rules, progress: Progress) -> None:
    from . import jail, schemas

    data = rules.to_json()
    problem = schemas.first_error("rules", json.loads(data))
    if problem is not None:
        raise AssertionError(f"built invalid rules: {problem}")
    config = jail.HelperConfig.from_settings(settings)
    disks = [jail.JailDisk(disk.target, disk.index, readonly=disk.access == "ro") for disk in instance.disks]
    progress.info("Starting customization VM...")
    jail.run_helper(config, disks, data, progress.helper, log=_helper_log, token=rules.result_token)
    progress.info("Customization VM exited normally.")


def _helper_log(line: str) -> None:
    log.info("%s", line)


def create(instance: Instance, osparams: Mapping[str, str], settings: Settings, progress: Progress) -> None:
    """Ganeti's create (and reinstall): copy the image, then customize it."""
    os_params = collect_params(osparams, settings)
    # before the copy: a bad WINDOWS_TIMEZONE or an unreachable os_answer_file fails fast
    files, answer_properties = windows.answer_files(settings, os_params.os_answer_file)
    with ThreadPoolExecutor(max_workers=1) as keygen:  # the instance's SSH host keys, made while the image copies
        host_keys = keygen.submit(hostkeys.generate, instance.name)
        outcome = copy_image(instance, os_params, settings, progress)
    rules = build_rules(
        instance,
        settings,
        os_params,
        implied_properties=outcome.implied_properties,
        answer_files=files,
        answer_properties=answer_properties,
        ssh_host_keys=host_keys.result(),
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
