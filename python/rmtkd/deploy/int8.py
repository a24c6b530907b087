"""int8 on top of RMT-KD: dynamic quantization of every Linear, the factors of the compressed layers included.

In PyTorch: torch's eager dynamic quantization (int8 weights, activations quantized per call; the x86/fbgemm
kernels) of :func:`rmtkd.deploy.plain_copy`, where each ProjectedLinear is two nn.Linear and the factorised
embedding's projection one. (torchao's int8 dynamic-activation config ran ~15× slower than these kernels in eager
mode on the CPUs we measured, so it is not used.) In ONNX Runtime: onnxruntime.quantization.quantize_dynamic of
an exported graph (MatMul → MatMulInteger with int8 weights).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from rmtkd.deploy.plain import plain_copy


def _dynamic_linear() -> type[nn.Module]:
    return torch.ao.nn.quantized.dynamic.Linear


def quantize_int8(model: nn.Module) -> nn.Module:
    """An int8 copy of ``model`` for CPU inference: every nn.Linear of its plain copy (rmtkd's layers rewritten as
    standard ones) dynamically quantized to int8 weights. The original is untouched."""
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("model: torch's dynamic int8 quantization runs on the CPU; move the model there first")
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao; the kernels remain
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return torch.ao.quantization.quantize_dynamic(plain_copy(model), {nn.Linear}, dtype=torch.qint8)


def int8_linears(model: nn.Module) -> int:
    """How many int8 dynamically quantized Linears ``model`` holds."""
    return sum(isinstance(m, _dynamic_linear()) for m in model.modules())


def quantize_onnx_int8(source: Path, target: Path) -> None:
    """Write ``target``: the ONNX model ``source`` with every MatMul/Gemm on a constant weight in int8 (ONNX
    Runtime's dynamic quantization: int8 weights, uint8 activations quantized per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process is for static quantization with calibration data
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)
