"""Trace readers: every layout, the real samples, markers, damage, the cache, tabular files.

Expected values are read by hand from the trace text (tests/data/traces/*, written for these
tests, and ../shared/samples/*/ftrace.txt), not from the parser's own output.
"""

from __future__ import annotations

import gzip
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s2trace.columns import EVENTS
from s2trace.errors import InputError, StrictError
from s2trace.trace.parse import cache, readers
from s2trace.trace.parse.cache import read_events, write_events
from s2trace.trace.parse.readers import detect_format, fields, parse_uint, read_trace

DATA = Path(__file__).parent / "data" / "traces"
SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("S2TRACE_CACHE", str(root))
    return root


def rows(path: Path | str, **kw) -> tuple[pd.DataFrame, readers.Trace]:
    t = read_trace(path, use_cache=False, **kw)
    EVENTS.check(t.events)
    assert t.events.dtypes.astype(str).to_dict() == EVENTS.dtypes()
    return t.events, t


def row(df: pd.DataFrame, line: int) -> dict:
    r = df[df["line"] == line]
    assert len(r) == 1, f"line {line}"
    return {k: (None if pd.isna(v) else v) for k, v in r.iloc[0].to_dict().items()}


# -- host ftrace text -------------------------------------------------------------------------
def test_ftrace_with_flags_comms_markers_and_damage() -> None:
    df, t = rows(DATA / "ftrace_flags.txt")
    assert t.fmt == "ftrace" and t.lines == 25
    assert df["line"].tolist() == [13, 14, 15, 16, 17, 18, 20, 22, 23, 25]
    assert row(df, 13) == {
        "ts": 18.537715,
        "cpu": 1,
        "task": "kvmpoke",
        "pid": 189,
        "flags": "d....",
        "event": "s2_kvm_share_hyp",
        "fields": "(kvm_share_hyp+0x0/0x298) from=0xffff00000393d000 to=0xffff00000393df70",
        "line": 13,
        "lost": None,
    }
    r = row(df, 15)  # comm at full width, 4-digit pid, CPU 3, flags dN.1.
    assert (r["task"], r["pid"], r["cpu"], r["flags"], r["ts"]) == (
        "qemu-system-aar",
        4242,
        3,
        "dN.1.",
        123.000001,
    )
    assert r["fields"] == "TRAP: HSR_EC: 0x0024 (DABT_LOW), PC: 0x0000000000000004"
    assert (row(df, 16)["task"], row(df, 16)["pid"]) == ("kworker/u8:2", 12)
    assert row(df, 16)["event"] == "my_unknown_event"  # unknown events are kept
    assert (row(df, 17)["task"], row(df, 17)["pid"]) == ("my comm-x", 99)  # space and dash
    assert (row(df, 18)["task"], row(df, 18)["pid"]) == ("<...>", 7)
    assert (row(df, 25)["task"], row(df, 25)["pid"]) == ("jbd2/vda1-8", 131)
    lost = row(df, 20)
    assert (lost["event"], lost["lost"], lost["cpu"], lost["task"], lost["fields"]) == (
        "lost_events",
        17,
        2,
        None,
        None,
    )
    assert math.isnan(df.loc[df["line"] == 20, "ts"].iloc[0])
    assert row(df, 22)["fields"] == "PC: 0x0000000000000000"  # trailing blanks dropped
    assert row(df, 23)["fields"] == ""  # an event without fields
    # the blank line 19, the comment lines and '##### CPU 3 buffer started ####' are skipped;
    # line 21 is the one malformed line
    assert [(p.kind, p.where) for p in t.problems] == [("malformed_line", 21)]
    assert "this line is not a trace line" in t.problems.problems[0].detail
    assert t.problems.problems[0].source.endswith("ftrace_flags.txt")


def test_ftrace_with_tgid_column() -> None:
    df, t = rows(DATA / "ftrace_tgid.txt")
    assert t.fmt == "ftrace" and len(t.problems) == 0
    assert [(r.task, r.pid, r.cpu, r.flags) for r in df.itertuples()] == [
        ("kvmpoke", 189, 1, "d...."),
        ("<idle>", 0, 0, "d.h1."),
        ("vcpu 0-thread", 201, 1, "....."),
    ]
    assert row(df, 6)["fields"] == "irq=11 name=arch_timer"


