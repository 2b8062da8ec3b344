"""The bundled sample captures (sample-traces/): reduced real dumps that walk to the same map
as the full 1 GiB cores they were trimmed from."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REAL, real_core

from s2trace.cli.main import main
from s2trace.io import open_memory
from s2trace.jobs.capture import load_capture
from s2trace.pkvm.profiles import profile_for_kernel
from s2trace.walk.walker import walk

SAMPLES = Path(__file__).resolve().parents[1] / "sample-traces"
VERSIONS = {"6.12": "qemu-pkvm-6.12", "7.3": "qemu-pkvm-7.3"}


def _walk(specs, version, fwb):
    info = REAL[version]
    from s2trace.arch.registers import config_from_registers

    with open_memory(specs) as memory:
        return walk(
            memory,
            config_from_registers(info["vttbr"], info["vtcr"]),
            profile_for_kernel(version),
            fwb=fwb,
        )


@pytest.mark.parametrize("version", list(VERSIONS))
def test_capture_folder(version):
    cap = load_capture(SAMPLES / VERSIONS[version])
    assert cap.reg("vttbr_el2") == REAL[version]["vttbr"]
    assert cap.profile == profile_for_kernel(version)
    assert cap.fwb == (version == "7.3")  # HCR_EL2 bit 46 (README of each capture)
    assert cap.linear_map == (0xFFFF000000000000, 0x40000000)
    result = _walk(list(cap.dump), version, cap.fwb)
    assert len(result.problems) == 0 and len(result.map) > 1000


@pytest.mark.slow
@pytest.mark.parametrize("version", list(VERSIONS))
def test_trimmed_sample_walks_like_the_full_core(version):
    cap = load_capture(SAMPLES / VERSIONS[version])
    small = _walk(list(cap.dump), version, cap.fwb).map
    full = _walk([str(real_core(version))], version, cap.fwb).map
    assert small.equals(full)


def test_readme_main_job(capsys):
    code = main(["decode", str(SAMPLES / "qemu-pkvm-6.12"), "--summary"])
    out = capsys.readouterr().out
    assert code == 0 and "shared_owned" in out and "problems: none" in out


@pytest.mark.parametrize(
    ("kernel", "profile"),
    [
        ("5.13.0", "linux-5.13"),
        ("5.15", "linux-5.15"),
        ("6.1.0-18-arm64", "linux-5.15"),
        ("6.13.2", "linux-5.15"),
        ("6.14", "linux-6.14"),
        ("7.0.1", "linux-6.14"),
        ("7.1", "linux-7.1"),
        ("7.3.4", "linux-7.1"),
    ],
)
def test_profile_for_kernel(kernel, profile):
    assert profile_for_kernel(kernel) == profile


@pytest.mark.parametrize("version", list(VERSIONS))
def test_registers_recovered_from_the_reduced_sample(version):
    """The trimmed samples keep the per-CPU kvm_nvhe_init_params pages (§KF-2.9)."""
    from s2trace.hyp.init_params import registers_from_memory

    cap = load_capture(SAMPLES / VERSIONS[version])
    with open_memory(list(cap.dump)) as memory:
        regs, _ = registers_from_memory(memory)
    assert (regs.vttbr_el2, regs.vtcr_el2) == (REAL[version]["vttbr"], REAL[version]["vtcr"])
    assert regs.tcr_el2 == REAL[version]["tcr"]
