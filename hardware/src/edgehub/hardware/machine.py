"""What this machine is: facts from /proc and /sys, read into a frozen ``Machine``.

Every file is read under ``root``, so a test can point ``detect`` at a folder of crafted files and an
operator can inspect a mounted device image. Nothing here runs a program (no lscpu, no lspci): the files
those tools read are the source, and they exist in minimal images and containers where the tools do not.
A missing file is normal (x86 has no device tree, containers hide parts of /sys): the fact becomes
unknown ("" or 0) and detection carries on.

Two counts for CPUs and memory: ``cores``/``memory_mb`` describe the board (what a profile matches on, so a
Pi 5 in a 2-core container is still a Pi 5), ``usable_cores``/``usable_memory_mb`` are what this process
may use after CPU affinity and cgroup limits (what settings are derived from).
"""

from __future__ import annotations

import fnmatch
import math
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

StorageClass = Literal["nvme", "ssd", "hdd", "emmc", "sd", "virtual", "unknown"]
Accelerator = Literal["nvidia-jetson", "nvidia-gpu", "amd-gpu", "intel-gpu", "hailo"]

# "CPU implementer" and "CPU part" of ARM cores: /proc/cpuinfo on ARM names neither vendor nor model.
_ARM_VENDORS = {"0x41": "ARM", "0x4e": "NVIDIA", "0x51": "Qualcomm", "0x61": "Apple", "0xc0": "Ampere"}
_ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd0d": "Cortex-A77",
    "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE",
    "0xd4b": "Cortex-A78C",
    "0xd40": "Neoverse-V1",
    "0xd49": "Neoverse-N2",
}
# PCI vendor ids of the accelerators a profile may ask for; other display devices (virtio-gpu, QEMU's VGA,
# BMC graphics) are not accelerators and are ignored.
_PCI_ACCELERATORS: dict[str, Accelerator] = {
    "0x10de": "nvidia-gpu",
    "0x1002": "amd-gpu",
    "0x8086": "intel-gpu",
    "0x1e60": "hailo",
}
_PCI_DISPLAY, _PCI_PROCESSING_ACCELERATOR = "0x03", "0x12"
_VIRTUAL_DISKS = ("loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd")


@dataclass(frozen=True)
class Disk:
    """A block device under /sys/block (virtual ones such as loop, zram and device-mapper left out)."""

    name: str
    """Kernel name: ``nvme0n1``, ``mmcblk0``, ``sda``."""
    storage: StorageClass
    """Class from the name, the rotational flag and, for MMC, the card type; ``virtual`` for a VM's disk."""
    size_mb: int
    removable: bool


