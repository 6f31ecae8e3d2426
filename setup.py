"""Installs snf-image: the host package, the jail's code, the `snf-image` command and the OS definition.

The OS definition (entry scripts and Ganeti's files) goes to
/usr/share/ganeti/os/snf-image, default settings to /etc/snf-image and the
variant files to /etc/ganeti/snf-image/variants, as `scripts/install` does.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path("snf_image/__init__.py").read_text()).group(1)
OS_FILES = ["create", "import", "export", "rename", "verify", "ganeti_api_version", "variants.list", "parameters.list"]

setup(
    name="snf-image",
    version=VERSION,
    description="Ganeti OS definition that deploys images and customizes them inside a helper VM",
    license="GPL-2.0-or-later",
    python_requires=">=3.11",
    packages=find_packages(include=["snf_image", "snf_image.*", "helper", "helper.*", "tasks", "tasks.*"]),
    package_data={"snf_image": ["schemas/*.json"], "helper": ["init", "*.list"]},
    install_requires=["requests", "jsonschema>=4.10", "python-magic", "PyYAML", "passlib", "pyparted"],
    extras_require={"zstd": ["zstandard"], "nbd": []},
    entry_points={"console_scripts": ["snf-image = snf_image.cli:main"]},
    data_files=[
        ("/usr/share/ganeti/os/snf-image", OS_FILES),
        ("/etc/snf-image", ["etc/snf-image.conf"]),
        ("/etc/ganeti/snf-image/variants", ["etc/variants/default.conf"]),
    ],
)
