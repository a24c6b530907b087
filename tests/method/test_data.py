"""Reading labelled text tables."""
import json

import pytest

from rmtkd.data import read_text_table


def test_tsv_csv_jsonl(tmp_path):
    (tmp_path / "a.tsv").write_text('sentence\tlabel\nit \'s "fine" , really \t1\nbad\t0\n')
    (tmp_path / "a.csv").write_text('text,y\n"hello, world",pos\n')
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "x", "y": 2}) + "\n\n")
    assert read_text_table(tmp_path / "a.tsv") == (['it \'s "fine" , really ', "bad"], ["1", "0"])
    assert read_text_table(tmp_path / "a.csv", "text", "y") == (["hello, world"], ["pos"])
    assert read_text_table(tmp_path / "a.jsonl", "text", None) == (["x"], None)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="data: file not found"):
        read_text_table(tmp_path / "missing.tsv")
    (tmp_path / "e.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(ValueError, match="holds no rows"):
        read_text_table(tmp_path / "e.tsv")
    (tmp_path / "b.tsv").write_text("text\tlabel\nx\t1\n")
    with pytest.raises(ValueError, match="text_column: 'sentence' is not a column"):
        read_text_table(tmp_path / "b.tsv")
    with pytest.raises(ValueError, match="label_column: 'y' is not a column"):
        read_text_table(tmp_path / "b.tsv", "text", "y")
    (tmp_path / "c.parquet").write_text("x")
    with pytest.raises(ValueError, match="expected a .tsv, .csv or .jsonl"):
        read_text_table(tmp_path / "c.parquet")
    (tmp_path / "binary.tsv").write_bytes(b"sentence\tlabel\n\xff\xfe\x00\x81\t1\n")
    with pytest.raises(ValueError, match=r"data: cannot read .*binary.tsv as UTF-8 TSV"):
        read_text_table(tmp_path / "binary.tsv")
    (tmp_path / "broken.jsonl").write_text('{"sentence": "ok", "label": 1}\n{"sentence": \n')
    with pytest.raises(ValueError, match=r"data: cannot read .*broken.jsonl as UTF-8 JSONL"):
        read_text_table(tmp_path / "broken.jsonl")
    (tmp_path / "list.jsonl").write_text('["not", "an", "object"]\n')
    with pytest.raises(ValueError, match="must hold one JSON object per line"):
        read_text_table(tmp_path / "list.jsonl")
