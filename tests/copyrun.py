"""Images and disks for the copy tests, and one copy through deploy.write_image (the real path)."""

import os
import subprocess
from pathlib import Path

from snf_image import deploy
from snf_image.copy import HashingStream, verify_checksum
from snf_image.formats.sandbox import SandboxConfig
from snf_image.progress import Progress
from snf_image.sources.base import ImageStream
from snf_image.sources.local import LocalStream
from snf_image.targets import open_target

MiB = 1024 * 1024
#: The converter as deployments run it by default (HELPER_USER, CONVERTER_MEMORY, CONVERTER_CPU_TIME).
CONVERTER = SandboxConfig("nobody", 1024, 1800)


def make_disk_image(path: Path, size: int, data_at: tuple[int, ...] = (10,)) -> bytes:
    """A sparse msdos-partitioned image with random MiBs at the given offsets (in MiB)."""
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["parted", "-s", str(path), "mklabel", "msdos", "mkpart", "primary", "1MiB", "100%"], check=True)
    with open(path, "r+b") as f:
        for mib in data_at:
            f.seek(mib * MiB)
            f.write(os.urandom(MiB))
    return path.read_bytes()


def old_data_disk(path: Path, size: int) -> None:
    """A disk full of old data, as on a reinstall."""
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(b"\xa5" * MiB)


def run_copy(
    image: Path,
    disk: Path,
    img_format: str = "diskdump",
    checksum: str | None = None,
    converter: SandboxConfig = CONVERTER,
    wrap: type[ImageStream] | None = None,
) -> list[dict]:
    """Copy ``image`` onto ``disk`` as copy_image does; return the progress messages and the outcome."""
    seen: list[dict] = []
    with open_target(str(disk)) as target, LocalStream(image) as raw:
        stream: ImageStream = wrap(raw) if wrap else raw
        verify = None
        if checksum:
            hasher = HashingStream(stream, checksum.split(":")[0])
            stream = hasher

            def verify() -> None:
                verify_checksum(hasher, checksum)

        outcome = deploy.write_image(stream, target, img_format, Progress(listener=seen.append), converter, verify)
    seen.append({"type": "outcome", "implied": dict(outcome.implied_properties)})
    return seen
