"""Outputs: written whole or not at all, never over an input, one line when they cannot be.

Every ``-o`` writer writes a temporary file in the target directory and renames it into place;
an output that is the same file as an input (by name, symlink or hard link) is refused before
anything is written; a missing directory, a full disk, an I/O error is one line and exit 2.
Standard output to a full disk is one line too, and a closed pipe (``| head``) ends quietly
with exit status 0.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from hostile.hostile_support import check, run, run_many

#: Every command that writes a file: name -> argv with {cap} (capture folder), {trace},
#: {dump}, {out}.  The file writers of the issue: 16 commands and formats.
WRITERS = {
    "decode values": ["decode", "0x4393d7ff", "0x4", "-o", "{out}"],
    "decode values csv": ["decode", "0x4393d7ff", "--format", "csv", "-o", "{out}"],
    "decode walk": ["decode", "{cap}", "-o", "{out}"],
    "decode summary": ["decode", "{cap}", "--summary", "-o", "{out}"],
    "decode ptdump": ["decode", "{cap}", "--format", "ptdump", "-o", "{out}"],
    "decode parquet": ["decode", "{cap}", "--format", "parquet", "-o", "{out}"],
    "events": ["events", "{trace}", "--format", "csv", "-o", "{out}"],
    "events parquet": ["events", "{trace}", "--format", "parquet", "-o", "{out}"],
    "timeline": ["timeline", "{cap}", "-o", "{out}"],
    "violations": ["violations", "{cap}", "--format", "json", "-o", "{out}"],
    "check": ["check", "{real}", "-o", "{out}"],
    "hyp-map": ["hyp-map", "{real}", "-o", "{out}"],
    "guests": ["guests", "{real}", "-o", "{out}"],
    "diff": ["diff", "{cap}", "-o", "{out}"],
    "trim": ["trim", "{cap}", "-o", "{out}"],
    "plot": ["plot", "{cap}", "--kind", "churn", "-o", "{out}.png"],
    "export": ["export", "{cap}", "--perfetto", "{out}"],
}


RECIPE = """
[[recipe]]
name = "hostile_marker"
doc = "a recipe file the hostile battery names as an input"
event = "hostile_marker_event"
op = "share"
initiator = "host"
completer = "hyp"
addr = "addr"
pages = 1
space = "phys"
"""


def _args(argv: list[str], **kw: object) -> list[str]:
    return [a.format(**kw) for a in argv]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("argv", WRITERS.values(), ids=WRITERS.keys())
def test_missing_directory_and_full_disk(argv, env, buggy, real612, tmp_path):
    out = tmp_path / "no" / "such" / "dir" / "out.txt"
    paths = {"cap": buggy, "real": real612, "trace": buggy / "trace.txt"}
    cases = [_args(argv, **paths, out=out)]
    if "{out}.png" not in argv:  # plot names its image type by suffix: the fsize case covers it
        cases.append(_args(argv, **paths, out="/dev/full"))
    runs = run_many(cases, env, cwd=tmp_path)
    check(runs[0], "error", mentions=[str(out.parent)])
    for r in runs[1:]:
        check(r, "error", mentions=["/dev/full"])


@pytest.mark.parametrize("argv", WRITERS.values(), ids=WRITERS.keys())
def test_write_fails_midway_leaves_old_output(argv, env, buggy, real612, tmp_path):
    """A write that fails part-way (file size limit: EFBIG, like a full disk) leaves the
    previous output as it was and no temporary file behind."""
    out = tmp_path / "out" / "result"
    out.parent.mkdir()
    args = _args(argv, cap=buggy, real=real612, trace=buggy / "trace.txt", out=out)
    target = Path(
        args[args.index("-o") + 1] if "-o" in args else args[args.index("--perfetto") + 1]
    )
    old = b"previous output\n" * 4
    target.write_bytes(old)
    if "{real}" in argv:  # decompress the dump into the cache before the size limit
        check(run(["decode", real612, "--summary"], env, cwd=tmp_path), "ok")
    r = run(args, env, cwd=tmp_path, fsize=48)
    check(r, "error", mentions=[str(target.parent)])
    assert target.read_bytes() == old, r.describe()
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name], r.describe()


@pytest.mark.parametrize("argv", WRITERS.values(), ids=WRITERS.keys())
def test_output_written_whole(argv, env, buggy, real612, tmp_path):
    out = tmp_path / "out" / "result"
    out.parent.mkdir()
    args = _args(argv, cap=buggy, real=real612, trace=buggy / "trace.txt", out=out)
    r = run(args, env, cwd=tmp_path)
    check(r, "clean")
    assert r.rc in (0, 1), r.describe()
    names = [p.name for p in out.parent.iterdir()]
    assert len(names) == 1 and not names[0].startswith("."), (names, r.describe())


SAME_AS_INPUT = {
    "events -o trace": ["events", "{trace}", "--format", "csv", "-o", "{trace}"],
    "timeline -o trace": ["timeline", "{trace}", "-o", "{trace}"],
    "timeline cap -o its trace": ["timeline", "{cap}", "-o", "{cap}/trace.txt"],
    "violations -o trace": ["violations", "{trace}", "-o", "{trace}"],
    "decode table -o table": ["decode", "{table}", "--level", "3", "-o", "{table}"],
    "decode dump -o dump": [
        "decode",
        "{dump}",
        "--vttbr",
        "0x7f700000",
        "--vtcr",
        "0x800d3590",
        "-o",
        "{dump}",
    ],
    "decode cap -o its dump": ["decode", "{cap}", "-o", "{cap}/host-s2.elf"],
    "decode cap -o capture.toml": ["decode", "{cap}", "--summary", "-o", "{cap}/capture.toml"],
    "trim -o core": [
        "trim",
        "{dump}",
        "--vttbr",
        "0x7f700000",
        "--vtcr",
        "0x800d3590",
        "-o",
        "{dump}",
    ],
    "trim cap -o its core": ["trim", "{cap}", "-o", "{cap}/host-s2.elf"],
    "decode -o profiles": ["decode", "0x4", "--profiles", "{prof}", "-o", "{prof}"],
    "decode walk -o profiles": ["decode", "{cap}", "--profiles", "{prof}", "-o", "{prof}"],
    "check -o dump": ["check", "{cap}", "-o", "{cap}/host-s2.elf"],
    "diff -o trace": ["diff", "{cap}", "-o", "{cap}/trace.txt"],
    "export -o trace": ["export", "{trace}", "--perfetto", "{trace}"],
    "timeline -o recipes": ["timeline", "{cap}", "--recipes", "{recipe}", "-o", "{recipe}"],
    "events -o hardlink": ["events", "{trace}", "-o", "{hard}"],
    "timeline -o symlink": ["timeline", "{trace}", "-o", "{soft}"],
    "events -o dotted": ["events", "{trace}", "-o", "{dotted}"],
}


@pytest.mark.parametrize("argv", SAME_AS_INPUT.values(), ids=SAME_AS_INPUT.keys())
def test_output_naming_an_input_refused(argv, env, buggy, tmp_path):
    table = tmp_path / "table.bin"
    table.write_bytes((buggy / "host-s2.elf").read_bytes()[4096:8192])
    prof = tmp_path / "profiles.toml"
    prof.write_text('[mine]\nkernels = "test"\nowner_bits = [9, 2]\n')
    recipe = tmp_path / "recipes.toml"
    recipe.write_text(RECIPE)
    hard, soft = tmp_path / "hard.txt", tmp_path / "soft.txt"
    os.link(buggy / "trace.txt", hard)
    soft.symlink_to(buggy / "trace.txt")
    dotted = f"{buggy}/./../{buggy.name}/trace.txt"
    inputs = [
        buggy / "trace.txt",
        buggy / "host-s2.elf",
        buggy / "capture.toml",
        table,
        prof,
        recipe,
    ]
    before = {p: _digest(p) for p in inputs}
    args = _args(
        argv,
        cap=buggy,
        trace=buggy / "trace.txt",
        dump=buggy / "host-s2.elf",
        table=table,
        prof=prof,
        recipe=recipe,
        hard=hard,
        soft=soft,
        dotted=dotted,
    )
    r = run(args, env, cwd=tmp_path)
    check(r, "error")
    assert {p: _digest(p) for p in inputs} == before, r.describe()


def test_trim_over_its_core(env, buggy, tmp_path):
    """The issue's example: ``trim core.elf ... -o core.elf`` replaced the core."""
    core = tmp_path / "core.elf"
    core.write_bytes((buggy / "host-s2.elf").read_bytes())
    before = _digest(core)
    r = run(["trim", core, "--vttbr", "0x7f700000", "--vtcr", "0x800d3590", "-o", core], env)
    check(r, "error", mentions=[str(core)])
    assert _digest(core) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["decode", "0x4393d7ff"],
        ["decode", "{cap}", "--summary"],
        ["timeline", "{cap}"],
        ["events", "{cap}/trace.txt", "--format", "json"],
        ["violations", "{cap}"],
        ["check", "{cap}"],
        ["profiles"],
        ["probes", "--kernel", "7.3"],
        ["regs", "{real}"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_stdout_full_disk(argv, env, buggy, real612, tmp_path):
    args = _args(argv, cap=buggy, real=real612)
    with open("/dev/full", "w") as full:
        r = run(args, env, cwd=tmp_path, stdout=full.fileno())
    check(r, "error")


@pytest.mark.parametrize(
    "argv",
    [
        ["decode", *(["0x4393d7ff", "0x4"] * 6000)],
        ["decode", "--format", "json", *(["0x4393d7ff"] * 6000)],
        ["events", "{big}", "--format", "json"],
        ["events", "{big}", "--format", "csv"],
        ["timeline", "--kernel", "6.12", "{big}"],
        ["decode", "{cap}", "--all"],
    ],
    ids=["decode-table", "decode-json", "events-json", "events-csv", "timeline", "walk-all"],
)
def test_broken_pipe_is_quiet(argv, env, buggy, tmp_path):
    lines = (buggy / "trace.txt").read_text().splitlines(keepends=True)
    big = tmp_path / "big.txt"
    big.write_text(lines[0] + "".join(lines[5:]) * 30)
    args = _args(argv, cap=buggy, big=big)
    r = run(args, env, cwd=tmp_path, shell_tail="| head -1 >/dev/null")
    # warnings about the input and notes on what was used may stand; no error, no traceback
    quiet = all(line.startswith(("s2trace: warning:", "s2trace: note:")) for line in r.err_lines)
    assert r.rc == 0 and quiet, r.describe()


@pytest.mark.parametrize(
    "argv",
    [
        ["decode", "0x4", "--format", "parquet"],
        ["events", "{cap}/trace.txt", "--format", "parquet"],
        ["timeline", "{cap}", "--format", "parquet"],
        ["decode", "{cap}", "--format", "parquet"],
        ["check", "{cap}", "--format", "parquet"],
    ],
    ids=lambda a: a[0],
)
def test_parquet_needs_a_file(argv, env, buggy, tmp_path):
    check(run(_args(argv, cap=buggy), env, cwd=tmp_path), "error", mentions=["parquet"])


def test_output_is_a_directory(env, buggy, tmp_path):
    r = run(["timeline", buggy, "-o", tmp_path], env, cwd=tmp_path)
    check(r, "error", mentions=[str(tmp_path)])


def test_output_parent_is_a_file(env, buggy, tmp_path):
    out = buggy / "trace.txt" / "out.csv"
    check(run(["timeline", buggy, "-o", out], env, cwd=tmp_path), "error")


def test_output_overwrites_existing(env, buggy, tmp_path):
    """Documented choice: an existing output (not an input) is replaced, atomically."""
    out = tmp_path / "t.csv"
    out.write_text("old\n")
    r = run(["timeline", buggy, "--format", "csv", "-o", out], env, cwd=tmp_path)
    check(r, "ok")
    assert out.read_text() != "old\n" and out.read_text().startswith("addr_start"), r.describe()


def test_output_dev_null_works(env, buggy, tmp_path):
    check(run(["timeline", buggy, "-o", "/dev/null"], env, cwd=tmp_path), "ok")


def test_report_and_synth_directories(env, buggy, tmp_path):
    before = (buggy / "trace.txt").read_bytes()
    runs = run_many(
        [
            ["report", buggy, "-o", tmp_path / "no" / "such" / "dir"],
            ["report", buggy, "-o", buggy / "trace.txt"],
            ["synth", "boot", "-o", buggy / "trace.txt"],
            ["report", buggy, "-o", buggy],
        ],
        env,
        cwd=tmp_path,
    )
    for r in runs[1:3]:
        check(r, "error")
    check(runs[0], "clean")  # the report folder is created
    check(runs[3], "clean")  # a report beside the capture's files: none of them overwritten
    assert (buggy / "trace.txt").read_bytes() == before
