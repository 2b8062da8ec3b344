"""Hostile input files: profile files, capture.toml, special files, capture-folder paths.

Profile files and ``capture.toml`` have a schema: a value of the wrong type, an unknown key, a
file that is not UTF-8 TOML is one line naming the file and the key.  FIFOs and devices are
refused before they are opened (opening a FIFO blocks; a device never ends).  Paths in
``capture.toml`` stay inside the folder: ``..`` and absolute paths are refused with a line that
quotes nothing of the target; symlinks the user made inside the folder are followed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile.hostile_support import check, check_all, make_fifo, run, run_many, verdict

SETTINGS = settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
#: Cases that would hang without the fix get a shorter leash.
HANG_TIMEOUT = 25.0


def toml_value(v: Any) -> str:
    """A TOML rendering of ``v`` (inline tables and arrays; enough for generated documents)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_doc(top: dict[str, Any], tables: dict[str, dict[str, Any]]) -> str:
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in top.items()]
    for name, table in tables.items():
        lines.append(f"[{json.dumps(name)}]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


_scalars = st.one_of(
    st.integers(-(1 << 70), 1 << 70),
    st.integers(-2, 70),
    st.booleans(),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(["0x7f709001", "host", "pte", "vmemmap", "0x١", "../x", "/etc/passwd"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)

_PROFILE_KEYS = [
    "kernels",
    "mapped_owner",
    "owners",
    "owner_bits",
    "owner_type",
    "lock_bit",
    "note_bit",
    "type_bits",
    "types",
    "lock_type",
    "guest_owner",
    "handle_bits",
    "gfn_bits",
    "state_source",
    "state_bits",
    "states",
    "prot_none_bit",
    "unknown_key",
]
_bit_pairs = st.lists(st.integers(-3, 70), min_size=0, max_size=3)
_profile_tables = st.dictionaries(
    st.sampled_from(_PROFILE_KEYS),
    st.one_of(
        _values,
        _bit_pairs,
        st.dictionaries(st.sampled_from(["0", "1", "0x2", "x", "-1", "1e3"]), _scalars, max_size=3),
    ),
    max_size=6,
)


@SETTINGS
@given(
    docs=st.lists(
        st.dictionaries(
            st.sampled_from(["mine", "linux-5.15", "x y"]), _profile_tables, min_size=1, max_size=2
        ),
        min_size=2,
        max_size=2,
    )
)
def test_generated_profile_files(docs, env, tmp_path):
    cases = []
    for i, tables in enumerate(docs):
        path = tmp_path / f"p{i}.toml"
        path.write_text(toml_doc({}, tables))
        name = next(iter(tables))
        cases.append(
            ["decode", "0x4393d7ff", "0x4", "0x7f4", f"--profiles={path}", f"--profile={name}"]
        )
    runs = run_many(cases, env, cwd=tmp_path)
    failures = [
        f"{'; '.join(bad)}\n{(tmp_path / f'p{i}.toml').read_text()}\n{r.describe()}"
        for i, r in enumerate(runs)
        if (bad := verdict(r, "clean"))
    ]
    assert not failures, "\n".join(failures)


PROFILE_DOCS = {
    "owner_bits string": '[mine]\nowner_bits = "x"\n',
    "owner_bits one": "[mine]\nowner_bits = [1]\n",
    "owner_bits three": "[mine]\nowner_bits = [9, 2, 1]\n",
    "owner_bits negative": "[mine]\nowner_bits = [9, -2]\n",
    "owner_bits reversed": "[mine]\nowner_bits = [2, 9]\n",
    "owner_bits floats": "[mine]\nowner_bits = [9.5, 2.0]\n",
    "lock_bit negative": "[mine]\nlock_bit = -1\n",
    "lock_bit 64": "[mine]\nlock_bit = 64\n",
    "lock_bit string": '[mine]\nlock_bit = "10"\n',
    "lock_bit bool": "[mine]\nlock_bit = true\n",
    "owners int": "[mine]\nowners = 5\n",
    "owners bad key": '[mine]\nowners = { x = "host" }\n',
    "owners value table": "[mine]\nowners = { 0 = { a = 1 } }\n",
    "owners huge id": '[mine]\nowners = { 99999999999999999999999 = "big" }\n',
    "states bad key": '[mine]\nstate_bits = [56, 55]\nstates = { "١" = "owned" }\n',
    "kernels int": "[mine]\nkernels = 5\n",
    "state_source int": "[mine]\nstate_source = 1\n",
    "state_source other": '[mine]\nstate_source = "elsewhere"\n',
    "unknown key": "[mine]\ncolour = 1\n",
    "top-level scalar": "mine = 1\n",
    "top-level array": "mine = [1, 2]\n",
    "name key": '[mine]\nname = "other"\n',
    "deep nesting": "[mine]\nowners = " + "[" * 400 + "]" * 400 + "\n",
    "not toml": "[mine\nowner_bits = \n",
}


@pytest.mark.parametrize("doc", PROFILE_DOCS.values(), ids=PROFILE_DOCS.keys())
def test_bad_profile_file(doc, env, tmp_path):
    path = tmp_path / "profiles.toml"
    path.write_text(doc)
    r = run(["decode", "0x4", "--profiles", path, "--profile", "mine"], env, cwd=tmp_path)
    check(r, "error", mentions=[str(path)])


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("utf16", "[mine]\nowner_bits = [9, 2]\n".encode("utf-16")),
        ("latin1", '[mine]\nkernels = "caf\xe9"\n'.encode("latin-1")),
        ("binary", bytes(range(256)) * 4),
        ("nul", b"[mine]\n\x00owner_bits = [9, 2]\n"),
    ],
)
def test_profile_file_bytes(name, data, env, tmp_path):
    path = tmp_path / f"{name}.toml"
    path.write_bytes(data)
    r = run(["profiles", "--profiles", path], env, cwd=tmp_path)
    check(r, "error", mentions=[str(path)])


def test_profile_file_empty_is_fine(env, tmp_path):
    path = tmp_path / "empty.toml"
    path.write_text("")
    check(run(["profiles", "--profiles", path], env), "ok")


# -- special files ---------------------------------------------------------------------------
SPECIAL = {
    "--profiles fifo": (["decode", "0x4", "--profiles", "{fifo}"], "{fifo}"),
    "--profiles /dev/zero": (["decode", "0x4", "--profiles", "/dev/zero"], "/dev/zero"),
    "profiles --profiles /dev/zero": (["profiles", "--profiles", "/dev/zero"], "/dev/zero"),
    "--kallsyms /dev/zero": (
        ["regs", "{buggy}/host-s2.elf", "--kallsyms", "/dev/zero"],
        "/dev/zero",
    ),
    "walk --kallsyms /dev/zero": (
        ["decode", "{buggy}/host-s2.elf", "--kallsyms", "/dev/zero", "--summary"],
        "/dev/zero",
    ),
    "dump fifo": (["decode", "{fifo}", "--vttbr", "0x7f700000", "--vtcr", "0x800d3590"], "{fifo}"),
    "regs fifo": (["regs", "{fifo}"], "{fifo}"),
    "scan fifo": (["scan", "{fifo}"], "{fifo}"),
    "dump /dev/zero": (
        ["decode", "/dev/zero", "--vttbr", "0x7f700000", "--vtcr", "0x800d3590"],
        "/dev/zero",
    ),
    "regs /dev/zero": (["regs", "/dev/zero"], "/dev/zero"),
    "trace fifo": (["timeline", "{fifo}"], "{fifo}"),
    "events /dev/zero": (["events", "/dev/zero"], "/dev/zero"),
    "timeline /dev/zero": (["timeline", "/dev/zero"], "/dev/zero"),
    "recipes fifo": (["timeline", "{buggy}", "--recipes", "{fifo}"], "{fifo}"),
    "recipes /dev/zero": (["timeline", "{buggy}", "--recipes", "/dev/zero"], "/dev/zero"),
    "table file fifo": (["decode", "{fifo}", "--level", "3"], "{fifo}"),
    "table file /dev/zero": (["decode", "/dev/zero", "--level", "3"], "/dev/zero"),
    "check --trace fifo": (["check", "{real}", "--trace", "{fifo}"], "{fifo}"),
    "dmesg fifo": (["decode", "{buggy}", "--dmesg", "{fifo}", "--labels"], "{fifo}"),
    "raw fifo@pa": (
        ["decode", "{fifo}@0x40000000", "--vttbr", "0x7f700000", "--vtcr", "0x800d3590"],
        "{fifo}",
    ),
}


@pytest.mark.parametrize(("argv", "mention"), SPECIAL.values(), ids=SPECIAL.keys())
def test_special_file_refused(argv, mention, env, buggy, samples, tmp_path):
    fifo = make_fifo(tmp_path / "pipe")
    real = samples / "qemu-pkvm-6.12"
    args = [a.format(fifo=fifo, buggy=buggy, real=real) for a in argv]
    r = run(args, env, cwd=tmp_path, timeout=HANG_TIMEOUT)
    check(r, "error", mentions=[mention.format(fifo=fifo)])


CAPTURE_SPECIAL = {
    "capture.toml fifo": ("capture.toml", "fifo"),
    "dump fifo": ("host-s2.elf", "fifo"),
    "trace fifo": ("trace.txt", "fifo"),
    "trace /dev/zero": ("trace.txt", "/dev/zero"),
    "dump /dev/zero": ("host-s2.elf", "/dev/zero"),
}


COMMANDS_ON_CAPTURE = ("timeline", "decode", "report")


def _on_capture(command: str, folder: Path) -> list[object]:
    return {
        "timeline": ["timeline", folder],
        "decode": ["decode", folder, "--summary"],
        "report": ["report", folder],
    }[command]


@pytest.mark.parametrize(("member", "kind"), CAPTURE_SPECIAL.values(), ids=CAPTURE_SPECIAL.keys())
def test_capture_member_special(member, kind, env, buggy, tmp_path):
    target = buggy / member
    keep = (buggy / "capture.toml").read_text()
    target.unlink()
    if kind == "fifo":
        make_fifo(target)
    else:
        target.symlink_to(kind)
    if member != "capture.toml":
        (buggy / "capture.toml").write_text(keep)
    argv = [_on_capture(c, buggy) for c in COMMANDS_ON_CAPTURE]
    runs = run_many(argv, env, cwd=tmp_path, timeout=HANG_TIMEOUT)
    for command, r in zip(COMMANDS_ON_CAPTURE, runs, strict=True):
        if command == "decode" and member == "trace.txt":
            check(r, "clean")  # the walk need not read the trace
        else:
            check(r, "error", mentions=[member])


# -- capture.toml schema -----------------------------------------------------------------------
_CAPTURE_KEYS = ["kernel", "dump", "trace", "kallsyms", "iomem", "dmesg", "linear_map", "other"]


@SETTINGS
@given(
    docs=st.lists(
        st.tuples(
            st.dictionaries(st.sampled_from(_CAPTURE_KEYS), _values, max_size=4),
            st.dictionaries(
                st.sampled_from(["vttbr_el2", "vtcr_el2", "hcr_el2", "ttbr0_el2", "x"]),
                _values,
                max_size=3,
            ),
        ),
        min_size=2,
        max_size=2,
    )
)
def test_generated_capture_toml(docs, env, samples, tmp_path):
    cases = []
    base_dir = Path(tempfile.mkdtemp(dir=tmp_path))  # a new one for every example
    for i, (top, regs) in enumerate(docs):
        folder = base_dir / f"cap{i}"
        shutil.copytree(samples / "synthetic" / "buggy", folder)
        base = {"dump": ["host-s2.elf"], "trace": "trace.txt", "kernel": "6.12"}
        base.update(top)
        tables = {"registers": regs} if regs else {}
        (folder / "capture.toml").write_text(toml_doc(base, tables))
        cases += [["decode", folder, "--summary"], ["timeline", folder]]
    runs = run_many(cases, env, cwd=tmp_path)
    failures = [
        f"{'; '.join(bad)}\n{(Path(r.args[1]) / 'capture.toml').read_text()[:600]}\n{r.describe()}"
        for r in runs
        if (bad := verdict(r, "clean"))
    ]
    assert not failures, "\n".join(failures)


CAPTURE_DOCS = {
    "dump int": 'dump = 5\ntrace = "trace.txt"\n',
    "dump ints": "dump = [1, 2]\n",
    "dump table": "dump = { a = 1 }\n",
    "dump nested": 'dump = [["host-s2.elf"]]\n',
    "dump deep": "dump = " + "[" * 600 + "]" * 600 + "\n",
    "dump empty string": 'dump = ""\n',
    "dump directory": 'dump = ["."]\n',
    "kernel int": 'dump = ["host-s2.elf"]\nkernel = 612\n',
    "kernel junk": 'dump = ["host-s2.elf"]\nkernel = "banana"\n',
    "kernel table": 'dump = ["host-s2.elf"]\nkernel = { v = 1 }\n',
    "registers int": 'dump = ["host-s2.elf"]\nregisters = 5\n',
    "register junk": 'dump = ["host-s2.elf"]\n[registers]\nvttbr_el2 = "zz"\nvtcr_el2 = "0x1"\n',
    "register negative": 'dump = ["host-s2.elf"]\n[registers]\nvttbr_el2 = -1\n'
    'vtcr_el2 = "0x800d3590"\n',
    "register float": 'dump = ["host-s2.elf"]\n[registers]\nvttbr_el2 = 1e3\n',
    "register list": 'dump = ["host-s2.elf"]\n[registers]\nvttbr_el2 = [1]\n',
    "register too wide": 'dump = ["host-s2.elf"]\n[registers]\nvttbr_el2 = "0x1ffffffffffffffff"\n'
    'vtcr_el2 = "0x800d3590"\n',
    "register unicode": 'dump = ["host-s2.elf"]\n[registers]\nvttbr_el2 = "0x７f700000"\n'
    'vtcr_el2 = "0x800d3590"\n',
    "register unknown": 'dump = ["host-s2.elf"]\n[registers]\nvtxxx_el2 = "0x1"\n',
    "linear_map int": 'dump = ["host-s2.elf"]\nlinear_map = 5\n',
    "linear_map junk": 'dump = ["host-s2.elf"]\nlinear_map = "a=b"\n',
    "linear_map huge": 'dump = ["host-s2.elf"]\nlinear_map = "0x1=0x10000000000000000"\n',
    "trace int": 'dump = ["host-s2.elf"]\ntrace = 5\n',
    "trace list": 'dump = ["host-s2.elf"]\ntrace = ["trace.txt"]\n',
    "trace missing": 'dump = ["host-s2.elf"]\ntrace = "nope.txt"\n',
    "trace directory": 'dump = ["host-s2.elf"]\ntrace = "."\n',
    "trace empty name": 'dump = ["host-s2.elf"]\ntrace = ""\n',
    "trace newline name": 'dump = ["host-s2.elf"]\ntrace = "a\\nb"\n',
    "unknown key": 'dump = ["host-s2.elf"]\ntrace = "trace.txt"\ncolour = "blue"\n',
    "no dump": 'trace = "trace.txt"\n',
    "not toml": "dump = [\n",
    "empty": "",
}


@pytest.mark.parametrize("doc", CAPTURE_DOCS.values(), ids=CAPTURE_DOCS.keys())
def test_bad_capture_toml(doc, env, buggy, tmp_path):
    (buggy / "capture.toml").write_text(doc)
    runs = run_many([["decode", buggy, "--summary"], ["timeline", buggy]], env, cwd=tmp_path)
    check_all(runs, "error", mentions=["capture.toml"])


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("latin1", 'dump = ["host-s2.elf"]\nkernel = "6.12-caf\xe9"\n'.encode("latin-1")),
        ("utf16", 'dump = ["host-s2.elf"]\n'.encode("utf-16")),
        ("binary", bytes(range(256)) * 8),
    ],
)
def test_capture_toml_bytes(name, data, env, buggy, tmp_path):
    (buggy / "capture.toml").write_bytes(data)
    check(run(["decode", buggy, "--summary"], env, cwd=tmp_path), "error", ["capture.toml"])