def test_trace_pipe_without_flags_crlf_and_wide_timestamp() -> None:
    df, t = rows(DATA / "trace_pipe_noflags.txt")
    assert t.fmt == "ftrace" and len(t.problems) == 0
    assert df["flags"].isna().all()
    assert row(df, 2)["fields"] == "(kvm_arch_init_vm+0x54/0x198 <- kvm_share_hyp) ret=0"
    assert (row(df, 3)["event"], row(df, 3)["lost"], row(df, 3)["cpu"]) == ("lost_events", 3, 1)
    assert row(df, 4)["ts"] == 100000.000001


def test_trace_cmd_report() -> None:
    df, t = rows(DATA / "trace_cmd.txt")
    assert t.fmt == "trace-cmd" and len(t.problems) == 0  # header lines are not malformed
    assert df["line"].tolist() == [5, 6, 7, 8, 9, 10]
    assert row(df, 5)["fields"].startswith("(kvm_share_hyp+0x0/0x298)")  # padding dropped
    assert (row(df, 7)["event"], row(df, 7)["lost"], row(df, 7)["cpu"]) == ("lost_events", 12, 0)
    assert (row(df, 9)["event"], row(df, 9)["lost"], row(df, 9)["cpu"]) == ("lost_events", None, 1)
    assert (row(df, 8)["task"], row(df, 8)["pid"], row(df, 8)["ts"]) == ("<...>", 3979, 217.975284)
    assert df["flags"].isna().all()


# -- hypervisor trace buffers -----------------------------------------------------------------
def test_hypervisor_trace_7_1_and_ack() -> None:
    df, t = rows(DATA / "hyp_7_1.txt")
    assert t.fmt == "hyp"
    assert df["task"].isna().all() and df["pid"].isna().all() and df["flags"].isna().all()
    assert row(df, 1) == {
        "ts": 42.0001,
        "cpu": 0,
        "task": None,
        "pid": None,
        "flags": None,
        "event": "hyp_enter",
        "fields": "reason=hvc vcpu=0",
        "line": 1,
        "lost": None,
    }
    assert (row(df, 4)["event"], row(df, 4)["fields"]) == (
        "host_mem_abort",
        "esr=0x92000046 addr=0x7f200000",
    )
    assert (row(df, 5)["event"], row(df, 5)["lost"], row(df, 5)["cpu"]) == ("lost_events", 5, 1)
    assert (row(df, 6)["event"], row(df, 6)["fields"]) == ("UNKNOWN", "id=77")
    assert (row(df, 7)["event"], row(df, 7)["fields"]) == ("hyp_enter", "")
    assert (row(df, 9)["ts"], row(df, 9)["cpu"]) == (12345678.000001, 3)
    assert [(p.kind, p.where) for p in t.problems] == [("malformed_line", 8)]  # PRINT TOO BIG


def test_early_ack_hypervisor_trace_takes_cpu_from_path(tmp_path: Path) -> None:
    df, t = rows(DATA / "hyp_early.txt")
    assert t.fmt == "hyp-early" and df["cpu"].isna().all()
    assert df["event"].tolist() == ["hyp_enter", "host_hcall", "hyp_exit"]
    assert df["fields"].tolist() == ["", "id=9 invalid=0", ""]
    per_cpu = tmp_path / "per_cpu" / "cpu3"
    per_cpu.mkdir(parents=True)
    shutil.copy(DATA / "hyp_early.txt", per_cpu / "trace")
    df, _ = rows(per_cpu / "trace")
    assert df["cpu"].tolist() == [3, 3, 3]


# -- the real captures ------------------------------------------------------------------------
def _sample(version: str) -> Path:
    p = SAMPLES / f"qemu-pkvm-{version}" / "ftrace.txt"
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


