"""Backends that are wrong on purpose, registered on import (also by the trial process, which imports this module
because these records name it): automatic choice must never pick them. The one that kills its process is
registered only where RMTKD_TEST_CRASHING_BACKEND=1, for tests whose trials run in a child process."""
from __future__ import annotations

import os

import torch

from rmtkd_kernels import reference
from rmtkd_kernels.backends import Backend, register

CPU = frozenset({"cpu"})
DTYPES = (torch.float32, torch.float64)


def off_by_a_bit(x, basis, weight, bias):
    """Fast (one matmul fewer) and wrong: drops the bias."""
    return reference.projected_linear_ref(x, basis, weight, None)


def adds_twice(x, gram, colsum, nonfinite_rows, row_mask):
    reference.cov_accumulate_ref(x, gram, colsum, nonfinite_rows, row_mask)
    reference.cov_accumulate_ref(x, gram, colsum, nonfinite_rows, row_mask)


def kills_its_process(*args):
    os._exit(139)  # as a kernel's illegal address would end a CUDA process


def raises(*args):
    raise RuntimeError("no kernel image is available for execution on the device")


WRONG = register(Backend(name="wrong", devices=CPU, dtypes=DTYPES, auto_devices=CPU,
                         kernels={"projected_linear": lambda: off_by_a_bit, "cov_accumulate": lambda: adds_twice}))
if os.environ.get("RMTKD_TEST_CRASHING_BACKEND") == "1":
    register(Backend(name="crashing", devices=CPU, dtypes=DTYPES, auto_devices=CPU,
                     kernels={"projected_linear": lambda: kills_its_process}))
RAISING = register(Backend(name="raising", devices=CPU, dtypes=DTYPES, auto_devices=CPU,
                           kernels={"projected_linear": lambda: raises, "cov_accumulate": lambda: raises}))