def test_capture_toml_is_directory(env, buggy, tmp_path):
    (buggy / "capture.toml").unlink()
    (buggy / "capture.toml").mkdir()
    check(run(["timeline", buggy], env, cwd=tmp_path), "error", ["capture.toml"])


# -- capture folders stay inside themselves ---------------------------------------------------
SECRET = "TOPSECRET-first-line-of-a-file-outside"
ESCAPES = {
    "absolute dump": ('dump = ["{secret}"]\n', "dump"),
    "absolute dump@pa": ('dump = ["{secret}@0x40000000"]\n', "dump"),
    "dotdot trace": ('dump = ["host-s2.elf"]\ntrace = "../secret.txt"\n', "trace"),
    "deep dotdot trace": (
        'dump = ["host-s2.elf"]\ntrace = "../../../../../../..{secret}"\n',
        "trace",
    ),
    "dotdot kallsyms": ('dump = ["host-s2.elf"]\nkallsyms = "../secret.txt"\n', "kallsyms"),
    "dotdot iomem": ('dump = ["host-s2.elf"]\niomem = "sub/../../secret.txt"\n', "iomem"),
    "absolute dmesg": ('dump = ["host-s2.elf"]\ndmesg = "{secret}"\n', "dmesg"),
    "etc passwd": ('dump = ["/etc/passwd"]\n', "dump"),
    "etc shadow": ('dump = ["host-s2.elf"]\ntrace = "../../../../etc/shadow"\n', "trace"),
}


