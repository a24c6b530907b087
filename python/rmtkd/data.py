"""Reading labelled text tables (TSV, CSV, JSONL), e.g. GLUE SST-2's train.tsv as it ships."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional


def read_text_table(path: str | Path, text_column: str = "sentence",
                    label_column: Optional[str] = "label") -> tuple[list[str], Optional[list[str]]]:
    """(texts, labels or None). Format by suffix: .tsv, .csv, .jsonl/.json (one object per line)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data: file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",",
                                       quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL))
    elif suffix in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
    else:
        raise ValueError(f"data: expected a .tsv, .csv or .jsonl file, got {path.name}")
    if not rows:
        raise ValueError(f"data: {path} holds no rows")
    columns = list(rows[0].keys())
    if text_column not in columns:
        raise ValueError(f"text_column: {text_column!r} is not a column of {path.name} (columns: {columns})")
    if label_column is not None and label_column not in columns:
        raise ValueError(f"label_column: {label_column!r} is not a column of {path.name} (columns: {columns})")
    texts = [str(row[text_column]) for row in rows]
    labels = [str(row[label_column]) for row in rows] if label_column is not None else None
    return texts, labels
