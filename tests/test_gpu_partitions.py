"""Partition names -> MPS shares and MIG emulation; GPU names -> profile GPU types (no GPU needed)."""

import types

import pytest

from harness.errors import HarnessError
from harness.gpu.partitions import (MIG_PROFILE_SMS, find_mig_instance, gpu_type_from_name, parse_partition,
                                    parse_partitions)


def test_whole_uses_no_mps():
    p = parse_partition("whole")
    assert (p.kind, p.mps_percentage, p.emulated, p.uses_mps) == ("whole", None, False, False)


@pytest.mark.parametrize("name, percentage", [("mps25", 25), ("mps50", 50), ("mps1", 1), ("mps100", 100)])
def test_mps_share_percentage(name, percentage):
    p = parse_partition(name)
    assert p.kind == "mps" and p.mps_percentage == percentage and not p.emulated


@pytest.mark.parametrize("name, sms, percentage", [
    ("mig-1g.10gb-emulated", 16, 13),      # ceil(100 * 16 / 132) = ceil(12.1)
    ("mig-1g.20gb-emulated", 26, 20),
    ("mig-2g.20gb-emulated", 32, 25),
    ("mig-3g.40gb-emulated", 60, 46),
    ("mig-4g.40gb-emulated", 64, 49),
    ("mig-7g.80gb-emulated", 132, 100),
])
def test_mig_emulation_is_an_mps_share_sized_by_sms(name, sms, percentage):
    p = parse_partition(name)
    assert p.kind == "mig-emulated" and p.emulated and p.uses_mps
    assert p.emulated_sms == sms == MIG_PROFILE_SMS[p.mig_profile]
    assert p.mps_percentage == percentage


def test_real_mig_partition_is_not_emulated_and_uses_no_mps():
    p = parse_partition("mig-3g.40gb")
    assert (p.kind, p.mig_profile, p.emulated, p.mps_percentage) == ("mig", "3g.40gb", False, None)


@pytest.mark.parametrize("name", ["mps0", "mps101", "mps", "mig-5g.50gb-emulated", "mig-", "half", "MPS50"])
def test_bad_partition_names_are_refused(name):
    with pytest.raises(HarnessError, match="partition"):
        parse_partition(name)


def test_partition_list():
    assert [p.name for p in parse_partitions("whole, mps50,mig-1g.10gb-emulated")] == \
        ["whole", "mps50", "mig-1g.10gb-emulated"]
    with pytest.raises(HarnessError, match="twice"):
        parse_partitions("mps50,mps50")
    with pytest.raises(HarnessError, match="no partition"):
        parse_partitions(" , ")


@pytest.mark.parametrize("gpu_name, gpu_type", [
    ("NVIDIA H100 80GB HBM3", "h100"),
    ("NVIDIA H200", "h200"),
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "h100"),
    ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA GH200 480GB", "gh200"),
    ("Tesla T4", "t4"),
    ("NVIDIA GeForce RTX 4090", "geforce-rtx-4090"),
])
def test_gpu_type_from_name(gpu_name, gpu_type):
    assert gpu_type_from_name(gpu_name) == gpu_type


class FakeNvml(types.SimpleNamespace):
    """Just enough of pynvml for MIG discovery: one GPU with MIG on and one 1g.10gb instance."""

    class NVMLError(Exception):
        pass

    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(self, mig_on=True):
        super().__init__(mig_on=mig_on, shut=False)

    def nvmlInit(self): pass
    def nvmlShutdown(self): self.shut = True
    def nvmlDeviceGetCount(self): return 1
    def nvmlDeviceGetHandleByIndex(self, i): return "gpu0"
    def nvmlDeviceGetMigMode(self, h): return (1 if self.mig_on else 0, 0)
    def nvmlDeviceGetMaxMigDeviceCount(self, h): return 2

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, j):
        if j == 1:
            raise self.NVMLError("not found")
        return "mig0"

    def nvmlDeviceGetName(self, h): return "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    def nvmlDeviceGetUUID(self, h): return "MIG-1234"


def test_existing_mig_instance_is_found_by_profile():
    nvml = FakeNvml()
    assert find_mig_instance("1g.10gb", nvml) == ("MIG-1234", "NVIDIA H100 80GB HBM3 MIG 1g.10gb")
    assert nvml.shut


def test_missing_mig_instance_says_to_emulate():
    with pytest.raises(HarnessError, match="mig-3g.40gb-emulated"):
        find_mig_instance("3g.40gb", FakeNvml())
    with pytest.raises(HarnessError, match="MIG is off"):
        find_mig_instance("1g.10gb", FakeNvml(mig_on=False))
