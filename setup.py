"""Packages snf-image: the host package, the jail's code and the `snf-image` command.

The OS definition (entry scripts and Ganeti's files), the default settings
and the variants directory are installed by `scripts/install`, which puts them
where Ganeti and operators look (/usr/share/ganeti/os/snf-image, /etc/snf-image,
/etc/ganeti/snf-image/variants); pip would put absolute data_files inside
site-packages instead.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path("snf_image/__init__.py").read_text()).group(1)

setup(
    name="snf-image",
    version=VERSION,
    description="Ganeti OS definition that deploys images and customizes them inside a helper VM",
    license="GPL-2.0-or-later",
    python_requires=">=3.11",
    packages=find_packages(include=["snf_image", "snf_image.*", "helper", "helper.*", "tasks", "tasks.*"]),
    package_data={
        "snf_image": ["schemas/*.json", "data/*", "helperimage/packages.list", "helperimage/kernel.config"],
        "helper": ["init"],
    },
    install_requires=["requests", "jsonschema>=4.10", "python-magic", "PyYAML", "passlib", "pyparted", "zstandard"],
    entry_points={"console_scripts": ["snf-image = snf_image.cli:main"]},
)
