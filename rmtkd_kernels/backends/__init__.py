"""Backends of the rmtkd ops: the registry of records (``registry``), the one chooser (``chooser``: forced or
automatic, by ``tuning``'s verified trials of ``trials`` on a ``problem``), and the built-in backends.

``reference`` (pure torch, the oracle; runs anywhere), ``triton`` (Triton kernels: CUDA, or CPU under
TRITON_INTERPRET=1), ``cuda`` (CUDA C++ in rmtkd_kernels._C), ``cpu`` (C++ CPU in rmtkd_kernels._C).
"""
# Each module registers its backend(s) when imported; the order is the registry's order.
from rmtkd_kernels.backends import reference, triton_kernels, native  # noqa: F401, I001
from rmtkd_kernels.backends.chooser import choose_backend
from rmtkd_kernels.backends.registry import (
    ENV_VAR, OPS, Backend, backend_names, get_backend, register, unsupported_reasons,
)

__all__ = ["ENV_VAR", "OPS", "Backend", "backend_names", "choose_backend", "get_backend",
           "register", "unsupported_reasons"]
