"""No secret is echoed (#13 item 4): not in any output, log, progress message, traceback, child's
environment or command line, nor in a file left behind.

Real creates through the real helper VM, with distinctive secrets: a password (from a config_url
document), a password hash, a product key, user-data, and credentials and signed-URL tokens in
config_url, os_answer_file and the image URL. While each runs, every process below the test is
sampled (its command line and environment, from /proc); afterwards stderr, stdout, the progress
monitor's input, the samples and every file the run left are searched for each secret.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests import guests, helpervm, leftovers
from tests.osenv import create_env, install
from tests.servers import ImageServer

pytestmark = pytest.mark.vm

PASSWORD = "pw-Zr8Qx-secret-91"
PASSWORD_HASH = "$6$saltsecret7731$IXK3tC6b5dvYgqWQ0tZ2LQ3ZU3Bq1zYfGmCq8xZ1n3gGJ0m1nS4a5d6e7f8g9h0i1j2k3l4m5n6o7p8q"
PRODUCT_KEY = "Q7ZK3-X9WPL-M2RTV-8HJNC-4FBDS"
USERDATA = "#cloud-config\n# userdata-secret-5521\n"
URL_USER, URL_PASSWORD = "deployer", "urlpw-secret-3371"
CONFIG_TOKEN, ANSWER_TOKEN, IMAGE_TOKEN = "cfgtok-secret-8812", "anstok-secret-9917", "imgtok-secret-6605"
SECRETS = {
    "password": PASSWORD,
    "password hash": "saltsecret7731",
    "product key": PRODUCT_KEY,
    "user-data": "userdata-secret-5521",
    "user-data (base64)": base64.b64encode(USERDATA.encode()).decode(),
    "URL password": URL_PASSWORD,
    "config_url token": CONFIG_TOKEN,
    "os_answer_file token": ANSWER_TOKEN,
    "image URL token": IMAGE_TOKEN,
}
ANSWER_FILE = b'<?xml version="1.0" encoding="utf-8"?><unattend xmlns="urn:schemas-microsoft-com:unattend"/>'


@pytest.fixture(scope="module")
def helper_dir() -> Path:
    return helpervm.ensure_helper()


@pytest.fixture
def server():
    auth = base64.b64encode(f"{URL_USER}:{URL_PASSWORD}".encode()).decode()
    files = {
        "/config.json": json.dumps({"img_passwd": PASSWORD}).encode(),
        "/unattend.xml": ANSWER_FILE,
        "/blank.img": b"\x5a" * (8 << 20),
    }
    with ImageServer(files) as started:
        started.behaviour.require_headers = {"Authorization": f"Basic {auth}"}  # the credentials are used
        yield started


def _url(server: ImageServer, path: str, token: str) -> str:
    return server.url(path).replace("://", f"://{URL_USER}:{URL_PASSWORD}@") + f"?sig={token}&x=1"


@pytest.fixture
def osdef(tmp_path, helper_dir):
    definition = install(tmp_path / "inst")
    monitor = tmp_path / "monitor"
    monitor.write_text(f"#!/bin/sh\nexec cat >> {tmp_path / 'monitor.jsonl'}\n")
    monitor.chmod(0o755)
    definition.configure(
        HELPER_DIR=str(helper_dir),
        HELPER_SOFT_TIMEOUT="300",
        IMAGE_DIR=str(guests.guest_image("ext4-msdos").path.parent),
        PROGRESS_MONITOR=str(monitor),
    )
    return definition


def _deploy_and_search(osdef, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run create to its end while sampling its processes; assert no secret is anywhere it must not be."""
    watch = leftovers.Watch(marker=tmp_path, tmpdir=osdef.tmpdir)
    inputs = {path for path in tmp_path.rglob("*") if path.is_file()}
    proc = osdef.start("create", env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with leftovers.ChildSampler(exclude=(proc.pid,), exclude_cmdline="/usr/bin/python3 ./create") as sampler:
        stdout, stderr = proc.communicate(timeout=600)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    _, left = watch.wait_clean(5)
    assert not left, left
    programs = {line.split()[0].rsplit("/", 1)[-1] for _, line in sampler.seen}
    assert {"qemu-system-x86_64", "cat"} <= programs, programs  # the VM and the monitor were seen
    places = {
        "stdout": stdout.decode("utf-8", "replace"),
        "stderr": stderr.decode("utf-8", "replace"),
        "progress messages": (tmp_path / "monitor.jsonl").read_text(),
    }
    for (pid, line), environ in sampler.seen.items():
        places[f"command line of {pid}"] = line
        places[f"environment of {pid} ({line[:60]})"] = environ
    for path in tmp_path.rglob("*"):
        if path.is_file() and path not in inputs and path.name not in ("monitor.jsonl", "disk.raw"):
            places[f"file {path}"] = path.read_bytes().decode("utf-8", "replace")
    found = [(what, where) for what, secret in SECRETS.items() for where, text in places.items() if secret in text]
    assert not found, found
    assert "Traceback" not in places["stderr"]
    return result


def test_no_secret_escapes_a_successful_create(osdef, tmp_path, server):
    image = guests.guest_image("ext4-msdos")
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(3 << 30)
    env = create_env(
        "secrets.example.test",
        disk,
        OSP_IMG_ID=f"local://{image.path.name}",
        OSP_IMG_FORMAT="diskdump",
        OSP_CONFIG_URL=_url(server, "/config.json", CONFIG_TOKEN),
        OSP_OS_ANSWER_FILE=_url(server, "/unattend.xml", ANSWER_TOKEN),
        OSP_OS_PRODUCT_KEY=PRODUCT_KEY,
        OSP_CLOUD_USERDATA=base64.b64encode(USERDATA.encode()).decode(),
    )
    result = _deploy_and_search(osdef, tmp_path, env)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert [r.path for r in server.requests] == [
        f"/config.json?sig={CONFIG_TOKEN}&x=1",
        f"/unattend.xml?sig={ANSWER_TOKEN}&x=1",
    ]
    assert "cfgtok" not in result.stderr.decode() and "Downloading configuration parameters from" in (
        result.stderr.decode()
    )


def test_no_secret_escapes_a_failing_create(osdef, tmp_path, server):
    """The image (from a URL with credentials) has no partition table: the helper VM refuses it."""
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    env = create_env(
        "secrets.example.test",
        disk,
        OSP_IMG_ID=_url(server, "/blank.img", IMAGE_TOKEN),
        OSP_IMG_FORMAT="diskdump",
        OSP_IMG_PASSWD_HASH=PASSWORD_HASH,
        OSP_OS_PRODUCT_KEY=PRODUCT_KEY,
    )
    result = _deploy_and_search(osdef, tmp_path, env)
    errors = [line for line in result.stderr.decode().splitlines() if line.startswith("ERROR: ")]
    assert result.returncode == 1 and len(errors) == 1, errors
    assert "partition" in errors[0].lower()
    shown = server.url("/blank.img") + "?..."
    assert f"Processing image with ID: {shown} and format: diskdump" in (tmp_path / "monitor.jsonl").read_text()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OSP_IMG_PASSWD", PASSWORD * 100),
        ("OSP_IMG_PASSWD_HASH", f"{PASSWORD_HASH}:x"),
        ("OSP_OS_PRODUCT_KEY", PRODUCT_KEY + "-X"),
        ("OSP_CLOUD_USERDATA", USERDATA),
        ("OSP_CONFIG_URL", f"gopher://{URL_USER}:{URL_PASSWORD}@host/x?sig={CONFIG_TOKEN}"),
        ("OSP_IMG_ID", f"http://{URL_USER}:{URL_PASSWORD}@127.0.0.1:1/an image?sig={IMAGE_TOKEN}"),
    ],
    ids=lambda value: value if value.startswith("OSP_") else "",
)
def test_a_refused_secret_is_not_repeated(osdef, tmp_path, name, value):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(1 << 20))
    env = create_env("secrets.example.test", disk, **{"OSP_IMG_ID": "null", "OSP_IMG_FORMAT": "diskdump", name: value})
    result = osdef.run("create", env)
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    assert result.returncode == 1 and "ERROR: " in output
    assert not [what for what, secret in SECRETS.items() if secret in output], output[-2000:]
    assert not os.listdir(osdef.tmpdir)


