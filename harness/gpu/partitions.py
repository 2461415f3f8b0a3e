"""GPU slot partitions by name, and the GPU-type name profiles are filed under.

Partition names (the `cluster.partition` of a config and the stem of a
profile file):

- `whole`: the whole GPU, no MPS.
- `mps<percent>` (mps25, mps50, ...): an MPS client share with
  CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=<percent>, 1..100.
- `mig-<profile>-emulated` (mig-1g.10gb-emulated, ...): an H100 MIG profile
  emulated as an MPS share of as many SMs, percentage = ceil(100 * SMs / 132).
  Only compute is emulated: memory and L2 are not split, so profiles measured
  this way say `emulated_partition: true`.
- `mig-<profile>` (mig-1g.10gb, ...): a real MIG instance that already exists
  on the machine, found through NVML and used by its UUID
  (CUDA_VISIBLE_DEVICES=MIG-<uuid>). Nothing here ever creates or destroys MIG
  instances or changes any GPU setting.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

from harness.errors import HarnessError

WHOLE = "whole"
H100_SMS = 132
# SMs of each H100 MIG compute profile (of 132 on the whole GPU).
MIG_PROFILE_SMS = {
    "1g.10gb": 16,
    "1g.20gb": 26,
    "2g.20gb": 32,
    "3g.40gb": 60,
    "4g.40gb": 64,
    "7g.80gb": 132,
}
EMULATED_SUFFIX = "-emulated"


@dataclass(frozen=True)
class Partition:
    """What a partition name means for the process that runs on it."""

    name: str
    kind: str                      # whole | mps | mig-emulated | mig
    mps_percentage: int | None     # CUDA_MPS_ACTIVE_THREAD_PERCENTAGE, for mps and mig-emulated
    mig_profile: str | None = None
    emulated_sms: int | None = None

    @property
    def emulated(self) -> bool:
        return self.kind == "mig-emulated"

    @property
    def uses_mps(self) -> bool:
        return self.mps_percentage is not None

    @property
    def shares_per_gpu(self) -> int:
        """How many slots of this partition one GPU holds: MPS shares fill it (four mps25), MIG
        slices as the profile allows (seven 1g), a whole GPU is one."""
        if self.mig_profile is not None:
            return max(1, 7 // self.mig_slices)
        return max(1, 100 // self.mps_percentage) if self.uses_mps else 1

    @property
    def mig_slices(self) -> int:
        """Compute slices of a MIG profile, of the GPU's seven ('3g.40gb' -> 3)."""
        return int(self.mig_profile.split("g", 1)[0]) if self.mig_profile else 7

    @property
    def share(self) -> float:
        """The fraction of its GPU this partition holds: 1 whole, p/100 for mps<p>, slices/7 for MIG."""
        if self.mig_profile is not None:
            return self.mig_slices / 7
        return self.mps_percentage / 100 if self.uses_mps else 1.0


def mig_emulation_percentage(sms: int, total_sms: int = H100_SMS) -> int:
    return math.ceil(100 * sms / total_sms)


@functools.lru_cache(maxsize=None)   # a few names, read per slot whenever a placement of hundreds is checked
def parse_partition(name: str) -> Partition:
    name = name.strip()
    if name == WHOLE:
        return Partition(name, "whole", None)
    mps = re.fullmatch(r"mps(\d+)", name)
    if mps:
        percentage = int(mps.group(1))
        if not 1 <= percentage <= 100:
            raise HarnessError(f"partition '{name}': the MPS percentage must be 1..100 (e.g. mps25, mps50)")
        return Partition(name, "mps", percentage)
    if name.startswith("mig-"):
        emulated = name.endswith(EMULATED_SUFFIX)
        profile = name[len("mig-"):len(name) - len(EMULATED_SUFFIX) if emulated else None]
        if profile not in MIG_PROFILE_SMS:
            raise HarnessError(f"partition '{name}': unknown MIG profile '{profile}'; "
                               f"known: {', '.join(MIG_PROFILE_SMS)}")
        if emulated:
            sms = MIG_PROFILE_SMS[profile]
            return Partition(name, "mig-emulated", mig_emulation_percentage(sms), profile, sms)
        return Partition(name, "mig", None, profile)
    raise HarnessError(f"unknown partition '{name}'; use whole, mps<percent> (e.g. mps50), "
                       f"mig-<profile>-emulated or mig-<profile> (profiles: {', '.join(MIG_PROFILE_SMS)})")


