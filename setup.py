"""Packages snf-image: the host package ``snf_image`` and the ``snf-image`` command.

What runs inside the helper VM (``helper/``, ``tasks/``) is not a package of
the host: the build step copies it into ``snf_image/helperimage/jailcode/``
as data, where the helper image builder finds it
(``snf_image.helperimage.codelayer.jail_sources``), so no top-level
``helper`` or ``tasks`` package ever lands in site-packages.

Ganeti's OS definition and the settings files belong where Ganeti and
operators look (/usr/share/ganeti/os/snf-image, /etc/snf-image,
/etc/ganeti/snf-image/variants), which a wheel cannot express: the Debian
package (debian/) installs them.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

VERSION = re.search(r'__version__ = "([^"]+)"', Path("snf_image/__init__.py").read_text()).group(1)
#: The jail's packages and where they go inside the built snf_image (codelayer.JAIL_CODE_DIR).
JAIL_PACKAGES = ("helper", "tasks")
JAIL_CODE_DIR = Path("snf_image", "helperimage", "jailcode")


class BuildPyWithJailCode(build_py):
    """build_py, plus the jail's sources copied as data files into the built snf_image."""

    def run(self) -> None:
        super().run()
        for package in JAIL_PACKAGES:
            for source in sorted(Path(package).rglob("*")):
                if source.is_file() and "__pycache__" not in source.parts and source.suffix != ".pyc":
                    target = Path(self.build_lib, JAIL_CODE_DIR, source)
                    self.mkpath(str(target.parent))
                    self.copy_file(str(source), str(target), preserve_mode=True)


setup(
    name="snf-image",
    version=VERSION,
    description="Ganeti OS definition that deploys images and customizes them inside a helper VM",
    long_description=Path("README.md").read_text("utf-8"),
    long_description_content_type="text/markdown",
    license="GPL-2.0-or-later",
    python_requires=">=3.11",
    packages=find_packages(include=["snf_image", "snf_image.*"]),
    package_data={"snf_image": ["schemas/*.json", "data/*", "helperimage/packages.list", "helperimage/kernel.config"]},
    install_requires=["requests", "jsonschema>=4.10", "python-magic", "PyYAML", "pyparted", "zstandard"],
    entry_points={"console_scripts": ["snf-image = snf_image.cli:main"]},
    cmdclass={"build_py": BuildPyWithJailCode},
)
