"""``s2trace diff``: trace vs dump and dump vs dump, exit status 1 on disagreement.

The samples' traces and dumps come from the same boot, so over the ranges the trace covers
they must agree (6.12: states in the host stage 2; 7.3: states in the vmemmap).  Part-way
through the 7.3 trace (t = 72.55) the hyp VM, its pgd and the hyp vCPU are not donated yet
(ftrace: ``alloc_pages_exact_ret`` at 72.557927, 72.558039, 72.561173) and the guest page is
not shared yet (``pkvm_pgtable_stage2_map_ret`` at 72.578332), while the dump shows them so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s2trace.cli.main import main
from s2trace.walk.build import Stage2Builder
from s2trace.walk.ranges import clip_map

REPO = Path(__file__).resolve().parents[1]
S73 = REPO / "sample-traces" / "qemu-pkvm-7.3"
S612 = REPO / "sample-traces" / "qemu-pkvm-6.12"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("capture", [S612, S73], ids=["6.12", "7.3"])
def test_sample_trace_agrees_with_its_dump(
    capture: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = _run(["diff", str(capture)], capsys)
    assert rc == 0, out
    assert out.startswith("agree")


def test_73_states_come_from_the_vmemmap(capsys: pytest.CaptureFixture[str]) -> None:
    """The agreement is not vacuous: the dump side has real states on the trace's pages."""
    from s2trace.jobs.walk import walk_dump, walk_request

    r = walk_dump(walk_request(S73, coalesce=True))
    assert r.meta.get("page_states") == "hyp_vmemmap"
    cover = pd.DataFrame({"ipa_start": [0x45134000], "size": [0x2000]})
    clipped = clip_map(r.map, cover)
    assert set(clipped["page_state"].astype(str)) == {"shared_owned"}


def test_73_mid_trace_disagrees(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.csv"
    rc, _, err = _run(
        ["diff", str(S73), "--at", "72.55", "--format", "csv", "-o", str(out)], capsys
    )
    assert rc == 1 and "DIFFER" in err
    d = pd.read_csv(out, comment="#")
    starts = {
        int(s, 16): (eo, ao)
        for s, eo, ao in zip(d["ipa_start"], d["expected_owner"], d["actual_owner"], strict=True)
    }
    assert starts[0x44EAC000] == ("host", "hyp")  # pgd donated at 72.557927
    assert starts[0x461C2000] == ("host", "hyp")  # hyp VM donated at 72.558039
    assert starts[0x4611C000] == ("host", "hyp")  # hyp vCPU donated at 72.561173
    row = d[d["ipa_start"] == "0x42c99000"].iloc[0]
    assert (row["expected_state"], row["actual_state"]) == ("owned", "shared_owned")


def test_trace_file_and_dump_file_in_either_order(capsys: pytest.CaptureFixture[str]) -> None:
    regs = ["--vttbr", "0x7f709001", "--vtcr", "0x802d3590", "--linear-map"]
    regs += ["0xffff000000000000=0x40000000", "--kernel", "6.12"]
    trace, dump = str(S612 / "ftrace.txt"), str(S612 / "host-s2.elf.zst")
    assert _run(["diff", trace, dump, *regs], capsys)[0] == 0
    assert _run(["diff", dump, trace, *regs], capsys)[0] == 0


def test_same_dump_twice_agrees(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(["diff", str(S73), str(S73)], capsys)
    assert rc == 0 and out.startswith("agree")


def test_two_dumps_differ(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def build(donate: bool) -> Path:
        b = Stage2Builder(profile="linux-7.1")
        b.map(0x40000000, 0x200000, level=3)
        b.annotate(0x40400000, 0x1000, "hyp")
        if donate:
            b.annotate(0x40500000, 0x2000, "guest", vm_handle=0x1000, gfn=0)
        else:
            b.map(0x40500000, 0x2000)
        return b.write_elf(tmp_path / f"{donate}.elf")

    before, after = build(False), build(True)
    b = Stage2Builder(profile="linux-7.1")
    regs = ["--vttbr", hex(b.vttbr), "--vtcr", hex(b.vtcr), "--format", "csv"]
    rc, out, _ = _run(["diff", str(before), str(after), *regs], capsys)
    assert rc == 1
    d = pd.read_csv(pd.io.common.StringIO(out), comment="#")
    assert len(d) == 1
    row = d.iloc[0]
    assert (row["ipa_start"], row["size"]) == ("0x40500000", "0x2000")
    assert (row["expected_owner"], row["actual_owner"]) == ("host", "guest")


@pytest.mark.parametrize(
    "argv, text",
    [
        (["diff", str(S73 / "ftrace.txt"), str(S612 / "ftrace.txt")], "two traces"),
        (["diff", str(S73 / "ftrace.txt")], "capture folder"),
        (["diff", "/nonexistent/x", str(S73)], "no such file"),
    ],
)
def test_diff_input_errors(argv: list[str], text: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and text in err


def test_clip_map_hand_example() -> None:
    frame = pd.DataFrame(
        {
            "ipa_start": np.array([0x0, 0x200000, 0x400000], np.uint64),
            "size": np.array([0x200000, 0x1000, 0x1000], np.uint64),
            "owner": pd.Categorical(["host", "hyp", "host"]),
            "page_state": pd.Categorical(["owned", "nopage", "shared_owned"]),
        }
    )
    cover = pd.DataFrame(
        {
            "ipa_start": np.array([0x1FF000, 0x300000], np.uint64),
            "size": np.array([0x2000, 0x101000], np.uint64),
        }
    )
    got = clip_map(frame, cover)
    assert got["ipa_start"].tolist() == [0x1FF000, 0x200000, 0x400000]
    assert got["size"].tolist() == [0x1000, 0x1000, 0x1000]
    assert got["owner"].astype(str).tolist() == ["host", "hyp", "host"]
    assert clip_map(frame, cover.iloc[:0]).empty