def test_real_6_12_trace() -> None:
    df, t = rows(_sample("6.12"))
    assert (t.fmt, t.lines, len(df), len(t.problems)) == ("ftrace", 65, 53, 0)
    assert df["line"].tolist() == list(range(13, 66))
    counts = df["event"].value_counts()
    assert counts["kvm_arm_set_dreg32"] == 7 and counts["s2_alloc_pages_exact_ret"] == 4
    assert counts["kvm_timer_update_irq"] == 4 and counts["kvm_mmio"] == 1
    assert set(df["task"]) == {"kvmpoke"} and set(df["pid"]) == {189} and set(df["cpu"]) == {1}
    r = row(df, 28)
    assert (r["ts"], r["flags"], r["event"]) == (18.548758, "d....", "s2_alloc_pages_exact_ret")
    assert (
        r["fields"]
        == "(pkvm_create_hyp_vm+0xb4/0x298 <- alloc_pages_exact_noprof) ret=0xffff000008115000"
    )
    assert row(df, 26)["flags"] == "dN..."
    assert row(df, 64)["fields"] == "CTL: 0x000000 CVAL:              0x0 arch_timer_ctx_index: 1"


def test_real_7_3_trace() -> None:
    df, t = rows(_sample("7.3"))
    assert (t.fmt, t.lines, len(df), len(t.problems)) == ("ftrace", 58, 46, 0)
    assert df["event"].value_counts()["kvm_timer_update_irq"] == 5
    last = row(df, 58)
    assert (last["task"], last["pid"], last["cpu"], last["flags"], last["event"]) == (
        "kdamond.0",
        50,
        0,
        "...2.",
        "kvm_test_age_hva",
    )
    assert row(df, 48)["fields"] == (
        "(pkvm_pgtable_stage2_map+0x0/0x258) pgt=0xffff000003bf77c0 addr=0x0 size=0x1000 "
        "phys=0x42c99000 prot=0xf"
    )
    assert row(df, 19)["cpu"] == 0 and row(df, 13)["cpu"] == 1


# -- damage, strictness, detection ------------------------------------------------------------
def test_strict_raises_on_first_malformed_line() -> None:
    with pytest.raises(StrictError, match="malformed_line"):
        read_trace(DATA / "ftrace_flags.txt", strict=True, use_cache=False)


def test_invalid_utf8_is_replaced_and_lines_keep_their_numbers() -> None:
    df, t = rows(DATA / "ftrace_latin1.txt")
    assert df["task"].tolist() == ["caf\ufffd", "kvmpoke"]
    assert df["line"].tolist() == [1, 2] and len(t.problems) == 0


def test_malformed_line_quoted_up_to_a_whole_character(tmp_path: Path) -> None:
    # 119 ASCII bytes then 'é' (2 bytes): a 120-byte cut would split it (a decode error once)
    line = "x" * 119 + "\u00e9" + "y" * 10
    p = tmp_path / "t.txt"
    good = "  kvmpoke-189  [001] d.... 18.000039: ev: a=1\n"
    p.write_text(good + line + "\n" + "\u00e9" * 70 + "\n", encoding="utf-8")
    t = read_trace(p, use_cache=False, fmt="ftrace")
    shown = [pr.detail for pr in t.problems]
    assert [pr.where for pr in t.problems] == [2, 3]
    assert repr("x" * 119) in shown[0]
    assert repr("\u00e9" * 60) in shown[1]


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("ftrace_flags.txt", "ftrace"),
        ("ftrace_tgid.txt", "ftrace"),
        ("trace_pipe_noflags.txt", "ftrace"),
        ("trace_cmd.txt", "trace-cmd"),
        ("hyp_7_1.txt", "hyp"),
        ("hyp_early.txt", "hyp-early"),
    ],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(DATA / name) == fmt


def test_forced_format_and_errors(tmp_path: Path) -> None:
    # forcing the hypervisor layout on a host trace: every data line is malformed
    t = read_trace(DATA / "trace_pipe_noflags.txt", fmt="hyp", use_cache=False)
    assert len(t.events) == 1 and t.events["event"].iloc[0] == "lost_events"
    assert [p.where for p in t.problems] == [1, 2, 4]
    with pytest.raises(InputError, match="trace format 'xml'"):
        read_trace(DATA / "hyp_7_1.txt", fmt="xml")
    with pytest.raises(InputError, match="no such trace file"):
        read_trace(tmp_path / "missing.txt")
    junk = tmp_path / "junk.txt"
    junk.write_text("hello world\nthis is prose\n")
    with pytest.raises(InputError, match="not a recognised trace"):
        read_trace(junk)
    dat = tmp_path / "trace.dat"
    dat.write_bytes(b"\x17\x08\x44tracing6\x00")
    with pytest.raises(InputError, match="trace-cmd report"):
        read_trace(dat)


