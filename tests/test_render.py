"""Text tables fit 120 columns; csv and json keep every value whole."""

from __future__ import annotations

import io

import pandas as pd

from s2trace.render import TABLE_WIDTH, write_frame


def _table(df: pd.DataFrame, **kw) -> str:
    out = io.StringIO()
    write_frame(df, "table", out=out, **kw)
    return out.getvalue()


def test_long_last_column_goes_under_its_row():
    detail = "expected host owned, found host shared_owned " * 8
    df = pd.DataFrame(
        {
            "addr": pd.array([0x44000000, 0x1000], dtype="uint64"),
            "check": ["a", "bb"],
            "detail": [detail, "short"],
        }
    )
    df = pd.concat([df, pd.DataFrame({f"c{i}": ["x" * 9] * 2 for i in range(8)})], axis=1)
    df = df[[c for c in df.columns if c != "detail"] + ["detail"]]
    text = _table(df)
    assert max(len(line) for line in text.splitlines()) <= TABLE_WIDTH
    assert "0x44000000" in text and "short" in text
    # every word of the detail survives, wrapped
    assert " ".join(text.split()).count("found host shared_owned") == 8
    csv = io.StringIO()
    write_frame(df, "csv", out=csv)
    assert detail in csv.getvalue()


def test_text_left_numbers_right_and_cut_marked():
    df = pd.DataFrame({"n": [1, 1000], "name": ["x" * 300, "y"], "tail": [5, 6]})
    text = _table(df)
    lines = text.splitlines()
    assert all(len(line) <= TABLE_WIDTH for line in lines)
    assert lines[1].startswith("   1  xxx") and lines[2].startswith("1000  y ")
    assert "…" in lines[1] and "csv and json hold them whole" in lines[-1]


def test_many_columns_are_printed_in_blocks_with_the_key_repeated():
    df = pd.DataFrame({f"column_{i}": [i * 1_000_000_007] for i in range(20)})
    text = _table(df)
    assert all(len(line) <= TABLE_WIDTH for line in text.splitlines())
    assert text.count("column_0") >= 2 and "column_19" in text


def test_meta_lines_wrap():
    text = _table(pd.DataFrame({"a": [1]}), meta={"notes": "word " * 60})
    assert all(len(line) <= TABLE_WIDTH for line in text.splitlines())
    assert text.startswith("# notes: word")
