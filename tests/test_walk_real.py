"""The real QEMU captures (../shared/samples): what a correct walk must show, derived from
their evidence files (dmesg, iomem, kallsyms, ftrace), never from s2trace's own output."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import REAL, real_core, real_dir

from s2trace.arch.registers import config_from_registers
from s2trace.cli.main import main
from s2trace.io import open_memory
from s2trace.walk.scan import scan
from s2trace.walk.walker import walk

pytestmark = pytest.mark.slow

LINEAR_VA, LINEAR_PA = 0xFFFF000000000000, 0x40000000  # both READMEs
PAGE = 4096


def evidence(version: str) -> dict:
    """Ranges the evidence files name, as physical addresses."""
    d = real_dir(version)
    syms = {}
    for line in (d / "kallsyms-subset.txt").read_text().splitlines():
        va, _, name = line.split()[:3]
        syms.setdefault(name, int(va, 16))
    code = re.search(
        r"^\s*([0-9a-f]+)-[0-9a-f]+ : Kernel code", (d / "iomem.txt").read_text(), re.M
    )
    image_pa = int(code.group(1), 16)

    def image(name: str) -> int:
        return syms[name] - syms["_text"] + image_pa

    carve = re.search(r"Reserved (\d+) MiB at (0x[0-9a-f]+)", (d / "dmesg.txt").read_text())
    trace = (d / "ftrace.txt").read_text()
    shares = []
    for m in re.finditer(r"s2_kvm_share_hyp: .* from=(0x[0-9a-f]+) to=(0x[0-9a-f]+)", trace):
        lo = int(m.group(1), 16) - LINEAR_VA + LINEAR_PA
        hi = int(m.group(2), 16) - LINEAR_VA + LINEAR_PA
        shares.append((lo & ~(PAGE - 1), -(-hi // PAGE) * PAGE))
    donations = []
    sizes = re.findall(r"s2_alloc_pages_exact: .* size=(0x[0-9a-f]+)", trace)
    rets = re.findall(r"s2_alloc_pages_exact_ret: \((\w+)\+.* ret=(0x[0-9a-f]+)", trace)
    for size, (caller, ret) in zip(sizes, rets, strict=True):
        if caller in ("pkvm_create_hyp_vm", "pkvm_create_hyp_vcpu"):
            pa = int(ret, 16) - LINEAR_VA + LINEAR_PA
            donations.append((pa, pa + int(size, 16)))
    return {
        "carveout": (
            int(carve.group(2), 16),
            int(carve.group(2), 16) + (int(carve.group(1)) << 20),
        ),
        "hyp_text": (
            image("__kvm_nvhe___hyp_idmap_text_start"),
            image("__kvm_nvhe___hyp_text_end"),
        ),
        "hyp_bss": (image("__kvm_nvhe___hyp_bss_start"), image("__kvm_nvhe___hyp_bss_end")),
        "shares": shares,
        "donations": donations,
    }


def pages_of(m, lo: int, hi: int):
    """Map rows covering each page of [lo, hi), one per page (blocks included)."""
    ipa = m["ipa_start"].to_numpy(dtype=np.uint64)
    end = ipa + m["size"].to_numpy(dtype=np.uint64)
    rows = []
    for page in range(lo, hi, PAGE):
        hit = np.flatnonzero((ipa <= page) & (end > page))
        rows.append(m.iloc[hit[0]] if hit.size else None)
    return rows


@pytest.fixture(scope="module")
def walked():
    out = {}
    for version, profile in (("6.12", "linux-5.15"), ("7.3", "linux-7.1")):
        info = REAL[version]
        with open_memory([str(real_core(version))]) as memory:
            fwb = version == "7.3"
            out[version] = walk(
                memory, config_from_registers(info["vttbr"], info["vtcr"]), profile, fwb=fwb
            )
    return out


@pytest.mark.parametrize("version", ["6.12", "7.3"])
def test_real_walk_has_no_problems(walked, version):
    assert len(walked[version].problems) == 0
    m = walked[version].map
    leaves = m[m["kind"].isin(["block", "page"])]
    assert (leaves["oa"] == leaves["ipa_start"]).all()  # identity map


@pytest.mark.parametrize("version", ["6.12", "7.3"])
def test_carveout_and_hyp_sections_are_hyp_owned(walked, version):
    ev = evidence(version)
    m = walked[version].map
    for name in ("carveout", "hyp_bss"):
        lo, hi = ev[name]
        lo -= lo % PAGE
        rows = pages_of(m, lo, hi)
        owners = {r["owner"] if r is not None else "none" for r in rows}
        assert owners == {"hyp"}, (name, owners)


def test_hyp_text_6_12_is_hyp_owned(walked):
    lo, hi = evidence("6.12")["hyp_text"]
    rows = pages_of(walked["6.12"].map, lo, -(-hi // PAGE) * PAGE)
    assert {r["owner"] for r in rows} == {"hyp"}
    assert {r["raw"] for r in rows} == {0x4}  # owner HYP in bits 9:2 (kernel-facts.md §KF-2.2)


def test_hyp_text_7_3_stays_readonly_in_host(walked):
    """7.3: the hyp .text is mapped read-only, execute-never in the host (§KF-2.8)."""
    lo, hi = evidence("7.3")["hyp_text"]
    rows = pages_of(walked["7.3"].map, lo, -(-hi // PAGE) * PAGE)
    assert {(r["kind"], r["s2ap"], r["xn"]) for r in rows} == {("page", "ro", 2)}
    assert {r["page_state"] for r in rows} == {"unknown"}


def test_6_12_shares_are_shared_owned(walked):
    ev = evidence("6.12")
    assert ev["shares"] == [(0x4393D000, 0x4393E000), (0x44C38000, 0x44C3A000)]
    for lo, hi in ev["shares"]:
        rows = pages_of(walked["6.12"].map, lo, hi)
        assert {(r["owner"], r["page_state"]) for r in rows} == {("host", "shared_owned")}


@pytest.mark.parametrize("version", ["6.12", "7.3"])
def test_donations_are_hyp_owned(walked, version):
    ev = evidence(version)
    assert ev["donations"]  # the evidence names some
    expected_raw = 0x4 if version == "6.12" else 0x2000_0000_0000_0002
    for lo, hi in ev["donations"]:
        rows = pages_of(walked[version].map, lo, hi)
        assert {(r["owner"], r["raw"]) for r in rows} == {("hyp", expected_raw)}, hex(lo)


def test_6_12_zalloc_is_not_donated(walked):
    """kvm_s2_zalloc_pages_exact's page (0x48095000) stays the host's (ftrace.txt)."""
    (row,) = pages_of(walked["6.12"].map, 0x48095000, 0x48096000)
    assert row is None or row["owner"] == "host"


def test_7_3_has_no_6x_owner_entries(walked):
    m = walked["7.3"].map
    assert not (m["raw"] == 0x4).any()
    inv = m[m["kind"] == "invalid"]
    assert set(inv["inv_type"].astype(str)) == {"donation"}


def test_scan_finds_the_real_roots():
    for version, profile in (("6.12", "linux-5.15"), ("7.3", "linux-7.1")):
        with open_memory([str(real_core(version))]) as memory:
            found = scan(memory, profile, top=3)
        assert int(found["root"].iloc[0], 16) == REAL[version]["vttbr"] & ~0xFFF


def test_cli_summary_real(capsys):
    info = REAL["6.12"]
    code = main(
        [
            "decode",
            str(real_core("6.12")),
            "--vttbr",
            hex(info["vttbr"]),
            "--vtcr",
            hex(info["vtcr"]),
            "--summary",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "hyp          nopage" in out and "shared_owned" in out and "problems: none" in out
