"""Self-attention relations for distillation (MiniLM-v2): how each token's query, key and value relate to the
other tokens', matched between student and teacher.

For one projection (the output A of a layer's query, key or value Linear, (batch, tokens, heads · head_dim)), the
relation of head h is softmax(A_h A_hᵀ / √head_dim) over the tokens it may attend to (real tokens; earlier ones
in a decoder). The term is KL(relation_teacher ‖ relation_student), averaged over the real query tokens, heads,
projections and layers: zero exactly when the student's relations are the teacher's, in nats like the soft-target
loss. The projections are captured by forward hooks on the Linear modules, so the relations come from any
attention implementation (SDPA, flash) without asking it for its probabilities, and RMT-KD's projected layers
keep their output width, so student and teacher compare head by head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from rmtkd.distributed import SINGLE, Workers


@dataclass(frozen=True)
class AttentionProjections:
    """One attention layer's query, key and value modules, by name, and their head counts. A layer with one
    fused module (GPT-2's c_attn) names it three times: its output splits into three equal parts."""

    query: str
    key: str
    value: str
    heads: int
    kv_heads: int
    causal: bool

    def names(self) -> list[str]:
        return list(dict.fromkeys((self.query, self.key, self.value)))

    def outputs(self, captured: dict[str, Tensor]) -> list[tuple[Tensor, int]]:
        """(query, key, value) outputs from the captured module outputs, each with its head count."""
        if self.query == self.key == self.value:
            query, key, value = captured[self.query].chunk(3, dim=-1)
        else:
            query, key, value = captured[self.query], captured[self.key], captured[self.value]
        return [(query, self.heads), (key, self.kv_heads), (value, self.kv_heads)]


def _log_relations(x: Tensor, heads: int, allowed: Tensor) -> Tensor:
    """log softmax(x_h x_hᵀ / √head_dim) over the allowed tokens: (batch, heads, tokens, tokens), fp32 or wider."""
    batch, tokens, width = x.shape
    if width % heads:
        raise ValueError(f"heads: a projection of width {width} does not split into {heads} heads")
    x = x.to(torch.promote_types(x.dtype, torch.float32)).reshape(batch, tokens, heads, width // heads)
    x = x.transpose(1, 2)
    scores = x @ x.transpose(-1, -2) / math.sqrt(width // heads)
    return F.log_softmax(scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min), dim=-1)


def _allowed(mask: Tensor, causal: bool) -> Tensor:
    """(batch, tokens, tokens): which key token each query token relates to (real tokens; earlier ones if causal,
    the token itself always, so that a padded query row is still a distribution)."""
    tokens = mask.shape[1]
    allowed = mask[:, None, :].expand(-1, tokens, -1).clone()
    if causal:
        allowed &= torch.ones(tokens, tokens, dtype=torch.bool, device=mask.device).tril()
    return allowed | torch.eye(tokens, dtype=torch.bool, device=mask.device)


def relation_loss(student: dict[str, Tensor], teacher: dict[str, Tensor], layers: list[AttentionProjections],
                  mask: Optional[Tensor], workers: Workers = SINGLE) -> Tensor:
    """The mean over ``layers``' query, key and value projections of KL(teacher relation ‖ student relation),
    averaged over the real query tokens of the global batch (``mask``: (batch, tokens), 1 for real tokens;
    None: every token is real) and the heads. Across data-parallel ``workers`` each rank's share is scaled as
    the hidden-state term's is, so averaging gradients gives one process's gradient on the whole batch."""
    if not layers:
        raise ValueError("layers: expected at least one attention layer to compare relations of")
    first = student[layers[0].query]
    if mask is None:
        mask = torch.ones(first.shape[:2], dtype=torch.bool, device=first.device)
    mask = mask.to(device=first.device, dtype=torch.bool)
    rows = workers.all_sum(mask.sum().to(torch.float64).reshape(1)).clamp_min(1).to(torch.float32)
    terms = []
    for layer in layers:
        allowed = _allowed(mask, layer.causal)
        for (s, heads), (t, _) in zip(layer.outputs(student), layer.outputs(teacher)):
            if s.shape != t.shape:
                raise ValueError(f"student: its {layer.query} projection has shape {tuple(s.shape)} and the "
                                 f"teacher's {tuple(t.shape)}; relations compare models of one width")
            log_s, log_t = _log_relations(s, heads, allowed), _log_relations(t.detach(), heads, allowed)
            kl = (log_t.exp() * (log_t - log_s)).sum(-1).mean(1)  # (batch, tokens), averaged over heads
            terms.append((kl * mask).sum() * workers.world_size / rows.to(kl.dtype))
    return torch.stack(terms).mean()
