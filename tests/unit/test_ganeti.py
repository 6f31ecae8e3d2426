"""The Ganeti environment into typed objects; bad variables are one clear error each."""

import pytest

from snf_image.errors import OperatorError
from snf_image.ganeti import parse_environment

BASE = {"OS_API_VERSION": "20", "OS_NAME": "snf-image", "OS_VARIANT": "default", "DEBUG_LEVEL": "0"}
CREATE = {
    **BASE,
    "INSTANCE_NAME": "inst1.gnt.test",
    "HYPERVISOR": "kvm",
    "DISK_COUNT": "2",
    "DISK_0_PATH": "/srv/ganeti/file-storage/inst1/d0",
    "DISK_0_ACCESS": "rw",
    "DISK_0_SIZE": "64",
    "DISK_0_BACKEND_TYPE": "file:loop",
    "DISK_0_FRONTEND_TYPE": "paravirtual",
    "DISK_1_URI": "rbd:pool/img",
    "DISK_1_ACCESS": "ro",
    "NIC_COUNT": "1",
    "NIC_0_MAC": "AA:00:00:B7:D0:59",
    "NIC_0_IP": "198.51.100.50",
    "NIC_0_NETWORK_SUBNET": "198.51.100.0/24",
    "NIC_0_NETWORK_TAGS": "dhcp nfdhcpd",
    "OSP_IMG_ID": "local://debian",
    "OSP_IMG_PASSWD": "",
    "INSTANCE_HV_disk_type": "paravirtual",
    "INSTANCE_REINSTALL": "1",
}


def test_create_environment_is_typed():
    env = parse_environment(CREATE, "create")
    inst = env.instance
    assert inst.name == "inst1.gnt.test" and inst.hypervisor == "kvm" and inst.reinstall
    assert [d.target for d in inst.disks] == ["/srv/ganeti/file-storage/inst1/d0", "rbd:pool/img"]
    assert inst.disks[0].size_mib == 64 and inst.disks[1].access == "ro"
    assert inst.disks[0].frontend_type == "paravirtual"
    nic = inst.nics[0]
    assert nic.mac == "aa:00:00:b7:d0:59" and nic.network.tags == ("dhcp", "nfdhcpd")
    assert env.os.osparams == {"img_id": "local://debian", "img_passwd": ""}
    assert inst.hvparams == {"disk_type": "paravirtual"}


def test_verify_gets_core_only():
    env = parse_environment({**BASE, "OSP_IMG_FORMAT": "diskdump"}, "verify")
    assert env.instance is None and env.os.osparams == {"img_format": "diskdump"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"OS_API_VERSION": "15"}, "only OS API version 20"),
        ({"OS_API_VERSION": None}, "missing Ganeti environment variable OS_API_VERSION"),
        ({"INSTANCE_NAME": None}, "INSTANCE_NAME"),
        ({"INSTANCE_NAME": ""}, "INSTANCE_NAME"),
        ({"DISK_COUNT": "0"}, "at least one disk"),
        ({"DISK_COUNT": "two"}, "DISK_COUNT is not a number"),
        ({"DISK_COUNT": "3"}, "DISK_2_PATH"),
        ({"DISK_0_ACCESS": "rwx"}, "DISK_0_ACCESS"),
        ({"NIC_0_MAC": "zz:00"}, "NIC_0_MAC"),
        ({"NIC_COUNT": "-1"}, "NIC_COUNT is not a number"),
        ({"DISK_0_SIZE": "1e9"}, "DISK_0_SIZE"),
    ],
)
def test_bad_environment_is_one_clear_error(change, message):
    env = {k: v for k, v in {**CREATE, **change}.items() if v is not None}
    with pytest.raises(OperatorError) as err:
        parse_environment(env, "create")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_rename_needs_old_name():
    with pytest.raises(OperatorError, match="OLD_INSTANCE_NAME"):
        parse_environment(CREATE, "rename")
    env = parse_environment({**CREATE, "OLD_INSTANCE_NAME": "old.gnt.test"}, "rename")
    assert env.instance.old_name == "old.gnt.test"


def test_export_reads_device_and_size_fd():
    env = parse_environment(
        {**CREATE, "EXPORT_DEVICE": "/dev/loop3", "EXPORT_INDEX": "0", "EXP_SIZE_FD": "11"}, "export"
    )
    assert env.transfer.path == "/dev/loop3" and env.transfer.size_fd == 11
    with pytest.raises(OperatorError, match="IMPORT_DEVICE"):
        parse_environment(CREATE, "import")
