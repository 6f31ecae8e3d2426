"""Whether Ganeti may use snf-image on this node: the OS definition's API version file.

``gnt-os diagnose`` judges an OS definition by its files alone; it runs
nothing. So the installed definition's ``ganeti_api_version`` is a symlink to
:data:`API_VERSION_FILE`, which this module writes: Ganeti's OS API version
when the helper VM image in HELPER_DIR matches the installed code, otherwise
one sentence that names the command fixing it. Ganeti cannot read the
sentence as a number, so it reports the OS invalid and shows the sentence::

    API version(s) can't be converted to integer: invalid literal for int() with
    base 10: 'snf-image helper VM image missing or out of date, run: snf-image helper build'

The file is kept only where the Debian package made its directory (the
package's postinst); a checkout or a wheel has no OS definition to mark.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import HelperError
from .jail import check_helper_dir

#: The OS API version snf-image implements (the checkout's ganeti_api_version says the same).
GANETI_API_VERSION = "20"
#: What the installed OS definition's ganeti_api_version links to (debian/snf-image.links).
API_VERSION_FILE = Path("/var/lib/snf-image/ganeti-os/ganeti_api_version")
#: What the file says instead while the helper cannot serve this code.
NOT_READY = "snf-image helper VM image missing or out of date, run: snf-image helper build"


def helper_problem(helper_dir: Path) -> str | None:
    """Why the helper in ``helper_dir`` cannot serve this code (naming the fix), or None."""
    try:
        check_helper_dir(helper_dir)
    except HelperError as exc:
        return str(exc)
    return None


def record(helper_dir: Path, api_version_file: Path = API_VERSION_FILE) -> str | None:
    """Write what Ganeti should see for ``helper_dir``; return the problem, or None when it is ready.

    Does nothing to the file when its directory does not exist (no installed OS definition).
    """
    problem = helper_problem(helper_dir)
    if api_version_file.parent.is_dir():
        tmp = api_version_file.with_name(f".{api_version_file.name}.{os.getpid()}")
        tmp.write_text(f"{NOT_READY if problem else GANETI_API_VERSION}\n")
        tmp.chmod(0o644)
        tmp.rename(api_version_file)
    return problem
