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
    with pytest.raises(ValueError, match=r"data: .*broken.jsonl line 2 is not valid JSON"):
        read_text_table(tmp_path / "broken.jsonl")
    (tmp_path / "list.jsonl").write_text('["not", "an", "object"]\n')
    with pytest.raises(ValueError, match="list.jsonl line 1: expected one JSON object per line, found list"):
        read_text_table(tmp_path / "list.jsonl")


def test_malformed_rows_name_their_line(tmp_path):
    """A row with a field too many or too few is never taken as text or label; JSON lines name their line."""
    (tmp_path / "extra.tsv").write_text("sentence\tlabel\nfine\t1\ntoo\tmany\t0\n")
    with pytest.raises(ValueError, match=r"extra.tsv line 3: expected 2 fields \('sentence', 'label'\), found 3"):
        read_text_table(tmp_path / "extra.tsv")
    (tmp_path / "short.tsv").write_text("sentence\tlabel\nfine\t1\nno label here\n")
    with pytest.raises(ValueError, match=r"short.tsv line 3: expected 2 fields .*found 1"):
        read_text_table(tmp_path / "short.tsv")
    (tmp_path / "quoted.csv").write_text('sentence,label\n"a, quoted\nfield",1\nnext,0,extra\n')
    with pytest.raises(ValueError, match=r"quoted.csv line 4: expected 2 fields"):  # line of the file, not row
        read_text_table(tmp_path / "quoted.csv")
    (tmp_path / "keyless.jsonl").write_text('{"sentence": "a", "label": 1}\n\n{"text": "b", "label": 0}\n')
    with pytest.raises(ValueError, match=r"text_column: 'sentence' is missing on line 3 of keyless.jsonl"):
        read_text_table(tmp_path / "keyless.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"sentence": "a", "label": 1}\n\n\n{"sentence": "b", \n')
    with pytest.raises(ValueError, match=r"broken.jsonl line 4 is not valid JSON"):
        read_text_table(tmp_path / "broken.jsonl")


def test_byte_order_marks_and_long_fields(tmp_path):
    (tmp_path / "bom.csv").write_bytes("\ufeffsentence,label\nhello,1\n".encode("utf-8"))
    assert read_text_table(tmp_path / "bom.csv") == (["hello"], ["1"])
    long = "word " * 250_000  # 1.25 MB in one field
    (tmp_path / "long.tsv").write_text(f"sentence\tlabel\n{long}\t1\n")
    assert read_text_table(tmp_path / "long.tsv")[0] == [long]