def test_empty_and_comment_only_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    df, t = rows(empty)
    assert (len(df), t.lines, t.fmt) == (0, 0, "ftrace")
    header = tmp_path / "header.txt"
    header.write_text("# tracer: nop\n#\n")
    df, t = rows(header)
    assert (len(df), t.lines, len(t.problems)) == (0, 2, 0)


def test_compressed_traces_parse_like_plain_ones(tmp_path: Path) -> None:
    plain = read_trace(DATA / "ftrace_flags.txt", use_cache=False)
    raw = (DATA / "ftrace_flags.txt").read_bytes()
    gz = tmp_path / "t.txt.gz"
    gz.write_bytes(gzip.compress(raw))
    zst = tmp_path / "t.txt.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(raw))
    for path in (gz, zst):
        t = read_trace(path, use_cache=False)
        pd.testing.assert_frame_equal(t.events, plain.events)
        assert [p.where for p in t.problems] == [21]


def test_small_chunks_and_the_regex_path_give_the_same_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chunk edges inside lines, lines longer than a chunk, and the regex pass instead of the
    column templates must not change anything."""
    names = [
        "ftrace_flags.txt",
        "ftrace_tgid.txt",
        "trace_cmd.txt",
        "hyp_7_1.txt",
        "trace_pipe_noflags.txt",
    ]
    ref = {n: read_trace(DATA / n, use_cache=False) for n in names}
    monkeypatch.setattr(readers, "_CHUNK", 37)
    for n in names:
        got = read_trace(DATA / n, use_cache=False)
        pd.testing.assert_frame_equal(got.events, ref[n].events)
        assert [p.where for p in got.problems] == [p.where for p in ref[n].problems]
    monkeypatch.setattr(readers, "_CHUNK", 1 << 20)
    monkeypatch.setattr(readers, "_FAST", {})
    for n in names:
        pd.testing.assert_frame_equal(read_trace(DATA / n, use_cache=False).events, ref[n].events)


def test_nanosecond_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "ns.txt"  # trace-cmd report -t prints nanoseconds
    path.write_text(
        "         kvmpoke-189   [001]    18.537715123: kvm_entry: PC: 0x0\n"
        "         kvmpoke-189   [001]    18.537715124: kvm_exit: x\n"
    )
    df, _ = rows(path)
    assert df["ts"].tolist() == [18.537715123, 18.537715124]


def test_long_event_names_and_long_lines(tmp_path: Path) -> None:
    name = "e" * 70  # longer than the fast path's 64-byte window: the regex pass takes it
    body = "x=" + "y" * 5000 + " z: 1"
    path = tmp_path / "long.txt"
    path.write_text(
        f"         kvmpoke-189     [001] d....    18.537715: {name}: a: 1\n"
        f"         kvmpoke-189     [001] d....    18.537716: short: {body}\n"
        f"[001]\t   42.000100: {name} k=v\n"
    )
    df, t = rows(path)
    assert df["event"].astype(str).tolist() == [name, "short"]
    assert df["fields"].tolist() == ["a: 1", body]
    assert [p.where for p in t.problems] == [3]  # a hypervisor line in a host trace


def test_progress_bar_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    read_trace(DATA / "ftrace_flags.txt", use_cache=False, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "reading ftrace_flags.txt" in captured.err


# -- cache ------------------------------------------------------------------------------------
def test_cache_hit_skips_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _cache: Path
) -> None:
    first = read_trace(DATA / "ftrace_flags.txt")
    assert len(list((_cache / "traces").glob("*.parquet"))) == 1
    copy = tmp_path / "same-content.txt"
    shutil.copy(DATA / "ftrace_flags.txt", copy)

    def boom(*a, **k):
        raise AssertionError("parsed again")

    monkeypatch.setattr(readers, "_parse_text", boom)
    again = read_trace(copy)  # same content under another name: a hit
    pd.testing.assert_frame_equal(again.events, first.events)
    assert (again.lines, again.fmt) == (first.lines, first.fmt)
    assert [(p.kind, p.where, p.detail) for p in again.problems] == [
        (p.kind, p.where, p.detail) for p in first.problems
    ]
    assert again.problems.problems[0].source == str(copy)
    with pytest.raises(StrictError):
        read_trace(copy, strict=True)
    with pytest.raises(AssertionError, match="parsed again"):
        read_trace(copy, use_cache=False)
    with pytest.raises(AssertionError, match="parsed again"):
        read_trace(copy, fmt="trace-cmd")  # another format is another entry


def test_damaged_cache_entry_is_ignored(_cache: Path) -> None:
    first = read_trace(DATA / "hyp_7_1.txt")
    for p in (_cache / "traces").glob("*.parquet"):
        p.write_bytes(b"not parquet")
    again = read_trace(DATA / "hyp_7_1.txt")
    pd.testing.assert_frame_equal(again.events, first.events)


def test_use_cache_false_writes_nothing(_cache: Path) -> None:
    read_trace(DATA / "hyp_7_1.txt", use_cache=False)
    assert not (_cache / "traces").exists()


# -- tabular files ----------------------------------------------------------------------------
@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("name", ["ftrace_flags.txt", "hyp_7_1.txt", "trace_cmd.txt"])
def test_tabular_round_trip(tmp_path: Path, ext: str, name: str) -> None:
    t = read_trace(DATA / name, use_cache=False)
    out = tmp_path / f"events.{ext}"
    write_events(t.events, out)
    pd.testing.assert_frame_equal(read_events(out), t.events)
    back = read_trace(out, use_cache=False)
    assert back.fmt == ext and back.lines == len(t.events)
    pd.testing.assert_frame_equal(back.events, t.events)


def test_csv_keeps_empty_strings_apart_from_missing(tmp_path: Path) -> None:
    t = read_trace(DATA / "hyp_7_1.txt", use_cache=False)
    out = tmp_path / "e.csv"
    write_events(t.events, out)
    back = read_events(out)
    assert back.loc[back["line"] == 7, "fields"].iloc[0] == ""
    assert back.loc[back["line"] == 5, "fields"].isna().all()


def test_tabular_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,cpu,task\n1.0,0,x\n")
    with pytest.raises(InputError, match="missing columns"):
        read_events(bad)
    with pytest.raises(InputError, match="suffix"):
        write_events(EVENTS.empty(), tmp_path / "events.xlsx")
    with pytest.raises(ValueError, match="columns differ"):
        write_events(pd.DataFrame({"ts": [1.0]}), tmp_path / "x.csv")


# -- field access -----------------------------------------------------------------------------
def test_fields_accessor() -> None:
    ev = pd.DataFrame(
        {
            "fields": pd.array(
                [
                    "(kvm_share_hyp+0x0/0x298) from=0xffff00000393d000 to=0xffff00000393df70",
                    "(kvm_arch_init_vm+0x54/0x198 <- kvm_share_hyp) ret=0",
                    "VCPU: 0, dv: 1, dp: -1",
                    'name="a b" xfrom=1 caller=free_hyp_memcache+0x70/0xb0',
                    None,
                ],
                dtype="string",
            )
        },
        index=[10, 11, 12, 13, 14],
    )
    got = fields(ev, ["from", "to", "ret", "VCPU", "dp", "name", "caller", "@func", "@caller"])
    assert got.index.tolist() == [10, 11, 12, 13, 14]
    as_lists = {k: [None if pd.isna(v) else v for v in got[k]] for k in got}
    assert as_lists["from"] == ["0xffff00000393d000", None, None, None, None]  # not xfrom=
    assert as_lists["to"] == ["0xffff00000393df70", None, None, None, None]
    assert as_lists["ret"] == [None, "0", None, None, None]
    assert as_lists["VCPU"] == [None, None, "0", None, None]
    assert as_lists["dp"] == [None, None, "-1", None, None]
    assert as_lists["name"] == [None, None, None, "a b", None]
    assert as_lists["caller"] == [None, None, None, "free_hyp_memcache+0x70/0xb0", None]
    assert as_lists["@func"] == ["kvm_share_hyp", "kvm_share_hyp", None, None, None]
    assert as_lists["@caller"] == [None, "kvm_arch_init_vm", None, None, None]
    assert str(got["from"].dtype) == "string"
    with pytest.raises(InputError, match="field name"):
        fields(ev, ["a b"])


def test_parse_uint() -> None:
    vals = pa.array(
        [
            "0",
            "0x0",
            "0xffff000008115000",
            "4096",
            "-22",
            "0XAbC",
            "18446744073709551615",
            "18446744073709551616",
            "0x1ffffffffffffffff",
            "",
            None,
            "12a",
            " 7 ",
            "+5",
        ]
    )
    out, ok = parse_uint(vals)
    assert ok.tolist() == [
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        False,
        False,
        False,
        False,
        False,
        True,
        True,
    ]
    assert out[ok].tolist() == [
        0,
        0,
        0xFFFF000008115000,
        4096,
        (1 << 64) - 22,
        0xABC,
        (1 << 64) - 1,
        7,
        5,
    ]
    assert out[4].view(np.int64) == -22


# -- property: generated ftrace lines parse back --------------------------------------------------
_comm = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="[]()"),
    min_size=1,
    max_size=15,
).filter(lambda s: not s.startswith("#"))
_comm_spaced = st.builds(lambda a, b: f"{a} {b}", _comm, _comm).filter(lambda s: len(s) <= 15)
_line = st.fixed_dictionaries(
    {
        "task": st.one_of(_comm, _comm_spaced),
        "pid": st.integers(0, 4194304),
        "cpu": st.integers(0, 511),
        "flags": st.one_of(st.none(), st.text("dDNnp.hHsz0123456789", min_size=5, max_size=5)),
        "sec": st.integers(0, 999999),
        "usec": st.integers(0, 999999),
        "event": st.from_regex(r"[a-z_][a-z0-9_]{0,40}", fullmatch=True),
        "fields": st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80).map(
            str.strip
        ),
    }
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(_line, min_size=1, max_size=40), st.booleans())
def test_generated_ftrace_lines_parse_back(tmp_path_factory, lines, kernel_widths) -> None:
    out = []
    for d in lines:
        if kernel_widths:  # the kernel's columns: "%16s-%-7d [%03d] " flags " %5lu.%06lu: "
            head = f"{d['task']:>16}-{d['pid']:<7d} [{d['cpu']:03d}] "
        else:  # trace-cmd-like, narrower columns
            head = f"{d['task']:>12}-{d['pid']:<5d} [{d['cpu']:03d}] "
        flags = "" if d["flags"] is None else d["flags"] + " "
        out.append(f"{head}{flags}{d['sec']:5d}.{d['usec']:06d}: {d['event']}: {d['fields']}")
    path = tmp_path_factory.mktemp("gen") / "trace.txt"
    path.write_text("\n".join(out) + "\n")
    t = read_trace(path, fmt="ftrace", use_cache=False)
    assert len(t.problems) == 0
    df = t.events
    assert len(df) == len(lines)
    assert df["task"].tolist() == [d["task"] for d in lines]
    assert df["pid"].tolist() == [d["pid"] for d in lines]
    assert df["cpu"].tolist() == [d["cpu"] for d in lines]
    assert [None if pd.isna(f) else f for f in df["flags"]] == [d["flags"] for d in lines]
    assert df["ts"].tolist() == [float(f"{d['sec']}.{d['usec']:06d}") for d in lines]
    assert df["event"].astype(str).tolist() == [d["event"] for d in lines]
    assert df["fields"].tolist() == [d["fields"] for d in lines]
    assert df["line"].tolist() == list(range(1, len(lines) + 1))


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("S2TRACE_CACHE", str(tmp_path))
    assert cache.cache_dir() == tmp_path / "traces"
    monkeypatch.delenv("S2TRACE_CACHE")
    assert cache.cache_dir() == Path.home() / ".cache" / "s2trace" / "traces"
