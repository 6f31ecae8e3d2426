"""The entry scripts as Ganeti calls them: reset PATH, umask 0077, symlinked OS dir, /usr/bin/python3."""

import json
import os
import subprocess

import pytest

from tests.osenv import create_env, install

MiB = 1024 * 1024


@pytest.fixture
def osdef(tmp_path):
    return install(tmp_path / "inst")


def verify_env(**params):
    env = {"OS_API_VERSION": "20", "OS_NAME": "snf-image", "OS_VARIANT": "default", "DEBUG_LEVEL": "0"}
    env.update({f"OSP_{k.upper()}": v for k, v in params.items()})
    return env


def test_os_definition_files():
    from tests.osenv import REPO

    assert (REPO / "ganeti_api_version").read_text() == "20\n"
    assert (REPO / "variants.list").read_text() == "default\n"
    names = [line.split()[0] for line in (REPO / "parameters.list").read_text().splitlines()]
    expected = {
        "img_id",
        "img_format",
        "img_passwd",
        "img_passwd_hash",
        "img_properties",
        "img_personality",
        "inst_properties",
        "auth_keys",
        "config_url",
        "os_product_key",
        "os_answer_file",
        "cloud_userdata",
        "img_checksum",
    }
    for name in sorted(expected):
        assert name in names
    for script in ("create", "import", "export", "rename", "verify"):
        assert os.stat(REPO / script).st_mode & 0o100
        assert len((REPO / script).read_text().splitlines()) < 15


def test_verify_accepts_good_parameters(osdef):
    (osdef.image_dir / "debian.img").write_bytes(b"\0" * 512)
    result = osdef.run("verify", verify_env(img_id="local://debian.img", img_format="diskdump"), "parameters")
    assert result.returncode == 0, result.stderr


def test_verify_reports_every_problem_one_line_each(osdef):
    result = osdef.run(
        "verify",
        verify_env(
            img_id="",
            img_format="qcow9",
            img_properties="{oops",
            os_product_key="x",
            img_passwd="a",
            img_passwd_hash="b",
        ),
        "parameters",
    )
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    errors = [line for line in lines if line.startswith("ERROR: ")]
    assert len(errors) == 5, lines
    for name in ("img_id:", "img_format:", "img_properties:", "os_product_key:", "img_passwd, img_passwd_hash:"):
        assert any(line.startswith("ERROR: " + name) for line in errors), (name, errors)


def test_verify_checks_that_a_source_resolves_the_image(osdef):
    result = osdef.run("verify", verify_env(img_id="local://missing.img", img_format="diskdump"), "parameters")
    assert result.returncode == 1
    assert b"ERROR: img_id: image 'missing.img' not found" in result.stderr
    result = osdef.run("verify", verify_env(img_id="local://../../etc/passwd", img_format="diskdump"), "parameters")
    assert b"points outside the image directory" in result.stderr
    result = osdef.run("verify", verify_env(img_id="pithos://a/c/../../b/o", img_format="diskdump"), "parameters")
    assert result.returncode == 1
    assert b"ERROR: invalid image id 'pithos://a/c/../../b/o': '.' and '..' segments are not allowed" in result.stderr


def test_the_helper_image_is_not_an_image(osdef):
    """By default IMAGE_DIR holds HELPER_DIR: the helper's own files are refused as image ids."""
    helper = osdef.image_dir / "helper"
    helper.mkdir()
    (helper / "image").write_bytes(b"\0" * 512)
    osdef.configure(HELPER_DIR=str(helper))
    for img_id in ("local://helper/image", "helper/image", "local://helper/../helper/image"):
        result = osdef.run("verify", verify_env(img_id=img_id, img_format="diskdump"), "parameters")
        assert result.returncode == 1
        errors = [line for line in result.stderr.decode().splitlines() if line.startswith("ERROR: ")]
        assert errors == [f"ERROR: img_id: {img_id!r} is in the helper VM's directory {helper}, not an image"]


def test_verify_of_an_unknown_check_fails(osdef):
    result = osdef.run("verify", verify_env(img_id="null", img_format="diskdump"), "kernel")
    assert result.returncode == 1 and b"only 'parameters'" in result.stderr


