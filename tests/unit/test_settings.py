"""Settings files: the original's KEY=value syntax parsed (never sourced), YAML beside it, precedence."""

import os
from pathlib import Path

import pytest

from snf_image.errors import OperatorError
from snf_image.settings import load_settings, parse_conf


def test_parse_conf_understands_shell_quoting_and_comments():
    text = """
# comment
export HELPER_MEMORY=1024
DHCP_TAGS="auto dhcp"   # trailing comment
WINDOWS_TIMEZONE='Pacific Standard Time'
EMPTY=
IMG_FORMAT=diskdump
"""
    assert parse_conf(text, "x") == {
        "HELPER_MEMORY": "1024",
        "DHCP_TAGS": "auto dhcp",
        "WINDOWS_TIMEZONE": "Pacific Standard Time",
        "EMPTY": "",
        "IMG_FORMAT": "diskdump",
    }


@pytest.mark.parametrize("text", ["rm -rf /", "A=$(id)", "A=`id`", 'A="unterminated', "lower=1", "A B=1"])
def test_parse_conf_refuses_anything_but_assignments(text):
    with pytest.raises(OperatorError):
        parse_conf(text, "snf-image.conf")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_precedence_defaults_conf_yaml_variant(tmp_path):
    conf = tmp_path / "etc"
    variants = tmp_path / "variants"
    _write(conf / "snf-image.conf", "HELPER_MEMORY=1024\nHELPER_SOFT_TIMEOUT=2m\nIMG_FORMAT=extdump\n")
    _write(conf / "snf-image.yaml", "HELPER_USER: snf\nDHCP_TAGS: [a, b]\nHELPER_DEBUG: true\n")
    _write(variants / "big.conf", "HELPER_MEMORY=2048\nIMG_ID=local://base\n")
    settings = load_settings(conf, variants, "big", ("default", "big"))
    assert settings.helper_memory == 2048
    assert settings.helper_soft_timeout == 120.0
    assert settings.helper_user == "snf" and settings.helper_debug is True
    assert settings.dhcp_tags == ("a", "b")
    assert settings.param_defaults == {"img_format": "extdump", "img_id": "local://base"}
    assert settings.helper_hard_timeout == 5.0 and settings.default_nic_config == "dhcp"


def test_variant_files_are_required(tmp_path):
    with pytest.raises(OperatorError, match="published variant 'default' is missing its config file"):
        load_settings(tmp_path, tmp_path / "v", "default", ("default",))
    with pytest.raises(OperatorError, match="unofficial variant 'other' is unsupported"):
        load_settings(tmp_path, tmp_path / "v", "other", ("default",))
    with pytest.raises(OperatorError, match="invalid OS variant"):
        load_settings(tmp_path, tmp_path / "v", "../etc", ("default",))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("DEFAULT_NIC_CONFIG=dhcp4", "DEFAULT_NIC_CONFIG"),
        ("HELPER_MEMORY=lots", "HELPER_MEMORY"),
        ("HELPER_SOFT_TIMEOUT=soon", "HELPER_SOFT_TIMEOUT"),
        ("HELPER_DEBUG=maybe", "HELPER_DEBUG"),
        ("HELPER_ACCEL=xen", "HELPER_ACCEL"),
        ("HELPER_USER=", "HELPER_USER is empty"),
        ("HELPER_USER='  '", "HELPER_USER is empty"),
        ("HELPER_USER=root", "HELPER_USER: 'root' is privileged"),
        ("HELPER_ALLOW_NO_SECCOMP=perhaps", "HELPER_ALLOW_NO_SECCOMP"),
        ("CONVERTER_MEMORY=0", "CONVERTER_MEMORY"),
        ("CONVERTER_CPU_TIME=forever", "CONVERTER_CPU_TIME"),
    ],
)
def test_bad_values_name_the_setting(tmp_path, line, message):
    _write(tmp_path / "snf-image.conf", line + "\n")
    with pytest.raises(OperatorError, match=message):
        load_settings(tmp_path, tmp_path, "")


def test_converter_limits_default_and_override(tmp_path):
    from snf_image.formats.sandbox import SandboxConfig

    assert SandboxConfig.from_settings(load_settings(tmp_path, tmp_path, "")) == SandboxConfig("nobody", 1024, 1800)
    _write(tmp_path / "snf-image.conf", "HELPER_USER=converter\nCONVERTER_MEMORY=512\nCONVERTER_CPU_TIME=90.5s\n")
    assert SandboxConfig.from_settings(load_settings(tmp_path, tmp_path, "")) == SandboxConfig("converter", 512, 91)


def test_obsolete_keys_of_the_original_still_load(tmp_path, caplog):
    _write(tmp_path / "snf-image.conf", 'XEN_CMD=xl\nCURL="curl -fL"\nVERSION_CHECK=yes\n')
    load_settings(tmp_path, tmp_path, "")
    assert "XEN_CMD is obsolete" in caplog.text


def test_source_priorities_and_disabling(tmp_path):
    _write(tmp_path / "snf-image.conf", 'SOURCE_PRIORITIES="local=60"\nSOURCES_DISABLED="pithos"\n')
    _write(tmp_path / "backends/src/network.priority", "5\n")
    _write(tmp_path / "backends/src/null.disabled", "")
    _write(tmp_path / "backends/src/local.conf", "IMAGE_DIR=/srv/images\n")
    settings = load_settings(tmp_path, tmp_path, "")
    assert settings.source_priority("local", 10) == 60
    assert settings.source_priority("network", 20) == 5
    assert settings.source_priority("pithosmap", 50) == 50
    assert settings.source_disabled("pithos") and settings.source_disabled("null")
    assert not settings.source_disabled("local")
    assert settings.source_config("local")["IMAGE_DIR"] == "/srv/images"


def test_image_cache_settings(tmp_path):
    settings = load_settings(config_dir=tmp_path)
    assert (settings.image_cache_dir, settings.image_cache_size) == (Path("/var/cache/snf-image/images"), 0)
    for value, size in [("0", 0), ("1048576", 1048576), ("500M", 500 << 20), ("20G", 20 << 30), ("1TiB", 1 << 40)]:
        assert load_settings(config_dir=tmp_path, overrides={"IMAGE_CACHE_SIZE": value}).image_cache_size == size
    for bad in ("-1", "1.5G", "lots", ""):
        with pytest.raises(OperatorError, match="IMAGE_CACHE_SIZE must be a size like 0, 500M, 20G"):
            load_settings(config_dir=tmp_path, overrides={"IMAGE_CACHE_SIZE": bad})


def test_helper_max_running(tmp_path):
    def max_running(value: str) -> int:
        _write(tmp_path / "snf-image.conf", f"HELPER_MAX_RUNNING={value}\n")
        return load_settings(tmp_path, tmp_path).helper_max_running

    assert max_running("auto") == len(os.sched_getaffinity(0))
    assert max_running("3") == 3 and max_running("0") == 0
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(OperatorError, match="HELPER_MAX_RUNNING must be auto, a number of helper VMs or 0"):
            max_running(bad)
