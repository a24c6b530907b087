"""What the Hugging Face adapters share: offline transformers, the tokenizer they hold, folders in transformers'
format, the config as the architecture, tokenised batches."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from rmtkd.adapters.base import ModelAdapter
from rmtkd.atomic import write_folder_atomically


def transformers_offline() -> Any:
    """The transformers module, with the hub switched off (models load from local folders only) and its
    per-file progress bars off (rmtkd shows its own)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    return transformers


def load_tokenizer(folder: str | Path) -> Any:
    try:
        return transformers_offline().AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as error:
        raise ValueError(f"model: {folder} has no usable tokenizer ({error})") from None


class HFModelAdapter(ModelAdapter):
    """A Hugging Face model family: models built through transformers' ``auto_class`` from their config, folders
    in transformers' format (written atomically), and the tokenizer, which every model folder also holds."""

    auto_class: ClassVar[str]  # e.g. "AutoModelForCausalLM"
    description: ClassVar[str]  # what the folder must hold, for errors: "a Hugging Face causal-LM folder"

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def load_folder(cls, folder: Path, **from_pretrained: Any) -> tuple["HFModelAdapter", nn.Module]:
        try:
            tokenizer = load_tokenizer(folder)
            model = getattr(transformers_offline(), cls.auto_class).from_pretrained(str(folder), **from_pretrained)
        except (OSError, ValueError, SafetensorError) as error:
            raise ValueError(f"model: {folder} is not {cls.description} ({error})") from None
        return cls(tokenizer), model

    @classmethod
    def for_saved_model(cls, folder: Path) -> "HFModelAdapter":
        return cls(load_tokenizer(folder))

    def save_folder(self, model: nn.Module, folder: Path) -> None:
        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            self.save_assets(tmp)

        write_folder_atomically(Path(folder), write)

    def save_assets(self, folder: Path) -> None:
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder)

    def save_deploy_assets(self, model: nn.Module, folder: Path) -> None:
        """The tokenizer and the model's config.json (label names, sizes) beside an exported model."""
        self.save_assets(folder)
        model.config.save_pretrained(folder)

    def input_names(self) -> tuple[str, ...]:
        """The batch keys ``forward`` passes to the model."""
        return ("input_ids", "attention_mask")

    def example_batch(self, model: nn.Module, batch_size: int, seq_len: int) -> dict[str, Tensor]:
        """Random token ids of the model's vocabulary; the last row's second half is padding (mask 0)."""
        generator = torch.Generator().manual_seed(batch_size * 1000 + seq_len)
        ids = torch.randint(0, model.get_input_embeddings().num_embeddings, (batch_size, seq_len), generator=generator)
        mask = torch.ones_like(ids)
        if batch_size > 1:
            mask[-1, seq_len // 2:] = 0
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        return {name: batch[name] for name in self.input_names()}

    def check_model(self, model: nn.Module, folder: Path) -> None:
        """The tokenizer must fit the embeddings: no more tokens than rows (ids would fall outside the table),
        and not far fewer (a folder without its tokenizer files loads a stub of a few tokens)."""
        rows = model.get_input_embeddings().num_embeddings
        tokens = len(self.tokenizer)
        if not rows // 2 <= tokens <= rows:
            raise ValueError(f"model: the tokenizer in {folder} has {tokens:,} tokens for {rows:,} embedding rows; "
                             "its files are missing or belong to another model")

    def architecture(self, model: nn.Module) -> dict[str, Any]:
        return {"adapter": self.name, "config": model.config.to_dict()}

    def build(self, architecture: dict[str, Any]) -> nn.Module:
        transformers = transformers_offline()
        config = dict(architecture["config"])
        config_class = transformers.AutoConfig.for_model(config.pop("model_type")).__class__
        return getattr(transformers, self.auto_class).from_config(config_class.from_dict(config))
