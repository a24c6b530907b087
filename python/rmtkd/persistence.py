"""Saving and loading compressed models: safetensors weights plus a small JSON of what was rewritten.

A model folder holds ``model.safetensors`` (shared projections stored once, by safetensors' save_model) and
``rmtkd.json``: {"format": 1, "architecture": {...}, "rewrites": [{kind, names, dim, rank}, ...], ...}. Loading
builds the original architecture from ``architecture`` (no original weights needed), re-applies the rewrites'
shapes and loads the weights, so outputs are identical. Folders are written to a temporary sibling and moved
into place, so a crash never leaves a half-written model where a complete one was.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from safetensors.torch import load_model, save_model
from torch import nn

from rmtkd.surgery import Rewrite, apply_structure

FORMAT = 1
META_FILE = "rmtkd.json"
WEIGHTS_FILE = "model.safetensors"
Builder = Callable[[dict[str, Any]], nn.Module]


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write a file through a temporary sibling and a rename: readers see the old or the new file, never half."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(text)
    os.replace(tmp, path)


def save_figure_atomically(figure: Any, path: str | Path) -> Path:
    """Save a matplotlib Figure as PNG through a temporary sibling and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}.png"
    figure.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def write_folder_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a fresh sibling folder, then swap it in place of ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_compressed(model: nn.Module, rewrites: list[Rewrite], path: str | Path, architecture: dict[str, Any],
                    extra: Optional[dict[str, Any]] = None,
                    write_assets: Callable[[Path], None] = lambda folder: None) -> Path:
    """Write ``model`` (original architecture + ``rewrites``) to the folder ``path``; ``write_assets(folder)``
    adds what else the folder needs to be used on its own (a tokenizer)."""
    meta = {"format": FORMAT, "architecture": architecture, "rewrites": [r.to_dict() for r in rewrites],
            **(extra or {})}

    def write(folder: Path) -> None:
        save_model(model, str(folder / WEIGHTS_FILE))
        (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        write_assets(folder)

    write_folder_atomically(Path(path), write)
    return Path(path)


def read_meta(path: str | Path) -> dict[str, Any]:
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise ValueError(f"path: {path} is not a compressed model folder (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"path: {meta_path} has format {meta.get('format')!r}, this rmtkd reads format {FORMAT}")
    return meta


def load_compressed(path: str | Path, build: Builder) -> tuple[nn.Module, dict[str, Any]]:
    """(model, meta) from a folder written by save_compressed; ``build(architecture)`` makes the original model."""
    meta = read_meta(path)
    model = build(meta["architecture"])
    for data in meta["rewrites"]:
        apply_structure(model, Rewrite.from_dict(data))
    missing, unexpected = load_model(model, str(Path(path) / WEIGHTS_FILE), strict=False)
    if missing or unexpected:
        raise ValueError(f"path: the weights in {path} do not fit the rebuilt model "
                         f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    model.eval()
    return model, meta
