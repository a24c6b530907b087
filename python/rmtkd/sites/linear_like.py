"""Modules that compute a Linear map: nn.Linear and Hugging Face's Conv1D (GPT-2's layers, weight stored (in, out))."""
from __future__ import annotations

import torch
from torch import nn


def _conv1d_class() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


_CONV1D = _conv1d_class()


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (_CONV1D is not None and isinstance(module, _CONV1D))


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.weight.shape[0], module.weight.shape[1]


def as_linear(module: nn.Module) -> nn.Linear:
    """The module as an nn.Linear: itself, or a Conv1D's weights transposed into a new one."""
    if isinstance(module, nn.Linear):
        return module
    d_in, d_out = linear_shape(module)
    linear = nn.Linear(d_in, d_out, bias=module.bias is not None, device=module.weight.device,
                       dtype=module.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(module.weight.T)
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    return linear
