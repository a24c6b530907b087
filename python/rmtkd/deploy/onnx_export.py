"""``rmtkd export``: a model folder (compressed, teacher or original) to an ONNX Runtime folder, validated.

The model is first rewritten in standard modules (:func:`rmtkd.deploy.plain_copy`), so every compressed layer
is a MatMul chain and no rmtkd op can reach the graph; it is traced by torch's dynamo ONNX exporter with dynamic
batch (and sequence) axes; the file is then run in ONNX Runtime on two input shapes against the PyTorch model
and refused beyond a float32 tolerance. With ``int8`` the graph is also dynamically quantized and its error
reported. Everything is written in a staging folder that replaces ``out`` only when complete.
"""
from __future__ import annotations

import json
import logging
import platform
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from rmtkd.adapters.behaviour import ModelBehaviour
from rmtkd.adapters.loading import LoadedModel, load_model
from rmtkd.atomic import write_folder_atomically
from rmtkd.deploy.int8 import quantize_onnx_int8
from rmtkd.deploy.plain import plain_copy, rewritten_layers
from rmtkd.deploy.runtime import DEPLOY_FILE, EXPORT_FORMAT, FILES, require, run_session, session
from rmtkd.metrics import count_parameters

MIN_OPSET = 18  # the dynamo exporter's lowest
STANDARD_DOMAINS = ("", "ai.onnx", "com.microsoft")  # ONNX's own ops and ONNX Runtime's contributed ones
EXAMPLE_SHAPES = ((2, 16), (3, 11))  # (batch, sequence) traced with, then checked at another size


class BatchModule(nn.Module):
    """``adapter.forward(model, batch)`` as a module of positional tensors, the form exporters trace."""

    def __init__(self, model: nn.Module, adapter: ModelBehaviour, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.adapter, self.names = model, adapter, tuple(names)

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.adapter.forward(self.model, dict(zip(self.names, inputs)))


def dynamic_axes(tensor: Tensor) -> dict[int, str]:
    """The axes of an input that may change size: axis 0 (the batch) always, axis 1 of a token input (integer,
    2-D: the sequence), axes 2 and 3 of an image batch (4-D: height and width)."""
    if tensor.ndim == 2 and not tensor.is_floating_point():
        return {0: "batch", 1: "sequence"}
    if tensor.ndim == 4:
        return {0: "batch", 2: "height", 3: "width"}
    return {0: "batch"}


def dynamic_shapes(example: dict[str, Tensor]) -> dict[str, dict[int, Any]]:
    """torch.export's dynamic dimensions of every input, one Dim per axis name (shared between inputs)."""
    dims = {name: torch.export.Dim(name) for name in ("batch", "sequence", "height", "width")}
    return {name: {axis: dims[axis_name] for axis, axis_name in dynamic_axes(t).items()}
            for name, t in example.items()}


def _input_specs(example: dict[str, Tensor]) -> list[dict[str, Any]]:
    return [{"name": name, "dtype": str(t.numpy().dtype),
             "shape": [dynamic_axes(t).get(axis, size) for axis, size in enumerate(t.shape)]}
            for name, t in example.items()]


def check_graph(path: Path) -> dict[str, int]:
    """The op counts of an ONNX file; a ValueError if any op lies outside ONNX's and ONNX Runtime's domains (a
    custom op that leaked into the graph)."""
    onnx = require("onnx", "export")
    graph = onnx.load(str(path), load_external_data=False)
    nodes = list(graph.graph.node) + [node for function in graph.functions for node in function.node]
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in nodes if n.domain not in STANDARD_DOMAINS
                      and n.domain not in {f.domain for f in graph.functions}})
    if foreign:
        raise ValueError(f"model: the exported graph holds ops ONNX Runtime does not know: {foreign[:5]}")
    counts: dict[str, int] = {}
    for node in graph.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@torch.no_grad()
def against_pytorch(model: nn.Module, adapter: ModelBehaviour, onnx_session: Any, inputs: list[dict[str, Any]]) -> dict:
    """ONNX Runtime against PyTorch at EXAMPLE_SHAPES: the largest absolute difference, the largest |output|,
    and the share of rows whose arg-max agrees."""
    error = scale = 0.0
    agree = rows = 0
    for batch_size, seq_len in EXAMPLE_SHAPES:
        batch = adapter.example_batch(model, batch_size, seq_len)
        expected = adapter.forward(model, batch).float().cpu()
        got = run_session(onnx_session, inputs, batch).float()
        if got.shape != expected.shape:
            raise ValueError(f"model: the exported graph returned shape {tuple(got.shape)} at batch {batch_size}, "
                             f"sequence {seq_len}; PyTorch returned {tuple(expected.shape)}")
        error = max(error, float((got - expected).abs().max()))
        scale = max(scale, float(expected.abs().max()))
        agree += int((got.argmax(-1) == expected.argmax(-1)).sum())
        rows += expected.argmax(-1).numel()
    return {"max_abs_error": error, "max_abs_output": scale, "argmax_agreement": agree / rows,
            "shapes": [list(shape) for shape in EXAMPLE_SHAPES]}


