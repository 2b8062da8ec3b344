"""Hostile values: descriptor values, addresses, times, option values, profile overrides.

A number on the command line or in a file is ASCII: ``0x``/``0b``/``0o`` or decimal digits,
``_`` only between digits, no newline.  Anything else is refused with one line quoting the value
(escaped, so a newline in it cannot break the line).  Accepted values decode exactly.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile.hostile_support import check, check_all, run, run_many, verdict

SETTINGS = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

_LITERAL = re.compile(
    r"0[xX](_?[0-9a-fA-F])+|0[bB](_?[01])+|0[oO](_?[0-7])+|[0-9](_?[0-9])*",
)


def strict_int(text: str) -> int | None:
    """The reference reading of a number: the value, or None when it must be refused."""
    body = text.strip(" \t")
    if not body.isascii() or not _LITERAL.fullmatch(body):
        return None
    return int(body.replace("_", ""), 0)


#: Hostile spellings of numbers.
HOSTILE_NUMBERS = [
    "0x١٢",  # Arabic-Indic digits
    "１２３",  # fullwidth digits
    "0x１２",
    "0_x1",
    "_12",
    "12_",
    "1__2",
    "0x",
    "0x1\n2",
    "12\n",
    "0x1\r",
    "0x\u200b12",
    "٣",
    "0x10000000000000000",
    "-1",
    "+-1",
    " ",
    "",
    "1e3",
    "0x1.8p3",
]

_digits = st.sampled_from("0123456789abcdefABCDEF_xXoObB+-. \t\n١２\u00b2\u0663e")
number_texts = st.one_of(
    st.integers(0, (1 << 64) - 1).map(hex),
    st.integers(0, (1 << 64) - 1).map(str),
    st.integers(-(1 << 70), 1 << 70).map(lambda v: f"{v:_}"),
    st.text(_digits, max_size=24),
    st.sampled_from(HOSTILE_NUMBERS),
    st.text(max_size=12),
)


def test_hostile_descriptor_values_refused(env, tmp_path):
    """Every spelling in HOSTILE_NUMBERS is refused, quoting the value (runs in parallel)."""
    runs = run_many([["decode", "--", v] for v in HOSTILE_NUMBERS], env, cwd=tmp_path)
    failures = [
        f"{v!r}: {'; '.join(bad)}\n{r.describe()}"
        for v, r in zip(HOSTILE_NUMBERS, runs, strict=True)
        if (bad := verdict(r, "error", [repr(v)[1:-1], repr(v)]))
    ]
    assert not failures, "\n".join(failures)


@SETTINGS
@given(values=st.lists(number_texts, min_size=4, max_size=4))
def test_generated_descriptor_values(values, env, tmp_path):
    runs = run_many([["decode", "--format", "json", "--", v] for v in values], env, cwd=tmp_path)
    failures = []
    for v, r in zip(values, runs, strict=True):
        want = strict_int(v)
        if want is not None and want < 1 << 64:
            bad = verdict(r, "ok")
            if not bad and int(json.loads(r.out.splitlines()[0])["raw"], 16) != want:
                bad = [f"decoded raw {r.out[:80]!r}, expected {want:#x}"]
        else:
            bad = verdict(r, "error")
        failures += [f"{v!r}: {'; '.join(bad)}\n{r.describe()}" for _ in bad[:1]]
    assert not failures, "\n".join(failures)


@SETTINGS
@given(
    values=st.lists(number_texts, min_size=2, max_size=2),
    command=st.sampled_from(["owner", "explain"]),
)
def test_generated_addresses(values, command, env, buggy):
    runs = run_many([[command, buggy, "--", v] for v in values], env)
    failures = []
    for v, r in zip(values, runs, strict=True):
        want = strict_int(v)
        bad = verdict(r, "clean" if want is not None and want < 1 << 64 else "error")
        failures += [f"{v!r}: {'; '.join(bad)}\n{r.describe()}" for _ in bad[:1]]
    assert not failures, "\n".join(failures)


@SETTINGS
@given(
    pairs=st.lists(
        st.tuples(
            st.sampled_from(["--vttbr", "--vtcr", "--base", "--ttbr0-el2", "--root"]),
            number_texts,
        ),
        min_size=2,
        max_size=2,
    )
)
def test_generated_register_values(pairs, env, real612):
    cases = []
    for flag, v in pairs:
        extra = ["--vtcr", "0x802d3590"] if flag == "--vttbr" else []
        extra = ["--vttbr", "0x7f709001"] if flag == "--vtcr" else extra
        extra = ["--tcr-el2", "0x15001f5b5d53510"] if flag == "--ttbr0-el2" else extra
        extra = ["--start-level", "1", "--ipa-bits", "40"] if flag == "--root" else extra
        cases.append(["decode", real612, "--summary", f"{flag}={v}", *extra])
    runs = run_many(cases, env)
    failures = []
    for (_flag, v), r in zip(pairs, runs, strict=True):
        bad = verdict(r, "clean" if strict_int(v) is not None else "error")
        failures += [f"{v!r}: {'; '.join(bad)}\n{r.describe()}" for _ in bad[:1]]
    assert not failures, "\n".join(failures)


_times = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e999", "-1e999", "nan", "1e300", "-0", "0x10", "1ms", "5zs", "1e-400"]),
    st.text(st.sampled_from("0123456789.eE+-xnsmu \n"), max_size=10),
)


@SETTINGS
@given(
    cases=st.lists(
        st.tuples(st.sampled_from(["owner", "plot-at", "export-from", "plot-bin"]), _times),
        min_size=2,
        max_size=2,
    )
)
def test_generated_times(cases, env, buggy, tmp_path):
    argv = []
    for i, (kind, t) in enumerate(cases):
        if kind == "owner":
            argv.append(["owner", buggy, "0x44000000", f"--at={t}"])
        elif kind == "plot-at":
            argv.append(
                ["plot", buggy, "--kind", "churn", f"--at={t}", "-o", tmp_path / f"{i}.png"]
            )
        elif kind == "plot-bin":
            argv.append(
                ["plot", buggy, "--kind", "churn", f"--bin={t}", "-o", tmp_path / f"{i}.png"]
            )
        else:
            argv.append(["export", buggy, f"--from={t}", "--perfetto", tmp_path / f"{i}.json"])
    runs = run_many(argv, env)
    failures = []
    for (_kind, t), r in zip(cases, runs, strict=True):
        bad = verdict(r, "clean")
        failures += [f"{t!r}: {'; '.join(bad)}\n{r.describe()}" for _ in bad[:1]]
    assert not failures, "\n".join(failures)


_PROFILE_KEYS = [
    "owner_bits",
    "lock_bit",
    "note_bit",
    "state_bits",
    "prot_none_bit",
    "state_source",
    "mapped_owner",
    "owner_type",
    "lock_type",
    "guest_owner",
    "kernels",
    "no_such_key",
    "name",
    "owners",
]
_profile_values = st.one_of(
    st.integers(-(1 << 70), 1 << 70).map(str),
    st.sampled_from(["-1", "64", "63", "0", "pte", "none", "x", "", "[1,0]", "0x١"]),
    st.text(max_size=6),
)


@SETTINGS
@given(
    cases=st.lists(
        st.tuples(
            st.sampled_from(["linux-5.15", "linux-7.1", "rfc-v3-prot-none", "nope"]),
            st.sampled_from(_PROFILE_KEYS),
            _profile_values,
        ),
        min_size=2,
        max_size=2,
    )
)
def test_generated_profile_overrides(cases, env, tmp_path):
    argv = [
        ["decode", "0x4393d7ff", "0x4", "0x2000000000010004", f"--profile={p},{k}={v}"]
        for p, k, v in cases
    ]
    runs = run_many(argv, env, cwd=tmp_path)
    failures = []
    for case, r in zip(cases, runs, strict=True):
        bad = verdict(r, "clean")
        failures += [f"{case!r}: {'; '.join(bad)}\n{r.describe()}" for _ in bad[:1]]
    assert not failures, "\n".join(failures)


# -- the examples of issue 16, as written -----------------------------------------------------
EXPLAIN_INVALID = ["0x20", "0x24", "0x7c", "0x2000000000010004", "0xffffffffffffff00", "0x40"]


@pytest.mark.parametrize("profile", ["linux-5.15", "linux-7.1"])
def test_explain_invalid_descriptors(profile, env, tmp_path):
    argv = [["decode", v, "--profile", profile, "--explain"] for v in EXPLAIN_INVALID]
    runs = run_many(argv, env, cwd=tmp_path)
    check_all(runs, "ok")
    assert all(r.out.strip() for r in runs)


BAD_OPTIONS = [
    (["timeline", "{buggy}", "--linear-map=-1=-1"], ["--linear-map"]),
    (["timeline", "{buggy}", "--linear-map", "0x1=0x10000000000000000"], ["--linear-map"]),
    (["owner", "{buggy}", "0x10000000000000000"], ["0x10000000000000000"]),
    (["plot", "{buggy}", "--kind", "churn", "--at", "1e999", "-o", "{tmp}/a.png"], ["--at"]),
    (["plot", "{buggy}", "--kind", "churn", "--dpi", "0", "-o", "{tmp}/a.png"], ["--dpi"]),
    (["plot", "{buggy}", "--kind", "map", "--dpi", "-5", "-o", "{tmp}/a.png"], ["--dpi"]),
    (["plot", "{buggy}", "--kind", "map", "--dpi", "100000", "-o", "{tmp}/a.png"], ["--dpi"]),
    (["timeline", "{buggy}", "--page-size", "0"], ["--page-size"]),
    (["timeline", "{buggy}", "--page-size", "-4096"], ["--page-size"]),
    (["timeline", "{buggy}", "--page-size", "3"], ["--page-size"]),
    (["decode", "0x4", "--level", "99"], ["99"]),
    (["decode", "0x4", "--granule", "5k"], ["5k"]),
    (["decode", "0x4", "--profile", "linux-5.15,owner_bits=-1"], ["owner_bits"]),
    (["decode", "0x4", "--profile", "linux-5.15,lock_bit=64"], ["lock_bit"]),
    (["decode", "0x4", "--profile", "linux-5.15,state_source=maybe"], ["state_source"]),
    (["decode", "0x4", "--profile", "linux-5.15,bogus=1"], ["bogus"]),
    (["decode", "0x4", "--profile", "linux-7.1,guest_owner=0x١"], ["guest_owner"]),
    (["build", "--kind", "page", "--oa", "0x1_"], ["--oa"]),
    (["build", "--kind", "page", "--oa", "1" * 40], ["--oa"]),
    (["build", "--kind", "invalid", "--owner", "id:99999999999999"], ["99999999999999"]),
    (["synth", "boot", "-o", "{tmp}/s", "--size", "99999999999999999"], ["--size"]),
    (["scan", "{buggy}/host-s2.elf", "--top", "-1"], ["--top"]),
    (["check", "{buggy}", "--limit", "-1"], ["--limit"]),
    (["decode"], ["TARGETS", "decode"]),
    (["nosuchcommand"], ["nosuchcommand"]),
    (["decode", "0x4", "--no-such-flag"], ["--no-such-flag"]),
]


@pytest.mark.parametrize(("argv", "mentions"), BAD_OPTIONS, ids=lambda a: " ".join(map(str, a)))
def test_bad_option_values(argv, mentions, env, buggy, tmp_path):
    args = [a.format(buggy=buggy, tmp=tmp_path) for a in argv]
    check(run(args, env, cwd=tmp_path), "error", mentions)


def test_export_far_window_is_clean(env, buggy, tmp_path):
    r = run(["export", buggy, "--from", "1e300", "--perfetto", tmp_path / "x.json"], env)
    check(r, "clean")


LONG_COMMANDS = [
    ["decode", "{long}"],
    ["decode", "{long}", "--level", "3"],
    ["timeline", "{long}"],
    ["events", "{long}"],
    ["owner", "{long}", "0x1000"],
    ["regs", "{long}"],
    ["scan", "{long}"],
    ["check", "{long}"],
    ["hyp-map", "{long}"],
    ["guests", "{long}"],
    ["trim", "{long}", "--vttbr", "0x1", "--vtcr", "0x802d3590", "-o", "x.elf"],
    ["report", "{long}"],
    ["decode", "0x4", "--profiles", "{long}"],
    ["diff", "{long}", "{long}"],
]


@pytest.mark.parametrize("argv", LONG_COMMANDS, ids=lambda a: a[0])
def test_overlong_argument(argv, env, tmp_path):
    cases = [[a.format(long="a" * length) for a in argv] for length in (300, 5000)]
    check_all(run_many(cases, env, cwd=tmp_path), "error")


def test_value_with_newline_keeps_one_line(env, tmp_path):
    r = run(
        ["decode", "--vttbr", "0x7f709001\nnext", "--vtcr", "0x802d3590", "x.elf"],
        env,
        cwd=tmp_path,
    )
    check(r, "error")


def test_readme_explain_example(env, tmp_path):
    r = run(["decode", "0x2000000000010004", "--profile", "linux-7.1", "--explain"], env)
    check(r, "ok")