def parse_partitions(names: str) -> list[Partition]:
    """A comma-separated list, e.g. 'whole,mps50,mig-1g.10gb-emulated'; duplicates are an error."""
    parts = [parse_partition(n) for n in names.split(",") if n.strip()]
    if not parts:
        raise HarnessError("no partition given; e.g. --partition whole,mps50")
    seen = [p.name for p in parts]
    if len(set(seen)) != len(seen):
        raise HarnessError(f"partition list '{names}' names one partition twice")
    return parts


def gpu_type_from_name(gpu_name: str) -> str:
    """The short GPU type profiles are filed under: 'NVIDIA H100 80GB HBM3' -> 'h100'.

    Rule: the first word of one or two letters followed by digits (H100,
    H200, A100, L40S's L40, GH200, T4), lowercased. A name without such a word
    becomes its words without 'NVIDIA', lowercased and joined by '-'
    ('NVIDIA GeForce RTX 4090' -> 'geforce-rtx-4090').
    """
    match = re.search(r"(?<![A-Za-z0-9])([A-Za-z]{1,2}\d{1,4})(?![0-9])", gpu_name)
    if match:
        return match.group(1).lower()
    words = [w for w in re.split(r"[^A-Za-z0-9]+", gpu_name.lower()) if w and w != "nvidia"]
    if not words:
        raise HarnessError(f"cannot derive a GPU type from the GPU name '{gpu_name}'")
    return "-".join(words)


def find_mig_instance(profile: str, nvml=None) -> tuple[str, str]:
    """(UUID, device name) of an existing MIG instance with this profile, found through NVML.

    The UUID is what CUDA_VISIBLE_DEVICES takes ('MIG-...'). Raises
    HarnessError when NVML is missing, MIG is off, or no instance matches.
    """
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            raise HarnessError("real MIG partitions need nvidia-ml-py (import pynvml); "
                               f"or use mig-{profile}{EMULATED_SUFFIX}") from None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise HarnessError(f"NVML is unavailable ({exc}); real MIG partitions need an NVIDIA GPU "
                           f"with MIG instances; or use mig-{profile}{EMULATED_SUFFIX}") from None
    try:
        seen = []
        for i in range(nvml.nvmlDeviceGetCount()):
            parent = nvml.nvmlDeviceGetHandleByIndex(i)
            try:
                current, _pending = nvml.nvmlDeviceGetMigMode(parent)
            except nvml.NVMLError:
                continue                      # MIG not supported on this GPU
            if current != nvml.NVML_DEVICE_MIG_ENABLE:
                continue
            for j in range(nvml.nvmlDeviceGetMaxMigDeviceCount(parent)):
                try:
                    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(parent, j)
                except nvml.NVMLError:
                    continue                  # no instance in this slot
                name = _text(nvml.nvmlDeviceGetName(mig))
                seen.append(name)
                if name.endswith(f" {profile}") or f"MIG {profile}" in name:
                    return _text(nvml.nvmlDeviceGetUUID(mig)), name
    finally:
        nvml.nvmlShutdown()
    found = f"MIG instances present: {', '.join(seen)}" if seen else "no MIG instance exists (MIG is off)"
    raise HarnessError(f"no MIG instance with profile {profile} on this machine ({found}); this harness never "
                       f"creates one: use mig-{profile}{EMULATED_SUFFIX} or ask the machine's owner")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
