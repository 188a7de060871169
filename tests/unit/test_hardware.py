"""Hardware profiles: detection from crafted /proc and /sys trees, matching, derived settings, and broken
profile files reported with their path and field."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgehub.edge.config import EdgeConfig
from edgehub.edge.store.retention import rules_of
from edgehub.hardware import (
    BUILTIN_PROFILES,
    Disk,
    Machine,
    NoMatchingProfile,
    ProfileError,
    derive,
    detect,
    load_profile,
    load_profiles,
    match,
    profile_schema,
)

PI5_FEATURES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
)
X86_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep lm sse sse2 ssse3 sse4_1 sse4_2 avx fma avx2 bmi2"


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def arm_cpuinfo(cores: int, part: str, extra: str = "") -> str:
    block = (
        "processor\t: {n}\nFeatures\t: {f}\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: {p}\n\n"
    )
    return "".join(block.format(n=n, f=PI5_FEATURES, p=part) for n in range(cores)) + extra


def x86_cpuinfo(cores: int, model: str, flags: str = X86_FLAGS) -> str:
    block = "processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: {m}\nflags\t\t: {f}\n\n"
    return "".join(block.format(n=n, m=model, f=flags) for n in range(cores))


def meminfo(mb: int) -> str:
    return f"MemTotal:       {mb * 1024} kB\nMemFree:        1024 kB\n"


def disk(name: str, gb: int, rotational: str = "0", removable: str = "0") -> dict[str, str]:
    return {
        f"sys/block/{name}/size": str(gb * 1024 * 1024 * 2),
        f"sys/block/{name}/queue/rotational": rotational,
        f"sys/block/{name}/removable": removable,
    }


@pytest.fixture
def pi5_root(tmp_path: Path) -> Path:
    return write(
        tmp_path,
        {
            "proc/sys/kernel/arch": "aarch64\n",
            "proc/cpuinfo": arm_cpuinfo(4, "0xd0b", "Model\t\t: Raspberry Pi 5 Model B Rev 1.0\n"),
            "proc/meminfo": meminfo(8048),
            "proc/device-tree/model": "Raspberry Pi 5 Model B Rev 1.0\x00",
            "proc/self/status": "Name:\tpython\nCpus_allowed_list:\t0-3\n",
            **disk("mmcblk0", 64),
            "sys/block/mmcblk0/device/type": "SD\n",
            **disk("loop0", 1),
        },
    )


@pytest.fixture
def jetson_root(tmp_path: Path) -> Path:
    return write(
        tmp_path,
        {
            "proc/sys/kernel/arch": "aarch64\n",
            "proc/cpuinfo": arm_cpuinfo(6, "0xd42"),
            "proc/meminfo": meminfo(7620),
            "proc/device-tree/model": "NVIDIA Jetson Orin Nano Developer Kit\x00",
            "dev/nvhost-ctrl-gpu": "",
            **disk("nvme0n1", 256),
            **disk("mmcblk0", 32),
        },
    )


@pytest.fixture
def ipc_root(tmp_path: Path) -> Path:
    return write(
        tmp_path,
        {
            "proc/sys/kernel/arch": "x86_64\n",
            "proc/cpuinfo": x86_cpuinfo(8, "11th Gen Intel(R) Core(TM) i5-1145G7E @ 2.60GHz"),
            "proc/meminfo": meminfo(15800),
            "sys/class/dmi/id/sys_vendor": "Advantech\n",
            "sys/class/dmi/id/product_name": "UNO-2484G\n",
            "sys/bus/pci/devices/0000:00:02.0/vendor": "0x8086\n",
            "sys/bus/pci/devices/0000:00:02.0/class": "0x030000\n",
            "sys/bus/pci/devices/0000:00:1f.0/vendor": "0x8086\n",
            "sys/bus/pci/devices/0000:00:1f.0/class": "0x060100\n",
            **disk("sda", 480, rotational="0"),
            **disk("sdb", 2000, rotational="1", removable="1"),
        },
    )


@pytest.fixture
def rock5_root(tmp_path: Path) -> Path:
    """An ARM board no profile names: 8 cores, 16 GB."""
    return write(
        tmp_path,
        {
            "proc/sys/kernel/arch": "aarch64\n",
            "proc/cpuinfo": arm_cpuinfo(8, "0xd0b"),
            "proc/meminfo": meminfo(15900),
            "proc/device-tree/model": "Radxa ROCK 5 Model B\x00",
            **disk("mmcblk1", 128),
            "sys/block/mmcblk1/device/type": "MMC\n",
        },
    )


def test_a_raspberry_pi_5_is_detected_and_gets_its_profile(pi5_root: Path) -> None:
    machine = detect(pi5_root)
    assert (machine.arch, machine.cpu_vendor, machine.cpu_model) == ("aarch64", "ARM", "Cortex-A76")
    assert (machine.cores, machine.usable_cores, machine.memory_mb) == (4, 4, 8048)
    assert "asimddp" in machine.cpu_flags
    assert machine.device_model == "Raspberry Pi 5 Model B Rev 1.0"
    assert machine.storage == "sd"
    assert [d.name for d in machine.disks] == ["mmcblk0"]  # loop devices are not disks
    assert match(machine, load_profiles()).name == "raspberry-pi-5"


def test_a_jetson_orin_nano_is_detected_with_its_accelerator(jetson_root: Path) -> None:
    machine = detect(jetson_root)
    assert machine.cpu_model == "Cortex-A78AE"
    assert machine.accelerators == ("nvidia-jetson",)
    assert machine.storage == "nvme"  # the larger fixed disk, not the eMMC/SD
    assert match(machine, load_profiles()).name == "jetson-orin-nano"


def test_an_x86_industrial_pc_is_detected_with_its_gpu_and_ssd(ipc_root: Path) -> None:
    machine = detect(ipc_root)
    assert machine.cpu_vendor == "GenuineIntel"
    assert machine.device_model == "Advantech UNO-2484G"
    assert machine.accelerators == ("intel-gpu",)  # the ISA bridge (class 0x06) is not one
    assert machine.storage == "ssd"  # the removable 2 TB HDD does not count as primary
    assert match(machine, load_profiles()).name == "x86-ipc"


def test_an_unknown_arm_board_gets_the_generic_profile(rock5_root: Path) -> None:
    machine = detect(rock5_root)
    assert machine.storage == "emmc"
    assert match(machine, load_profiles()).name == "generic"


def test_an_x86_pc_without_avx2_gets_the_generic_profile(tmp_path: Path) -> None:
    write(tmp_path, {"proc/cpuinfo": x86_cpuinfo(4, "Intel(R) Atom(TM) x6425E", "lm sse4_2"), **_mem(8000)})
    machine = detect(tmp_path)
    assert machine.arch == "x86_64"  # inferred from the lm flag: no /proc/sys/kernel/arch here
    assert match(machine, load_profiles()).name == "generic"


def _mem(mb: int) -> dict[str, str]:
    return {"proc/meminfo": meminfo(mb)}


def test_an_empty_root_is_all_unknown_and_still_gets_the_generic_profile(tmp_path: Path) -> None:
    machine = detect(tmp_path)
    assert (machine.arch, machine.cores, machine.memory_mb, machine.storage) == ("", 0, 0, "unknown")
    profile = match(machine, load_profiles())
    assert profile.name == "generic"
    settings = derive(machine, profile)
    assert settings.threads == profile.runtime.threads  # nothing known to cap it with
    assert settings.sandbox_memory_mb == profile.runtime.sandbox.memory_mb


def test_affinity_and_cgroup_limits_lower_the_usable_share_not_the_board(pi5_root: Path) -> None:
    write(
        pi5_root,
        {
            "proc/self/status": "Cpus_allowed_list:\t0-2\n",
            "proc/self/cgroup": "0::/system.slice/edgehub.service\n",
            "sys/fs/cgroup/system.slice/edgehub.service/cpu.max": "150000 100000\n",
            "sys/fs/cgroup/system.slice/edgehub.service/memory.max": "max\n",
            "sys/fs/cgroup/system.slice/memory.max": str(2048 * 1024 * 1024),
        },
    )
    machine = detect(pi5_root)
    assert (machine.cores, machine.usable_cores) == (4, 2)  # 1.5 CPUs of quota: 2 threads may run
    assert (machine.memory_mb, machine.usable_memory_mb) == (8048, 2048)  # the parent's limit applies
    profile = match(machine, load_profiles())
    assert profile.name == "raspberry-pi-5"
    assert derive(machine, profile).threads == 2


def test_virtio_disks_are_virtual_whatever_they_claim(tmp_path: Path) -> None:
    write(tmp_path, disk("vda", 100, rotational="1"))
    assert detect(tmp_path).storage == "virtual"


def test_the_most_specific_matching_profile_wins(tmp_path: Path, pi5_root: Path) -> None:
    folder = tmp_path / "extra"
    folder.mkdir()
    # more criteria than the Pi 5 profile, but it names no product: the Pi 5 profile still wins
    _profile(
        folder,
        "big-arm",
        match='arch = ["aarch64"]\nmin_cores = 4\nmin_memory_mb = 4000\ncpu_flags = ["asimd"]',
    )
    profiles = load_profiles(BUILTIN_PROFILES, folder)
    machine = detect(pi5_root)
    assert match(machine, profiles).name == "raspberry-pi-5"
    assert match(dataclasses.replace(machine, device_model="Radxa ROCK 5"), profiles).name == "big-arm"


def test_without_the_fallback_an_unmatched_machine_is_explained(tmp_path: Path, rock5_root: Path) -> None:
    only_pi = [p for p in load_profiles() if p.name == "raspberry-pi-5"]
    with pytest.raises(NoMatchingProfile) as exc:
        match(detect(rock5_root), only_pi)
    assert "Radxa ROCK 5" in str(exc.value.reasons["raspberry-pi-5"])


# -- profile files ---------------------------------------------------------------------------------------

RUNTIME = """
[runtime]
threads = 2
n_ctx = 2048
n_batch = 64
[runtime.model]
name = "m"
quantisation = "Q4_K_M"
max_params_b = 0.5
max_file_mb = 400
[runtime.snapshot]
max_mb = 256
[runtime.sandbox]
memory_mb = 256
"""


def _profile(folder: Path, name: str, *, match: str = "", runtime: str = RUNTIME, head: str = "") -> Path:
    path = folder / f"{name}.toml"
    text = head or f'version = 1\nname = "{name}"\ndescription = "test"\n'
    path.write_text(f"{text}\n[match]\n{match}\n{runtime}")
    return path


def test_every_shipped_profile_loads_and_validates_against_the_json_schema() -> None:
    schema = profile_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    paths = sorted(BUILTIN_PROFILES.glob("*.toml"))
    assert {p.stem for p in paths} >= {"raspberry-pi-5", "jetson-orin-nano", "x86-ipc", "generic"}
    for path in paths:
        jsonschema.validate(json.loads(json.dumps(tomllib.loads(path.read_text()))), schema)
        assert load_profile(path).source == path


def test_the_json_schema_rejects_what_the_loader_rejects() -> None:
    data = tomllib.loads((BUILTIN_PROFILES / "generic.toml").read_text())
    data["runtime"]["treads"] = 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, profile_schema())


@pytest.mark.parametrize(
    ("edit", "field", "reason"),
    [
        ({"runtime": RUNTIME + "[oops\n"}, None, "not valid TOML"),
        ({"runtime": RUNTIME.replace("threads = 2\n", "")}, "runtime.threads", "required field missing"),
        ({"runtime": RUNTIME.replace("threads = 2", 'threads = "two"')}, "runtime.threads", "integer"),
        ({"runtime": RUNTIME.replace("threads = 2", "treads = 2")}, "runtime.treads", "unknown key"),
        ({"match": "min_cores = 8\nmax_cores = 4"}, "match", "min_cores (8) is above max_cores (4)"),
        ({"match": 'accelerators = ["tpu"]'}, "match.accelerators.0", "nvidia-jetson"),
        ({"head": 'version = 2\nname = "broken"\ndescription = "x"\n'}, "version", "1"),
        ({"head": 'version = 1\nname = "other"\ndescription = "x"\n'}, "name", "differs from the file name"),
        (
            {"runtime": RUNTIME.replace("max_mb = 256", 'max_mb = 256\ndir = "snaps"')},
            "runtime.snapshot",
            "absolute",
        ),
    ],
)
def test_a_broken_profile_names_its_file_and_field(
    tmp_path: Path, edit: dict[str, str], field: str | None, reason: str
) -> None:
    path = _profile(tmp_path, "broken", **edit)
    with pytest.raises(ProfileError) as exc:
        load_profile(path)
    assert exc.value.path == path
    assert exc.value.field == field
    assert reason in exc.value.reason
    assert str(path) in str(exc.value)


def test_one_broken_file_fails_the_whole_folder(tmp_path: Path) -> None:
    _profile(tmp_path, "good")
    (tmp_path / "bad.toml").write_text("version = [\n")
    with pytest.raises(ProfileError) as exc:
        load_profiles(BUILTIN_PROFILES, tmp_path)
    assert exc.value.path == tmp_path / "bad.toml"


def test_a_missing_folder_is_a_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not a folder"):
        load_profiles(tmp_path / "nope")


def test_a_folder_profile_replaces_the_builtin_of_the_same_name(tmp_path: Path) -> None:
    _profile(tmp_path, "generic", runtime=RUNTIME.replace("threads = 2", "threads = 1"))
    generic = {p.name: p for p in load_profiles(BUILTIN_PROFILES, tmp_path)}["generic"]
    assert generic.runtime.threads == 1
    assert generic.source == tmp_path / "generic.toml"


# -- derived settings -------------------------------------------------------------------------------------


def _machine(cores: int, memory_mb: int) -> Machine:
    return Machine(
        arch="x86_64",
        cpu_vendor="GenuineIntel",
        cpu_model="",
        cpu_flags=frozenset({"avx2", "fma"}),
        cores=cores,
        usable_cores=cores,
        memory_mb=memory_mb,
        usable_memory_mb=memory_mb,
        device_model="",
        accelerators=(),
        storage="ssd",
        disks=(),
    )


@given(cores=st.integers(1, 256), memory_mb=st.integers(64, 1 << 20))
def test_derived_settings_stay_within_the_machine_and_the_profile(cores: int, memory_mb: int) -> None:
    machine = _machine(cores, memory_mb)
    for profile in load_profiles():
        s = derive(machine, profile)
        rt = profile.runtime
        assert 1 <= s.threads <= min(cores, rt.threads)
        assert s.n_batch <= s.n_ctx == rt.n_ctx
        assert 16 <= s.sandbox_memory_mb <= max(16, min(rt.sandbox.memory_mb, memory_mb // 4))
        assert 16 <= s.model_max_mb <= max(16, min(rt.model.max_file_mb, memory_mb // 2))
        assert s.snapshot_max_mb <= rt.snapshot.max_mb


def test_a_ram_backed_snapshot_is_capped_by_memory_and_a_disk_one_is_not() -> None:
    profiles = {p.name: p for p in load_profiles()}
    small = _machine(4, 1024)
    assert profiles["x86-ipc"].runtime.snapshot.dir == Path("/dev/shm/edgehub/snapshots")
    assert derive(small, profiles["x86-ipc"]).snapshot_max_mb == 256
    assert profiles["generic"].runtime.snapshot.dir is None
    assert derive(small, profiles["generic"]).snapshot_max_mb == profiles["generic"].runtime.snapshot.max_mb


def test_the_store_budget_is_the_profiles_within_an_eighth_of_the_primary_disk() -> None:
    pi = {p.name: p for p in load_profiles()}["raspberry-pi-5"]
    card = Disk(name="mmcblk0", storage="sd", size_mb=16 * 1024, removable=False)
    stick = Disk(name="sda", storage="ssd", size_mb=256 * 1024, removable=True)
    small = dataclasses.replace(_machine(4, 4096), disks=(card, stick))
    assert small.primary_disk_mb == 16 * 1024  # the fixed card, not the larger removable stick
    assert derive(small, pi).store_budget_mb == min(pi.runtime.store.budget_mb, 2048) == 1024
    tiny = dataclasses.replace(small, disks=(dataclasses.replace(card, size_mb=4096),))
    assert derive(tiny, pi).store_budget_mb == 512
    assert derive(_machine(4, 4096), pi).store_budget_mb == pi.runtime.store.budget_mb  # disk unknown
    cfg = EdgeConfig.model_validate(derive(tiny, pi).as_edge_config())
    assert cfg.retention.budget_mb == 512
    assert rules_of(cfg.retention)["outbox"].max_bytes == int(512 * 0.2 * 1024 * 1024)


def test_settings_are_json_ready_and_fit_the_edge_config(ipc_root: Path) -> None:
    machine = detect(ipc_root)
    settings = derive(machine, match(machine, load_profiles()))
    assert json.loads(json.dumps(settings.to_dict()))["snapshot_dir"] == "/dev/shm/edgehub/snapshots"
    json.dumps(machine.to_dict())
    cfg = EdgeConfig.model_validate(settings.as_edge_config())
    assert (cfg.model.n_threads, cfg.model.n_ctx) == (4, 4096)
    assert cfg.sandbox.memory_mb == settings.sandbox_memory_mb