def test_create_failure_is_one_image_error_and_leaves_the_disk(osdef, tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\xa5" * MiB)
    (osdef.image_dir / "big.img").write_bytes(b"\x01" * (2 * MiB))
    env = create_env("inst1.gnt.test", disk, OSP_IMG_ID="local://big.img", OSP_IMG_FORMAT="diskdump")
    result = osdef.run("create", env)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.strip().splitlines()[-1] == "ERROR: the image (2097152 bytes) is larger than the disk (1048576 bytes)"
    monitor = [json.loads(line[10:]) for line in err.splitlines() if line.startswith("[MONITOR] ")]
    errors = [m for m in monitor if m["type"] == "image-error"]
    assert len(errors) == 1 and "larger than the disk" in errors[0]["messages"][0]
    assert disk.read_bytes() == b"\xa5" * MiB


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"OS_API_VERSION": "10"}, "ERROR: unsupported OS_API_VERSION 10"),
        ({"DISK_COUNT": "0"}, "ERROR: DISK_COUNT is 0"),
        ({"OS_VARIANT": "nope"}, "ERROR: unofficial variant 'nope' is unsupported"),
        ({"OSP_IMG_FORMAT": "bogus"}, "ERROR: img_format: must be one of diskdump, extdump, ntfsdump"),
        ({"OSP_IMG_ID": "gopher://x"}, "ERROR: img_id: no source can handle image id 'gopher://x'"),
        # refused before disk 0 is written, not by the helper VM afterwards
        ({"DISK_COUNT": "2", "DISK_1_URI": "nbds://127.0.0.1/x"}, "ERROR: DISK_1_URI: unsupported disk 'nbds://"),
        ({"DISK_0_PATH": "nbds+unix:///x?socket=/run/x.sock"}, "ERROR: DISK_0_PATH: unsupported disk 'nbds+unix:///x'"),
        (
            {"OSP_IMG_ID": "pithos://a/c/%2e%2e/%2e%2e/b/o"},
            "ERROR: invalid image id 'pithos://a/c/%2e%2e/%2e%2e/b/o': '.' and '..' segments are not allowed",
        ),
    ],
)
def test_create_refuses_bad_input_with_one_line(osdef, tmp_path, change, message):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\xa5" * MiB)
    env = create_env("inst1", disk, OSP_IMG_ID="null", OSP_IMG_FORMAT="diskdump")
    env.update(change)
    result = osdef.run("create", env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.decode().splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1 and errors[0].startswith(message), errors
    assert disk.read_bytes() == b"\xa5" * MiB


def test_export_then_import_round_trip(osdef, tmp_path):
    disk, copy = tmp_path / "disk.raw", tmp_path / "copy.raw"
    data = os.urandom(3 * MiB) + bytes(5 * MiB) + os.urandom(MiB)
    disk.write_bytes(data)
    copy.write_bytes(b"\xa5" * len(data))
    read_fd, write_fd = os.pipe()
    env = create_env("inst1", disk, EXPORT_DEVICE=str(disk), EXPORT_INDEX="0", EXP_SIZE_FD=str(write_fd))
    exported = osdef.run("export", env, pass_fds=(write_fd,))
    os.close(write_fd)
    with os.fdopen(read_fd) as size_pipe:
        assert size_pipe.read() == f"{len(data)}\n"
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == data
    env = create_env("inst2", copy, IMPORT_DEVICE=str(copy), IMPORT_INDEX="0")
    imported = osdef.run("import", env, stdin=exported.stdout)
    assert imported.returncode == 0, imported.stderr
    assert copy.read_bytes() == data


def test_export_splices_into_a_pipe(osdef, tmp_path):
    disk = tmp_path / "disk.raw"
    data = os.urandom(20 * MiB)
    disk.write_bytes(data)
    env = {
        "PATH": "/usr/bin:/bin",
        "SNF_IMAGE_CONFIG_DIR": str(osdef.config_dir),
        "SNF_IMAGE_VARIANTS_DIR": str(osdef.variants_dir),
        **create_env("inst1", disk, EXPORT_DEVICE=str(disk)),
    }
    proc = subprocess.Popen(["./export"], cwd=osdef.os_dir, env=env, stdout=subprocess.PIPE)
    out = proc.stdout.read()
    assert proc.wait() == 0 and out == data