@pytest.mark.parametrize(("doc", "key"), ESCAPES.values(), ids=ESCAPES.keys())
def test_capture_path_escape_refused(doc, key, env, buggy, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET + "\nsecond line\n")
    (buggy / "sub").mkdir()
    (buggy / "capture.toml").write_text(
        doc.format(secret=secret) + ('trace = "trace.txt"\n' if "trace" not in doc else "")
    )
    runs = run_many([_on_capture(c, buggy) for c in COMMANDS_ON_CAPTURE], env, cwd=tmp_path)
    check_all(runs, "error", mentions=[key])
    for r in runs:
        assert SECRET not in r.err + r.out, r.describe()
        assert "root:" not in r.err + r.out, r.describe()


def test_capture_symlink_inside_is_followed(env, buggy, tmp_path):
    """A symlink the user made inside the folder is the user's choice: followed."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(buggy / "trace.txt", outside / "trace.txt")
    (buggy / "trace.txt").symlink_to(outside / "trace.txt")
    r = run(["violations", buggy], env, cwd=tmp_path)
    check(r, "ok")
    assert "double_unshare" in r.out, r.describe()


def test_folder_of_elf_files_is_not_a_capture(env, buggy, tmp_path):
    folder = tmp_path / "cores"
    folder.mkdir()
    shutil.copy(buggy / "host-s2.elf", folder / "vmcore-a.elf")
    shutil.copy(buggy / "host-s2.elf", folder / "vmcore-b.elf")
    for args in (["decode", folder, "--summary"], ["timeline", folder]):
        check(run(args, env, cwd=tmp_path), "error", mentions=[str(folder)])


def test_capture_layout_still_read(env, real612, tmp_path):
    """The capture-script layout (no capture.toml; host-s2.elf.zst, gdb-regs.txt) still works."""
    (real612 / "capture.toml").unlink()
    r = run(["decode", real612, "--summary"], env, cwd=tmp_path)
    check(r, "clean")
    assert os.path.isdir(real612)