def test_a_child_a_library_starts_gets_no_secret(tmp_path):
    """Loading libparted (the MBR of an extdump) runs dmidecode through popen(3), with our environment.

    A dmidecode of the test's records what it got: it runs, and no OS parameter reaches it. The
    helper directory is missing, so the create ends after the copy, before any VM.
    """
    definition = install(tmp_path / "inst")
    fs = definition.image_dir / "root.ext4"
    with open(fs, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["mke2fs", "-q", "-t", "ext4", str(fs)], check=True)
    definition.configure(HELPER_DIR=str(tmp_path / "no-helper"))
    fake = tmp_path / "bin"
    fake.mkdir()
    seen = tmp_path / "dmidecode-environment"
    (fake / "dmidecode").write_text(f"#!/bin/sh\nenv > {seen}\n")
    (fake / "dmidecode").chmod(0o755)
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(32 << 20))
    env = create_env(
        "secrets.example.test",
        disk,
        PATH=f"{fake}:/sbin:/bin:/usr/sbin:/usr/bin",
        OSP_IMG_ID="local://root.ext4",
        OSP_IMG_FORMAT="extdump",
        OSP_IMG_PASSWD=PASSWORD,
        OSP_OS_PRODUCT_KEY=PRODUCT_KEY,
    )
    result = definition.run("create", env)
    assert result.returncode == 1 and b"Image copy finished" in result.stderr, result.stderr.decode()[-2000:]
    environment = seen.read_text()  # it ran
    assert "PATH=" in environment and "OSP_" not in environment
    assert PASSWORD not in environment and PRODUCT_KEY not in environment
