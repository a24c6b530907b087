"""The compressed model in standard PyTorch modules only, for exporters and quantizers.

rmtkd's layers compute through its own ops (``ProjectedLinear`` runs the ``projected_linear`` custom op), which
ONNX cannot express and torch's quantizers do not see. :func:`plain_copy` rewrites each into the
nn.Linear/nn.Embedding chain it stands for, with the same values:

- ProjectedLinear (basis P, weight W, bias b) → Sequential(Linear(d → k, no bias, weight Pᵀ), Linear(k → m, W, b));
  the members of a shared-basis site (Q/K/V) keep one shared first Linear, so an exported graph holds one
  initializer for P and ONNX Runtime's common-subexpression pass computes x·P once;
- FactorizedEmbedding (table A, basis P, offset c) → Sequential(Embedding(A), Linear(k → d, weight P, bias c)).

FactorizedLMHead and ProjectedConv2d are already plain modules and stay as they are.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from rmtkd.layers import FactorizedEmbedding
from rmtkd.sites.base import set_submodule
from rmtkd_kernels import ProjectedLinear


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear holding ``weight`` (out, in) and ``bias`` (copies: the rewritten model owns its values)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                      dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _plain_projected(layer: ProjectedLinear, projections: dict[int, nn.Linear]) -> nn.Sequential:
    key = id(layer.basis)
    if key not in projections:
        projections[key] = _linear(layer.basis.detach().T, None)
    return nn.Sequential(projections[key], _linear(layer.weight.detach(), _detached(layer.bias)))


def _plain_embedding(layer: FactorizedEmbedding) -> nn.Sequential:
    table = nn.Embedding(layer.num_embeddings, layer.rank, layer.padding_idx, device=layer.weight.device,
                         dtype=layer.weight.dtype)
    table.weight = layer.weight  # the Parameter itself: a tied LM head (FactorizedLMHead) keeps sharing it
    return nn.Sequential(table, _linear(layer.basis.detach(), layer.offset.detach()))


def _detached(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach()


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode whose rmtkd layers are rewritten as standard modules (see the
    module docstring); the original is untouched. Outputs match the original to float rounding."""
    plain = copy.deepcopy(model).eval()
    projections: dict[int, nn.Linear] = {}
    for name, module in list(plain.named_modules()):
        if isinstance(module, ProjectedLinear):
            replacement = _plain_projected(module, projections)
        elif isinstance(module, FactorizedEmbedding):
            replacement = _plain_embedding(module)
        else:
            continue
        set_submodule(plain, name, replacement)
    return plain


def rewritten_layers(model: nn.Module) -> int:
    """How many rmtkd layers :func:`plain_copy` rewrites in ``model``."""
    return sum(isinstance(m, (ProjectedLinear, FactorizedEmbedding)) for m in model.modules())
