"""docs/columns.md is generated from s2trace/columns.py and must stay in step."""

from __future__ import annotations

from pathlib import Path

from s2trace.columns import DESCRIPTOR, markdown
from s2trace.decode.record import Descriptor

DOCS = Path(__file__).resolve().parents[1] / "docs" / "columns.md"


def test_columns_doc_is_current():
    assert DOCS.read_text().strip() == markdown().strip(), (
        "run: python -m s2trace.columns > docs/columns.md"
    )


def test_record_fields_are_the_descriptor_schema():
    assert Descriptor.field_names() == DESCRIPTOR.names
