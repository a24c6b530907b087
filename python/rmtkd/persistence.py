"""Saving and loading compressed models: safetensors weights plus a small JSON of what was rewritten.

A model folder holds ``model.safetensors`` (shared projections stored once, by safetensors' save_model) and
``rmtkd.json``: {"format": 1, "architecture": {...}, "rewrites": [{kind, names, dim, rank}, ...], ...}. Loading
builds the original architecture from ``architecture`` (no original weights needed), re-applies the rewrites'
shapes and loads the weights, so outputs are identical. Folders are written atomically (``rmtkd.atomic``), so a
crash never leaves a half-written model where a complete one was.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from rmtkd.atomic import write_folder_atomically
from rmtkd.sites import site_kind
from rmtkd.surgery import Rewrite, apply_structure

FORMAT = 1
META_FILE = "rmtkd.json"
WEIGHTS_FILE = "model.safetensors"
Builder = Callable[[dict[str, Any]], nn.Module]


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
    """rmtkd.json of a model folder, checked: valid JSON, this format, an architecture and a list of rewrites."""
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise ValueError(f"path: {path} is not a compressed model folder (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"path: {meta_path} is not readable JSON ({error})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"path: {meta_path} must hold a JSON object, holds {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise ValueError(f"path: {meta_path} has format {meta.get('format')!r}, this rmtkd reads format {FORMAT}")
    if not isinstance(meta.get("architecture"), dict) or not isinstance(meta.get("rewrites"), list):
        raise ValueError(f"path: {meta_path} needs an 'architecture' object and a 'rewrites' list")
    return meta


def _rewrites(meta_path: Path, entries: list[Any]) -> list[Rewrite]:
    """The rewrites of rmtkd.json, each checked for its fields, a known site kind and 1 <= rank <= dim."""
    rewrites = []
    for index, data in enumerate(entries):
        try:
            rewrite = Rewrite.from_dict(data)
            site_kind(rewrite.kind)
            if not rewrite.names or not all(isinstance(name, str) for name in rewrite.names):
                raise ValueError("names: expected a list of module names")
            if not 1 <= rewrite.rank <= rewrite.dim:
                raise ValueError(f"rank: expected 1 <= rank <= dim = {rewrite.dim}, got {rewrite.rank}")
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"path: {meta_path} rewrite {index} is malformed ({error})") from None
        rewrites.append(rewrite)
    return rewrites


def _tensor_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor of a safetensors file, from its header (no tensor is read)."""
    if not weights.is_file():
        raise ValueError(f"path: {weights} is missing")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"path: {weights} is not a readable safetensors file ({error})") from None


def load_compressed(path: str | Path, build: Builder) -> tuple[nn.Module, dict[str, Any]]:
    """(model, meta) from a folder written by save_compressed; ``build(architecture)`` makes the original model.

    The folder is checked before any weight is loaded: rmtkd.json (fields, known site kinds, ranks), the
    safetensors header, each rewrite against the built model, and every tensor's shape against the model's.
    """
    path = Path(path)
    meta = read_meta(path)
    rewrites = _rewrites(path / META_FILE, meta["rewrites"])
    shapes = _tensor_shapes(path / WEIGHTS_FILE)
    try:
        model = build(meta["architecture"])
    except (KeyError, TypeError, ValueError, OSError) as error:
        raise ValueError(f"path: {path / META_FILE} has an architecture this rmtkd cannot build ({error})") from None
    for index, rewrite in enumerate(rewrites):
        try:
            apply_structure(model, rewrite)
        except (AttributeError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise ValueError(f"path: {path / META_FILE} rewrite {index} ({rewrite.kind} on "
                             f"{', '.join(rewrite.names)}) does not fit the model ({error})") from None
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [(name, shape, expected[name]) for name, shape in shapes.items() if name in expected
             and expected[name] != shape]
    if unexpected or wrong:
        detail = (f"{wrong[0][0]} has shape {wrong[0][1]} where the model has {wrong[0][2]}" if wrong
                  else f"it holds tensors the model does not have: {unexpected[:3]}")
        raise ValueError(f"path: {path / WEIGHTS_FILE} does not fit {META_FILE}: {detail}")
    missing, _ = load_model(model, str(path / WEIGHTS_FILE), strict=False)
    if missing:
        raise ValueError(f"path: {path / WEIGHTS_FILE} lacks tensors of the model: {sorted(missing)[:3]}")
    model.eval()
    return model, meta
