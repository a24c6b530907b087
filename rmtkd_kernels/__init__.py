"""rmtkd_kernels: fused kernels for RMT-KD as PyTorch custom ops, with drop-in layers.

- ``cov_accumulate`` (rmtkd::cov_accumulate): streaming SYRK, gram += XᵀX (upper triangle), fused column sums.
- ``projected_linear`` (rmtkd::projected_linear): y = (x @ P) @ Wᵀ + b with the intermediate kept on chip.
- ``CovarianceAccumulator`` and ``ProjectedLinear``: what users and the rmtkd method layer hold.
Backends (reference, triton, cuda, cpu) and how to force one: see ``rmtkd_kernels.backends``.
Importing never fails because the native extension is missing: ``EXTENSION`` says what was loaded.
"""
from rmtkd_kernels.backends import backend_names, choose_backend
from rmtkd_kernels.covariance import CovarianceAccumulator
from rmtkd_kernels.extension import EXTENSION
from rmtkd_kernels.nn import ProjectedLinear
from rmtkd_kernels.ops import cov_accumulate, projected_linear

__all__ = [
    "EXTENSION",
    "CovarianceAccumulator",
    "ProjectedLinear",
    "backend_names",
    "choose_backend",
    "cov_accumulate",
    "projected_linear",
]
