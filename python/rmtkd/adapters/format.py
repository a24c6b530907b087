"""The folder-format role of a model adapter: how a family's models are described, built, loaded and saved.

:mod:`rmtkd.persistence` and :func:`rmtkd.adapters.load_model` need only this role: ``architecture`` and
``build`` rebuild a saved model without its original weights; ``recognizes``/``load_folder`` read folders in the
family's own format (Hugging Face folders); ``save_assets`` adds what a folder needs to be used on its own.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Optional

from torch import nn

from rmtkd.persistence import save_compressed


def model_type(folder: str | Path) -> Optional[str]:
    """config.json's ``model_type`` of a Hugging Face-style folder (None when there is no readable config)."""
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


class ModelFormat(ABC):
    """How a family's model folders are made and read."""

    name: ClassVar[str] = ""  # registry name, saved in model folders; "" for an unregistered adapter
    model_types: ClassVar[tuple[str, ...]] = ()  # config.json model types of folders in its own format, if any

    @classmethod
    def recognizes(cls, folder: Path) -> bool:
        """Whether ``folder`` holds a model in this adapter's own format (a Hugging Face folder whose model type
        it knows). rmtkd's own model folders are recognised by the adapter name they record instead."""
        return model_type(folder) in cls.model_types

    @classmethod
    def load_folder(cls, folder: Path) -> tuple["ModelFormat", nn.Module]:
        """(adapter, model) from a folder in this adapter's own format."""
        raise ValueError(f"model: the {cls.name or cls.__name__} adapter reads no model folder format of its own")

    @classmethod
    def for_saved_model(cls, folder: Path) -> "ModelFormat":
        """The adapter for an rmtkd model folder it wrote (reads the assets it saved, e.g. a tokenizer)."""
        return cls()

    def save_folder(self, model: nn.Module, folder: Path) -> None:
        """Write the uncompressed ``model`` as a folder that :func:`rmtkd.adapters.load_model` reads: rmtkd's own
        format here; adapters with a format of their own (Hugging Face folders) write that instead."""
        save_compressed(model, [], folder, self.architecture(model), write_assets=self.save_assets)

    def save_assets(self, folder: Path) -> None:
        """Write what a model folder needs besides its weights to be used on its own (e.g. the tokenizer)."""

    def save_deploy_assets(self, model: nn.Module, folder: Path) -> None:
        """Write what an exported model (rmtkd.deploy) needs beside its graph: the assets, and what describes the
        model's inputs and outputs (a Hugging Face config)."""
        self.save_assets(folder)

    def check_model(self, model: nn.Module, folder: Path) -> None:
        """Raise a ValueError naming ``folder`` if the loaded model and this adapter's assets do not belong
        together (a tokenizer of another model)."""

    @abstractmethod
    def architecture(self, model: nn.Module) -> dict[str, Any]:
        """What :meth:`build` needs to make ``model`` (uncompressed, without its weights); JSON-ready."""

    @abstractmethod
    def build(self, architecture: dict[str, Any]) -> nn.Module:
        """The uncompressed model described by ``architecture``, randomly initialised."""