def traced_copy(model: nn.Module, attention: str = "eager") -> nn.Module:
    """What the exporter traces: :func:`plain_copy`, with a Hugging Face model's attention switched to its eager
    (MatMul, Softmax, MatMul) form unless ``attention`` is "model" (the model's own, SDPA by default). The
    exporter decomposes SDPA with NaN guards (IsNaN and Where over every attention score) that ONNX Runtime runs
    as extra passes over the scores; the eager graph has none and gives the same outputs to float rounding
    (``benchmarks/onnx_choices.py`` times the two)."""
    if attention not in ("eager", "model"):
        raise ValueError(f"attention: expected 'eager' or 'model', got {attention!r}")
    plain = plain_copy(model)
    if attention == "eager" and hasattr(plain, "set_attn_implementation"):
        plain.set_attn_implementation("eager")
    return plain


def trace(model: nn.Module, adapter: ModelBehaviour, target: Path, opset: int, source: Path,
          attention: str = "eager") -> list[dict]:
    """Export ``model`` to ``target`` (see :func:`traced_copy` for ``attention``); the input specs of the graph."""
    example = adapter.example_batch(model, *EXAMPLE_SHAPES[0])
    require("onnxscript", "export")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    traced = BatchModule(traced_copy(model, attention), adapter, list(example)).eval()
    try:
        torch.onnx.export(traced, tuple(example.values()), str(target), dynamo=True, opset_version=opset,
                          input_names=list(example), output_names=["logits"],
                          dynamic_shapes=(tuple(dynamic_shapes(example).values()),), optimize=True, verbose=False,
                          external_data=False)
    except Exception as error:  # noqa: BLE001 - the exporter raises many types; the user needs one message
        raise ValueError(f"model: {source} cannot be exported to ONNX ({first_cause(error)})") from error
    return _input_specs(example)


def first_cause(error: BaseException) -> str:
    """The innermost cause of an exporter error, as one line: what the user can act on (the outer ones say
    which export stage failed)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _check_out(out: Path) -> None:
    if out.exists() and not (out / DEPLOY_FILE).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"out: {out} exists and is not an rmtkd export folder (no {DEPLOY_FILE}); rmtkd replaces "
                         "only its own exports: choose another folder")


def export_onnx(model: str | Path | LoadedModel, out: str | Path, *, int8: bool = False,
                opset: int = MIN_OPSET) -> dict[str, Any]:
    """Export a model folder (or a loaded model) to the ONNX Runtime folder ``out``; returns its deploy.json.

    A loaded model is moved to the CPU in float32 (ONNX Runtime's CPU provider is what the export is checked on).
    Raises a ValueError naming the argument for a folder rmtkd cannot load, an opset below MIN_OPSET, a missing
    optional package, a model the exporter cannot express, or a graph that disagrees with PyTorch.
    """
    out = Path(out)
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset: expected {MIN_OPSET} or newer (the lowest the exporter writes), got {opset!r}")
    for module in ("onnx", "onnxscript", "onnxruntime"):
        require(module, "export")
    _check_out(out)
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    source = Path(model) if not isinstance(model, LoadedModel) else Path("<in memory>")
    network, adapter = loaded.model.to("cpu").float().eval(), loaded.adapter
    meta: dict[str, Any] = {}

    def write(folder: Path) -> None:
        inputs = trace(network, adapter, folder / FILES["fp32"], opset, source)
        meta.update(format=EXPORT_FORMAT, adapter=adapter.name, source=str(source), opset=opset, inputs=inputs,
                    outputs=[{"name": "logits"}], files={"fp32": FILES["fp32"]},
                    parameters=count_parameters(network), rewritten_layers=rewritten_layers(network),
                    compressed_by_rmtkd=bool(loaded.meta and loaded.meta.get("rewrites")),
                    ops={"fp32": check_graph(folder / FILES["fp32"])}, validation={})
        meta["validation"]["fp32"] = fp32 = against_pytorch(network, adapter, session(folder / FILES["fp32"]), inputs)
        fp32["tolerance"] = 1e-4 * (1 + fp32["max_abs_output"])
        if fp32["max_abs_error"] > fp32["tolerance"]:
            raise ValueError(f"model: the exported graph differs from PyTorch by {fp32['max_abs_error']:.3g} "
                             f"(tolerance {fp32['tolerance']:.3g}); the export is not written")
        if int8:
            quantize_onnx_int8(folder / FILES["fp32"], folder / FILES["int8"])
            meta["files"]["int8"] = FILES["int8"]
            meta["ops"]["int8"] = check_graph(folder / FILES["int8"])
            meta["validation"]["int8"] = against_pytorch(network, adapter, session(folder / FILES["int8"]), inputs)
        meta["versions"] = _versions()
        adapter.save_deploy_assets(network, folder)
        (folder / DEPLOY_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    write_folder_atomically(out, write)
    return meta


def _versions() -> dict[str, str]:
    import rmtkd

    return {"python": platform.python_version(), "torch": torch.__version__, "rmtkd": rmtkd.__version__,
            "onnx": require("onnx", "export").__version__,
            "onnxruntime": require("onnxruntime", "export").__version__}
