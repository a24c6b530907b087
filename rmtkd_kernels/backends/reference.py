"""The reference backend: the pure-torch oracles of rmtkd_kernels.reference, on every device and dtype.

It is the oracle the other backends are checked against, and always a candidate of automatic choice.
"""
from __future__ import annotations

import torch

from rmtkd_kernels import reference
from rmtkd_kernels.backends.registry import Backend, register

REFERENCE = register(Backend(
    name="reference",
    devices=frozenset({"cpu", "cuda", "meta"}),
    dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64),
    kernels={"cov_accumulate": lambda: reference.cov_accumulate_ref,
             "projected_linear": lambda: reference.projected_linear_ref},
    auto_devices=frozenset({"cpu", "cuda"}),
))
