"""The one JSONL reader (srl_sdk/core/jsonl.py): every bad line is named by file and line."""

import pytest

from srl_sdk.core.jsonl import field_named, read_jsonl, row_field
from srl_sdk.errors import InputError


def test_each_line_keeps_its_number_and_its_reason(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{not json\n"caf\xe9"\n[1, 2]\n{"b": 2}')
    lines = list(read_jsonl(path))
    assert [(x.lineno, x.error) for x in lines] == [(1, None), (3, "not_json"), (4, "not_utf8"), (5, None), (6, None)]
    assert lines[0].object() == {"a": 1} and lines[-1].value == {"b": 2} and lines[1].where == "rows.jsonl:3"
    with pytest.raises(InputError, match=r"rows.jsonl:3: not valid JSON"):
        lines[1].object()
    with pytest.raises(InputError, match=r"rows.jsonl:4: not UTF-8 text .*re-encode"):
        lines[2].object()
    with pytest.raises(InputError, match=r"rows.jsonl:5: expected an object with a 'question' field"):
        lines[3].object("an object with a 'question' field")


def test_a_missing_file_says_what_and_how_to_fix(tmp_path):
    with pytest.raises(InputError, match=r"cannot read problems from .*nope.jsonl: .*; check --input"):
        list(read_jsonl(tmp_path / "nope.jsonl", what="problems", hint="check --input"))


def test_the_named_field_wins_else_the_first_default_that_is_set():
    row = {"question": "q", "problem": None, "answer": "4"}
    assert field_named(row, None, ("problem", "question")) == ("question", "q")
    assert field_named(row, "answer", ("problem",)) == ("answer", "4")
    assert row_field(row, "missing", ("question",)) is None