@dataclass(frozen=True)
class Machine:
    """The facts a profile matches on and settings are derived from."""

    arch: str
    """Kernel machine name: ``x86_64``, ``aarch64``; "" if unknown."""
    cpu_vendor: str
    """``GenuineIntel``, ``AuthenticAMD``, or the ARM implementer's name (``ARM``, ``NVIDIA``)."""
    cpu_model: str
    """x86 ``model name``; on ARM the core's name from its part number (``Cortex-A76``)."""
    cpu_flags: frozenset[str]
    """x86 ``flags`` or ARM ``Features`` (``avx2``, ``asimddp``)."""
    cores: int
    """Processors the kernel lists in /proc/cpuinfo: the board's count."""
    usable_cores: int
    """Cores this process may run on: CPU affinity, capped by the cgroup CPU quota."""
    memory_mb: int
    """MemTotal in MiB; 0 if unknown."""
    usable_memory_mb: int
    """MemTotal capped by the cgroup memory limit; 0 if unknown."""
    device_model: str
    """Device-tree model (``Raspberry Pi 5 Model B Rev 1.0``), else DMI vendor and product; "" if none."""
    accelerators: tuple[Accelerator, ...]
    """Sorted, without duplicates."""
    storage: StorageClass
    """Class of the primary disk (the largest fixed one)."""
    disks: tuple[Disk, ...]

    @property
    def primary_disk_mb(self) -> int:
        """Size of the primary disk (the largest fixed one, as for ``storage``); 0 if unknown."""
        fixed = [d for d in self.disks if not d.removable] or list(self.disks)
        return max((d.size_mb for d in fixed), default=0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: flags sorted, disks as dicts."""
        out = asdict(self)
        out["cpu_flags"] = sorted(self.cpu_flags)
        out["accelerators"] = list(self.accelerators)
        return out


def detect(root: Path = Path("/")) -> Machine:
    """Read the machine under ``root``; never raises for missing or unreadable files."""
    cpu = _cpuinfo(_read(root / "proc/cpuinfo"))
    cores = cpu.count or _own_cpu_count(root)
    memory_mb = _meminfo_mb(_read(root / "proc/meminfo"))
    cgroup = _cgroup_dirs(root)
    cpu_quota = min((q for d in cgroup if (q := _cpu_quota(_read(d / "cpu.max")))), default=0)
    mem_limit = min((m for d in cgroup if (m := _memory_limit_mb(_read(d / "memory.max")))), default=0)
    usable = _allowed_cores(_read(root / "proc/self/status"))
    model = _device_model(root)
    disks = _disks(root)
    return Machine(
        arch=_arch(root, cpu),
        cpu_vendor=cpu.vendor,
        cpu_model=cpu.model,
        cpu_flags=cpu.flags,
        cores=cores,
        usable_cores=_min_known(usable, cores, cpu_quota),
        memory_mb=memory_mb,
        usable_memory_mb=_min_known(memory_mb, mem_limit),
        device_model=model,
        accelerators=_accelerators(root, model),
        storage=_primary_storage(disks),
        disks=disks,
    )


def _min_known(*values: int) -> int:
    """The tightest of the limits that are known (0 means unknown)."""
    return min((v for v in values if v > 0), default=0)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class _Cpu:
    count: int
    vendor: str
    model: str
    flags: frozenset[str]
    arm_architecture: str


def _cpuinfo(text: str) -> _Cpu:
    fields: dict[str, str] = {}
    count = 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        count += key == "processor"
        fields.setdefault(key, value)  # the first processor speaks for all: boards with mixed cores are rare
    vendor = fields.get("vendor_id") or _ARM_VENDORS.get(fields.get("CPU implementer", "").lower(), "")
    model = (
        fields.get("model name")
        or _ARM_PARTS.get(fields.get("CPU part", "").lower(), "")
        or fields.get("uarch", "")  # RISC-V
    )
    flags = fields.get("flags") or fields.get("Features") or ""
    return _Cpu(count, vendor, model, frozenset(flags.split()), fields.get("CPU architecture", ""))


def _arch(root: Path, cpu: _Cpu) -> str:
    arch = _read(root / "proc/sys/kernel/arch").strip()
    if arch:
        return arch
    if root == Path("/"):
        return platform.machine()
    # a crafted root without the sysctl (kernels before 6.1 lack it): infer from cpuinfo
    if cpu.arm_architecture == "8":
        return "aarch64"
    if cpu.arm_architecture == "7":
        return "armv7l"
    return "x86_64" if "lm" in cpu.flags else ""


def _own_cpu_count(root: Path) -> int:
    """Fallback when /proc/cpuinfo lists no processors; only meaningful for the real root."""
    return (os.cpu_count() or 0) if root == Path("/") else 0


def _meminfo_mb(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            return int(parts[1]) // 1024 if len(parts) > 1 and parts[1].isdigit() else 0
    return 0


def _allowed_cores(status: str) -> int:
    """Count ``Cpus_allowed_list`` (``0-3,6``): the affinity mask without a syscall, so roots can be faked."""
    for line in status.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            total = 0
            for part in line.split(":", 1)[1].strip().split(","):
                lo, _, hi = part.partition("-")
                if lo.strip().isdigit():
                    total += (int(hi) if hi.strip().isdigit() else int(lo)) - int(lo) + 1
            return total
    return 0


def _cgroup_dirs(root: Path) -> list[Path]:
    """The cgroup v2 folders of this process, leaf to top: a limit anywhere on the path applies."""
    for line in _read(root / "proc/self/cgroup").splitlines():
        if line.startswith("0::"):
            rel = Path(line[3:].strip().lstrip("/"))
            base = root / "sys/fs/cgroup"
            return [base / p for p in (rel, *rel.parents)]
    return []


def _cpu_quota(text: str) -> int:
    """``cpu.max`` is ``QUOTA PERIOD`` or ``max PERIOD``; a quota of 1.5 periods lets 2 threads run."""
    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit() or int(parts[1]) == 0:
        return 0
    return max(1, math.ceil(int(parts[0]) / int(parts[1])))


def _memory_limit_mb(text: str) -> int:
    value = text.strip()
    return int(value) // (1024 * 1024) if value.isdigit() else 0


def _device_model(root: Path) -> str:
    for path in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        model = _read(root / path).replace("\x00", "").strip()
        if model:
            return model
    dmi = root / "sys/class/dmi/id"
    parts = [_read(dmi / "sys_vendor").strip(), _read(dmi / "product_name").strip()]
    return " ".join(p for p in parts if p)


def _accelerators(root: Path, device_model: str) -> tuple[Accelerator, ...]:
    found: set[Accelerator] = set()
    dev = root / "dev"
    # Jetson: nvhost-* nodes (JetPack 5), nvgpu/ (JetPack 6) or the board's own name in the device tree
    if _any(dev, "nvhost-*") or (dev / "nvgpu").exists() or "nvidia jetson" in device_model.lower():
        found.add("nvidia-jetson")
    if _any(dev, "nvidia[0-9]*"):
        found.add("nvidia-gpu")
    for device in _listdir(root / "sys/bus/pci/devices"):
        kind = _PCI_ACCELERATORS.get(_read(device / "vendor").strip().lower())
        pci_class = _read(device / "class").strip().lower()
        if kind == "hailo" or (kind and pci_class.startswith((_PCI_DISPLAY, _PCI_PROCESSING_ACCELERATOR))):
            found.add(kind)
    return tuple(sorted(found))


def _listdir(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError:
        return []


def _any(folder: Path, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(p.name, pattern) for p in _listdir(folder))


def _disks(root: Path) -> tuple[Disk, ...]:
    disks = []
    for block in _listdir(root / "sys/block"):
        if block.name.startswith(_VIRTUAL_DISKS):
            continue
        size = _read(block / "size").strip()
        disks.append(
            Disk(
                name=block.name,
                storage=_storage_class(block),
                size_mb=int(size) * 512 // (1024 * 1024) if size.isdigit() else 0,
                removable=_read(block / "removable").strip() == "1",
            )
        )
    return tuple(disks)


def _storage_class(block: Path) -> StorageClass:
    if block.name.startswith("nvme"):
        return "nvme"
    if block.name.startswith("mmcblk"):
        return "emmc" if _read(block / "device/type").strip() == "MMC" else "sd"
    if block.name.startswith(("vd", "xvd")):
        return "virtual"  # virtio and Xen disks claim to rotate whatever backs them
    rotational = _read(block / "queue/rotational").strip()
    return "hdd" if rotational == "1" else "ssd" if rotational == "0" else "unknown"


def _primary_storage(disks: tuple[Disk, ...]) -> StorageClass:
    """The largest fixed disk is taken to hold the data dir: USB sticks and SD readers rarely do."""
    fixed = [d for d in disks if not d.removable] or list(disks)
    return max(fixed, key=lambda d: d.size_mb).storage if fixed else "unknown"
