"""Path and symlink escapes on the host: image ids and IMAGE_DIR entries that point at the canary.

All are refused before anything is copied (no helper VM boots); the canary, a file outside the
image directory, is what each one tries to deploy.
"""

from __future__ import annotations

import os

from tests.hostile.case import Case
from tests.hostile.lab import Deployment, Lab

OUTSIDE = "points outside the image directory"


def _relative_canary(lab: Lab) -> str:
    return os.path.relpath(lab.canary.path, lab.image_dir)


def dotdot(lab: Lab) -> Deployment:
    return Deployment(f"local://{_relative_canary(lab)}")


def absolute(lab: Lab) -> Deployment:
    return Deployment(f"local://{lab.canary.path}")


def bare_absolute(lab: Lab) -> Deployment:
    return Deployment(str(lab.canary.path))


def file_scheme(lab: Lab) -> Deployment:
    return Deployment(f"file://{_relative_canary(lab)}")


def hidden_dotdot(lab: Lab) -> Deployment:
    (lab.image_dir / "sub").mkdir()
    return Deployment(f"local://sub/./../sub/../{_relative_canary(lab)}")


def linked_file(lab: Lab) -> Deployment:
    (lab.image_dir / "debian.img").symlink_to(lab.canary.path)
    return Deployment("local://debian.img")


def linked_directory(lab: Lab) -> Deployment:
    (lab.image_dir / "shared").symlink_to(lab.canary.path.parent)
    return Deployment(f"local://shared/{lab.canary.path.name}")


def relative_link_chain(lab: Lab) -> Deployment:
    (lab.image_dir / "a").symlink_to("b")
    (lab.image_dir / "b").symlink_to(_relative_canary(lab))
    return Deployment("local://a")


def helper_image(lab: Lab) -> Deployment:
    """IMAGE_DIR holds HELPER_DIR (the default layout): the helper VM's own disk image as an image id."""
    return Deployment(f"local://{lab.helper_dir.name}/image", settings={"IMAGE_DIR": str(lab.helper_dir.parent)})


def fifo(lab: Lab) -> Deployment:
    """A FIFO in IMAGE_DIR: opening it would block the deployment forever."""
    os.mkfifo(lab.image_dir / "pipe.img")
    return Deployment("local://pipe.img")


def device(lab: Lab) -> Deployment:
    """A link to a host block device: the host's own disk as an image."""
    (lab.image_dir / "disk.img").symlink_to("/dev/loop-control")
    return Deployment("local://disk.img")


def redirect_to_file(lab: Lab) -> Deployment:
    """An image URL (with credentials and a token) that redirects to a file:// URL of the canary."""
    server = lab.http({})
    server.behaviour.redirects = {"/image.raw": f"file://{lab.canary.path}"}
    return Deployment(lab.secret_url(server, "/image.raw"))


CASES = [
    Case("host-id-dotdot", "local:// id climbing out of IMAGE_DIR with ..", dotdot, OUTSIDE, boots=False),
    Case("host-id-absolute", "local:// id naming an absolute host path", absolute, OUTSIDE, boots=False),
    Case("host-id-bare-absolute", "bare id (no scheme) naming an absolute host path", bare_absolute, OUTSIDE,
         boots=False),
    Case("host-id-file-scheme", "deprecated file:// id climbing out with ..", file_scheme, OUTSIDE, boots=False),
    Case("host-id-hidden-dotdot", "id whose .. hides behind ./ and a real subdirectory", hidden_dotdot, OUTSIDE,
         boots=False),
    Case("host-link-file", "IMAGE_DIR entry symlinked to a host file", linked_file, OUTSIDE, boots=False),
    Case("host-link-directory", "IMAGE_DIR subdirectory symlinked out of it", linked_directory, OUTSIDE,
         boots=False),
    Case("host-link-chain", "relative symlink chain inside IMAGE_DIR leading out", relative_link_chain, OUTSIDE,
         boots=False),
    Case("host-helper-image", "the helper VM's own image (HELPER_DIR inside IMAGE_DIR) as the image",
         helper_image, "helper VM's directory", boots=False),
    Case("host-fifo", "a FIFO as the image (would block the read forever)", fifo, "not a regular file",
         boots=False),
    Case("host-device", "IMAGE_DIR entry symlinked to a host device node", device, OUTSIDE, boots=False),
    Case("host-redirect-file", "image URL redirecting to file:// of the canary", redirect_to_file,
         "redirect", boots=False),
]  # fmt: skip
