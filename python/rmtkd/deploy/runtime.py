"""Exported models in ONNX Runtime: the folder ``rmtkd export`` writes, loaded and run on batches.

An export folder holds ``model.onnx`` (float32), ``model.int8.onnx`` (with --int8), ``deploy.json`` (inputs,
outputs, opset, validation errors, versions) and what the adapter needs to make batches (tokenizer, config).
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from rmtkd.adapters.base import ModelAdapter, get_adapter

DEPLOY_FILE = "deploy.json"
EXPORT_FORMAT = 1  # version of the export folder's layout and deploy.json
FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
INSTALL = "pip install 'rmtkd[onnx]' (onnx, onnxscript, onnxruntime)"
# ONNX Runtime graph fusions rmtkd's sessions leave out: on the x86 CPU measured, sessions with the residual Add
# fused into SkipLayerNormalization were 6–29% slower at every shape, float32 and int8 (benchmarks/onnx_choices.py)
SLOWER_FUSIONS = ("SkipLayerNormFusion",)


def require(module: str, purpose: str) -> Any:
    """Import an optional dependency of the ONNX path, or say which is missing and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"{purpose}: needs the {module} package, which is not installed; {INSTALL}") from None


def session(path: Path, threads: Optional[int] = None, unfused: Sequence[str] = SLOWER_FUSIONS,
            profile_prefix: Optional[str] = None, optimized_path: Optional[Path] = None) -> Any:
    """An ONNX Runtime CPU session of ``path`` with every graph optimisation but the fusions in ``unfused``, and
    ``threads`` intra-op threads (default: torch's thread count, so that both runtimes get the same cores).

    Denormal floats are flushed to zero: a padded batch's masked attention scores otherwise make ONNX Runtime's
    float32 kernels run at denormal speed (twice the time at 512 tokens, docs/deploy.md); the values lost are
    below 1.2e-38. ``profile_prefix`` turns on ONNX Runtime's profiler (its file is named by ``end_profiling``);
    ``optimized_path`` writes the graph as optimised, whose node names the profile uses."""
    ort = require("onnxruntime", "ONNX Runtime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    if profile_prefix is not None:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(unfused))


def run_session(onnx_session: Any, inputs: list[dict[str, Any]], batch: dict) -> Tensor:
    """The first output of ``onnx_session`` on ``batch`` (its tensors fed by the names in ``inputs``)."""
    feed = {spec["name"]: batch[spec["name"]].detach().cpu().numpy().astype(spec["dtype"]) for spec in inputs}
    return torch.from_numpy(np.asarray(onnx_session.run(None, feed)[0]))


@dataclass
class ExportedModel:
    """One exported model file with its folder's metadata, adapter (to make batches and score outputs) and the
    Hugging Face config where there is one (label names)."""

    path: Path
    meta: dict[str, Any]
    adapter: ModelAdapter
    config: Any
    session: Any

    @classmethod
    def load(cls, path: str | Path, threads: Optional[int] = None) -> "ExportedModel":
        """``path``: an export folder (its float32 model) or one .onnx file in it."""
        path = Path(path)
        folder, file = (path.parent, path) if path.suffix == ".onnx" else (path, path / FILES["fp32"])
        meta = read_deploy_meta(folder)
        if not file.is_file():
            raise ValueError(f"model: {file} does not exist (the export folder holds {sorted(meta['files'].values())})")
        adapter = get_adapter(meta["adapter"]).for_saved_model(folder)
        config = None
        if (folder / "config.json").is_file():
            config = require("transformers", "model").AutoConfig.from_pretrained(str(folder))
        return cls(file, meta, adapter, config, session(file, threads))

    def run(self, batch: dict) -> Tensor:
        """What the adapter's ``forward`` returns for ``batch`` (logits), computed by ONNX Runtime."""
        return run_session(self.session, self.meta["inputs"], batch)


def is_export_folder(path: str | Path) -> bool:
    """Whether ``path`` is an export folder or a .onnx file in one."""
    path = Path(path)
    return ((path.parent if path.suffix == ".onnx" else path) / DEPLOY_FILE).is_file()


def read_deploy_meta(folder: Path) -> dict[str, Any]:
    """deploy.json of an export folder, checked for the fields rmtkd reads."""
    try:
        meta = json.loads((folder / DEPLOY_FILE).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"model: {folder / DEPLOY_FILE} is missing or unreadable ({error})") from None
    missing = [key for key in ("format", "adapter", "inputs", "files") if key not in meta]
    if missing or meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"model: {folder / DEPLOY_FILE} is not an rmtkd export of format {EXPORT_FORMAT} "
                         f"(missing {missing}, format {meta.get('format')!r})")
    return meta
