"""Loading any model folder rmtkd can use: its own model folders (the adapter they record) and folders in a
registered adapter's own format (Hugging Face folders of a model type an adapter knows)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch import nn

from rmtkd.adapters.base import ModelAdapter, get_adapter, model_type, registered_adapters
from rmtkd.persistence import META_FILE, load_compressed, read_meta


@dataclass
class LoadedModel:
    adapter: ModelAdapter
    model: nn.Module
    meta: Optional[dict[str, Any]]  # rmtkd.json of an rmtkd model folder; None for a folder in an adapter's format


def known_formats() -> str:
    """The registered adapters and the model types each reads, for error messages."""
    return "; ".join(f"{cls.name} ({', '.join(cls.model_types) or 'rmtkd model folders'})"
                     for cls in registered_adapters())


def load_model(path: str | Path) -> LoadedModel:
    """The model in ``path`` with its adapter: an rmtkd model folder (``rmtkd compress``'s model/ or a teacher/
    it wrote), or a Hugging Face folder of a model type a registered adapter knows."""
    path = Path(path)
    if (path / META_FILE).is_file():
        meta = read_meta(path)
        name = meta["architecture"].get("adapter")
        if name is None:
            raise ValueError(f"model: {path / META_FILE} names no adapter (its architecture has no 'adapter'); "
                             "load it with rmtkd.persistence.load_compressed and the model's own build function")
        adapter = get_adapter(name).for_saved_model(path)
        model, meta = load_compressed(path, adapter.build)
        adapter.check_model(model, path)
        return LoadedModel(adapter, model, meta)
    if not (path / "config.json").is_file():
        raise ValueError(f"model: {path} is neither an rmtkd model folder ({META_FILE}) nor a Hugging Face model "
                         "folder (config.json)")
    for cls in registered_adapters():
        if cls.recognizes(path):
            adapter, model = cls.load_folder(path)
            adapter.check_model(model, path)
            return LoadedModel(adapter, model, None)
    raise ValueError(f"model: {path} holds a {model_type(path)!r} model, which no adapter knows; adapters: "
                     f"{known_formats()}")
