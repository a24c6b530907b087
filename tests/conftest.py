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


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: runs on a CUDA device when there is one (scripts/gpu-check.sh runs "
                                       "`pytest -m gpu` on a GPU)")


def pytest_collection_modifyitems(config, items):
    """Every test parametrised on the cuda device is a GPU test too."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "cuda" in callspec.id.split("-"):
            item.add_marker(pytest.mark.gpu)
