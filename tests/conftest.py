"""Test-wide setup: Triton kernels run on the CPU under the interpreter when no GPU is present.

TRITON_INTERPRET must be set before triton is first imported, hence here, before any test module loads.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
