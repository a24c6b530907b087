"""Test-wide setup: Triton kernels run on the CPU under the interpreter when no GPU is present; backend decisions
are cached in a folder of the test session's own, never in the user's cache.

TRITON_INTERPRET must be set before triton is first imported, hence here, before any test module loads.
"""
import os
import tempfile

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["RMTKD_CACHE_DIR"] = tempfile.mkdtemp(prefix="rmtkd-test-cache-")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny BERT folder (tests/tiny_text.py) shared by the command and benchmark tests."""
    from tests.tiny_text import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
