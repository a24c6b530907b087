"""Property-based tests of the data readers: any file gives either exactly its rows or one ValueError."""
from __future__ import annotations

import csv
import io
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rmtkd.data import read_text_table

FIELD = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
TSV_FIELD = st.text(st.characters(blacklist_categories=("Cs", "Zl", "Zp"),
                                  blacklist_characters="\t\n\r\x00\x0b\x0c\x1c\x1d\x1e\x85"), max_size=12)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def read(tmp_path, name, content: bytes):
    """read_text_table's answer, or the ValueError's message; any other exception fails the test."""
    path = tmp_path / name
    path.write_bytes(content)
    try:
        return read_text_table(path)
    except ValueError as error:
        return str(error)


@SETTINGS
@given(rows=st.lists(st.lists(TSV_FIELD, min_size=0, max_size=4), max_size=8))
def test_tsv_rows_are_taken_whole_or_refused(tmp_path, rows):
    text = "sentence\tlabel\n" + "".join("\t".join(row) + "\n" for row in rows)
    result = read(tmp_path, "x.tsv", text.encode())
    counted = [row for row in rows if row != [] and row != [""]]  # blank lines are skipped
    if counted and all(len(row) == 2 for row in counted):
        assert result == ([row[0] for row in counted], [row[1] for row in counted])
    else:
        assert isinstance(result, str) and result.startswith("data: ")


@SETTINGS
@given(rows=st.lists(st.lists(FIELD, min_size=1, max_size=3), min_size=1, max_size=6))
def test_csv_rows_with_any_characters_round_trip_or_are_refused(tmp_path, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["sentence", "label"])
    writer.writerows(rows)
    result = read(tmp_path, "x.csv", buffer.getvalue().encode())  # the writer quotes a lone empty field: not blank
    if all(len(row) == 2 for row in rows):
        assert result == ([row[0] for row in rows], [row[1] for row in rows])
    else:
        assert isinstance(result, str) and result.startswith("data: ")


JSON_VALUE = st.recursive(st.none() | st.booleans() | st.integers() | FIELD,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(FIELD, inner, max_size=3),
                          max_leaves=5)
JSON_ROW = st.fixed_dictionaries({"sentence": FIELD, "label": st.integers(0, 3)}) | JSON_VALUE


@SETTINGS
@given(rows=st.lists(JSON_ROW, max_size=6), broken=st.sampled_from(["", "{", '{"sentence": ', "[1,", "nul"]))
def test_json_lines_of_any_shape_give_rows_or_one_error(tmp_path, rows, broken):
    text = "".join(json.dumps(row) + "\n" for row in rows) + (broken + "\n" if broken else "")
    result = read(tmp_path, "x.jsonl", text.encode())
    good = all(isinstance(row, dict) and {"sentence", "label"} <= set(row) for row in rows)
    if rows and good and not broken:
        assert result == ([str(row["sentence"]) for row in rows], [str(row["label"]) for row in rows])
    else:
        assert isinstance(result, str)
        assert result.startswith(("data: ", "text_column: ", "label_column: "))


@SETTINGS
@given(content=st.binary(max_size=200), suffix=st.sampled_from(["tsv", "csv", "jsonl"]))
def test_arbitrary_bytes_never_raise_anything_but_value_error(tmp_path, content, suffix):
    result = read(tmp_path, f"x.{suffix}", content)
    assert isinstance(result, (str, tuple))
