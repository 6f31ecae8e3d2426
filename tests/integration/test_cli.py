"""The snf-image command: the create pipeline from a plain command line, with a live bar on a terminal."""

import io
import os
import pty
import subprocess

import pytest

from tests.osenv import REPO

MiB = 1024 * 1024


def snf_image(*args, **kwargs):
    return subprocess.run(
        ["/usr/bin/python3", "-m", "snf_image", *args], cwd=REPO, capture_output=True, text=True, timeout=600, **kwargs
    )


@pytest.fixture
def setup(tmp_path):
    """An 8 MiB partitioned image in IMAGE_DIR, a 16 MiB disk of old data, and a settings dir."""
    image, disk = tmp_path / "img.raw", tmp_path / "disk.raw"
    subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
    subprocess.run(["parted", "-s", str(image), "mklabel", "msdos", "mkpart", "primary", "1MiB", "100%"], check=True)
    disk.write_bytes(b"\xa5" * (16 * MiB))
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "snf-image.conf").write_text(f"IMAGE_DIR={tmp_path}\n")
    return image, disk, conf


def deploy_args(disk, conf):
    return [
        "--config-dir",
        str(conf),
        "deploy",
        "--disk",
        str(disk),
        "--image",
        "local://img.raw",
        "--format",
        "diskdump",
        "--no-customize",
    ]


def test_copy_only_deploy_prints_plain_lines_when_not_a_terminal(setup):
    image, disk, conf = setup
    result = snf_image(*deploy_args(disk, conf))
    assert result.returncode == 0, result.stderr
    assert "Starting image copy..." in result.stdout and "copied 8.0 MiB (100.0%)" in result.stdout
    assert "\r" not in result.stdout
    assert disk.read_bytes()[: 8 * MiB] == image.read_bytes()


def test_progress_bar_on_a_terminal(setup):
    _, disk, conf = setup
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execv("/usr/bin/python3", ["python3", "-m", "snf_image", *deploy_args(disk, conf)])
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert b"\r  [########################################] 100.00%" in output


def test_bad_input_is_one_error_line(tmp_path):
    result = snf_image(
        "deploy",
        "--disk",
        str(tmp_path / "nope.raw"),
        "--image",
        "null",
        "--format",
        "diskdump",
        "--properties",
        "{bad",
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "snf-image: error: img_properties: not valid JSON: "
        "Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)"
    ]
    result = snf_image("deploy", "--disk", "x", "--image", "null", "--format", "diskdump", "--set", "HELPER_MEMORY")
    assert result.returncode == 1 and "--set: expected KEY=VALUE" in result.stderr


def test_help_and_version():
    assert snf_image("--version").stdout.startswith("snf-image ")
    assert "deploy" in snf_image("--help").stdout


def test_deploy_takes_an_image_file_by_its_path(setup, tmp_path):
    """--image ./FILE deploys that file (the person chose it), wherever IMAGE_DIR points."""
    image, disk, conf = setup
    (conf / "snf-image.conf").write_text(f"IMAGE_DIR={tmp_path / 'elsewhere'}\n")
    args = deploy_args(disk, conf)
    args[args.index("local://img.raw")] = "./img.raw"
    result = subprocess.run(
        ["/usr/bin/python3", "-m", "snf_image", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert disk.read_bytes()[: 8 * MiB] == image.read_bytes()
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("summary: operation=create instance=snf-image-guest image=local://img.raw source=local")
    assert f"bytes={8 * MiB} " in summary and summary.endswith("result=success"), summary

    args[args.index("./img.raw")] = "./missing.img"
    result = snf_image(*args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "snf-image: error: --image: no such image file: ./missing.img "
        "(an image id needs a scheme: local://, https://, ...)"
    ]


def test_helper_build_says_what_it_does(tmp_path):
    """A helper dir already up to date: said, and nothing built; HELPER_DIR's Ganeti status left alone."""
    from tests import helpervm

    built = helpervm.ensure_helper()
    target = tmp_path / "helper"
    target.mkdir()
    for name in ("image", "kernel", "initrd-base", "packages", ".base-key", "initrd", "version"):
        (target / name).symlink_to(built / name)
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "snf-image.conf").write_text(f"HELPER_DIR={tmp_path / 'other'}\n")
    result = snf_image("--config-dir", str(conf), "helper", "build", "--helper-dir", str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"The helper VM image in {target} is up to date; nothing to build.",
        f"Ganeti uses HELPER_DIR={tmp_path / 'other'}, not this directory.",
    ]


def test_helper_status(tmp_path):
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "snf-image.conf").write_text(f"HELPER_DIR={tmp_path / 'helper'}\n")
    result = snf_image("--config-dir", str(conf), "helper", "status")
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith(
        "snf-image: the helper VM image is not ready: helper image is missing"
    )
    assert "build it with: snf-image helper build" in result.stdout


def test_the_password_comes_from_a_file_or_standard_input(tmp_path, monkeypatch):
    from snf_image import cli

    secret = tmp_path / "pw"
    secret.write_text("s3cret pass\nignored second line\n")
    base = ["deploy", "--disk", "/d", "--image", "null", "--format", "diskdump"]
    env = cli.deploy_environment(cli.parser().parse_args([*base, "--password-file", str(secret)]))
    assert env["OSP_IMG_PASSWD"] == "s3cret pass" and "OSP_IMG_PASSWD_HASH" not in env
    monkeypatch.setattr("sys.stdin", io.StringIO("$6$salt$hash\n"))
    env = cli.deploy_environment(cli.parser().parse_args([*base, "--password-hash-file", "-"]))
    assert env["OSP_IMG_PASSWD_HASH"] == "$6$salt$hash"


def test_a_password_on_the_command_line_is_refused_and_not_echoed(setup):
    _, disk, conf = setup
    for option in ("--password", "--password-hash"):
        result = snf_image(*deploy_args(disk, conf), option, "Pa55-never-echoed")
        assert result.returncode == 1
        assert "refused" in result.stderr and "--password-file" in result.stderr
        assert "Pa55-never-echoed" not in result.stdout + result.stderr
    help_text = snf_image("deploy", "--help").stdout
    assert "--password-file FILE" in help_text and "refused" in help_text


def test_password_file_problems_are_one_error_line(setup, tmp_path):
    _, disk, conf = setup
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for args, message in (
        (["--password-file", str(tmp_path / "missing")], "--password-file: cannot read"),
        (["--password-file", str(empty)], "holds no secret on its first line"),
        (["--password-file", "-", "--password-hash-file", "-"], "only one can read standard input"),
    ):
        result = snf_image(*deploy_args(disk, conf), *args, input="")
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert message in result.stderr


def test_copy_only_deploy_reads_the_password_from_standard_input(setup):
    image, disk, conf = setup
    result = snf_image(*deploy_args(disk, conf), "--password-file", "-", input="from stdin\n")
    assert result.returncode == 0, result.stderr
    assert disk.read_bytes()[: 8 * MiB] == image.read_bytes()
