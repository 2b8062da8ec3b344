"""A bounded fuzz of the whole command line: random commands, options, values and files.

Every run must end cleanly: exit 0 or 1 without a traceback, or exit 2 with one error line;
never a hang, never the memory cap.  The budget is bounded in examples
(``S2TRACE_FUZZ_EXAMPLES``, default 40 batches of two runs in parallel: about a minute on two
cores; a failing example is replayed, so the bound cannot be a clock).  Examples are
derandomized so CI is repeatable; set ``S2TRACE_FUZZ_SEED`` to explore other ones.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from hostile.hostile_support import run_many, verdict

EXAMPLES = int(os.environ.get("S2TRACE_FUZZ_EXAMPLES", "40"))
SEED = os.environ.get("S2TRACE_FUZZ_SEED")

COMMANDS: dict[str, list[str]] = {
    "decode": [
        "--level",
        "--granule",
        "--ds",
        "--lpa",
        "--fwb",
        "--profile",
        "--profiles",
        "--format",
        "-o",
        "--explain",
        "--vttbr",
        "--vtcr",
        "--root",
        "--start-level",
        "--ipa-bits",
        "--base",
        "--kallsyms",
        "--iomem",
        "--ttbr0-el2",
        "--tcr-el2",
        "--hcr-el2",
        "--vmemmap",
        "--kernel",
        "--all",
        "--coalesce",
        "--summary",
        "--labels",
        "--no-labels",
        "--dmesg",
        "--strict",
    ],
    "build": [
        "--kind",
        "--level",
        "--granule",
        "--oa",
        "--next-table",
        "--memattr",
        "--s2ap",
        "--sh",
        "--xn",
        "--sw",
        "--state",
        "--owner",
        "--vm-handle",
        "--gfn",
        "--format",
        "--profile",
        "--locked",
        "--contiguous",
    ],
    "events": ["--format", "-o", "--strict"],
    "timeline": [
        "--recipes",
        "--kernel",
        "--linear-map",
        "--page-size",
        "--strict",
        "--no-cache",
        "--format",
        "-o",
    ],
    "violations": ["--kernel", "--linear-map", "--page-size", "--strict", "--format", "-o"],
    "owner": ["--at", "--json", "--kernel", "--linear-map", "--page-size"],
    "explain": ["--at", "--kernel", "--linear-map"],
    "plot": ["--kind", "--at", "--from", "--to", "--bin", "--unit", "--dpi", "-o"],
    "export": ["--perfetto", "--from", "--to", "--kernel"],
    "scan": ["--base", "--top", "--profile"],
    "regs": ["--kallsyms", "--iomem", "--base", "--format"],
    "check": [
        "--vttbr",
        "--vtcr",
        "--ttbr0-el2",
        "--tcr-el2",
        "--kernel",
        "--limit",
        "--format",
        "-o",
        "--strict",
    ],
    "hyp-map": ["--ttbr0-el2", "--tcr-el2", "--hcr-el2", "--kernel", "--format", "-o"],
    "guests": ["--vttbr", "--vtcr", "--vm-table", "--show", "--format", "-o"],
    "diff": ["--vttbr", "--vtcr", "--at", "--kernel", "--linear-map", "--format", "-o"],
    "trim": ["--vttbr", "--vtcr", "--range", "-o", "--base"],
    "probes": ["--kernel", "--script", "--comm"],
    "profiles": ["--profiles"],
    "report": ["-o", "--no-plots", "--no-check", "--strict"],
}
FLAGS = {
    "--ds",
    "--lpa",
    "--fwb",
    "--explain",
    "--all",
    "--coalesce",
    "--summary",
    "--labels",
    "--no-labels",
    "--strict",
    "--no-cache",
    "--json",
    "--script",
    "--locked",
    "--contiguous",
    "--no-plots",
    "--no-check",
}
WORDS = [
    "table",
    "csv",
    "json",
    "parquet",
    "ptdump",
    "page",
    "block",
    "invalid",
    "linux-7.1",
    "linux-5.15,lock_bit=70",
    "4k",
    "16k",
    "64k",
    "churn",
    "map",
    "owners",
    "rw",
    "hyp",
    "6.12",
    "7.3",
    "x",
    "",
    "-",
    "--",
    "0x",
    "1e999",
    "nan",
    "-1",
    "0",
    "3",
    "99999",
    "0x7f700000",
    "0x800d3590",
    "0xffff000000000000=0x40000000",
    "1=2=3",
    "０x１",
    "a\nb",
    "é",
    "0_x1",
    "id:99999999999",
]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, samples: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    cap = root / "buggy"
    shutil.copytree(samples / "synthetic" / "buggy", cap)
    files = {
        "cap": cap,
        "trace": cap / "trace.txt",
        "dump": cap / "host-s2.elf",
        "real": samples / "qemu-pkvm-6.12",
        "empty": root / "empty.txt",
        "garbage": root / "garbage.bin",
        "dir": root / "somedir",
        "missing": root / "missing.txt",
        "toml": root / "x.toml",
        "out": root / "out" / "o.csv",
        "png": root / "out" / "p.png",
    }
    files["empty"].write_bytes(b"")
    files["garbage"].write_bytes(bytes(range(256)) * 33)
    files["dir"].mkdir()
    files["toml"].write_text("[mine]\nowner_bits = [9, 2]\nlock_bit = 99\n")
    (root / "out").mkdir()
    return files


def _argv(draw: st.DrawFn, pool: dict[str, Path]) -> list[str]:
    command = draw(st.sampled_from(sorted(COMMANDS)))
    files = st.sampled_from(sorted(pool)).map(lambda k: str(pool[k]))
    numbers = st.one_of(st.integers(-(1 << 66), 1 << 66).map(hex), st.integers(-5, 99).map(str))
    values = st.one_of(files, numbers, st.sampled_from(WORDS), st.text(max_size=8))
    argv = [command]
    argv += draw(st.lists(st.one_of(files, files, numbers), min_size=0, max_size=3))
    for opt in draw(st.lists(st.sampled_from(COMMANDS[command]), max_size=4)):
        argv.append(opt)
        if opt not in FLAGS and draw(st.integers(0, 9)):
            argv.append(draw(values))
    return argv


_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=SEED is None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _fuzz(data: st.DataObject, pool: dict[str, Path], env: dict[str, str]) -> None:
    batch = [data.draw(st.composite(_argv)(pool)) for _ in range(2)]
    runs = run_many(batch, env, cwd=pool["dir"], timeout=45)
    failures = [f"{'; '.join(bad)}\n{r.describe()}" for r in runs if (bad := verdict(r, "clean"))]
    assert not failures, "\n".join(failures)


_test = given(data=st.data())(_SETTINGS(_fuzz))
if SEED is not None:
    _test = seed(int(SEED))(_test)


def test_fuzz_command_line(pool, env):
    _test(pool=pool, env=env)
