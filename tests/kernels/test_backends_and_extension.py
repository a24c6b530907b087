"""Backend choice, overrides, argument errors, and what the native build really contains."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rmtkd_kernels
from rmtkd_kernels import EXTENSION, choose_backend, cov_accumulate, projected_linear
from rmtkd_kernels.backends import ENV_VAR


def test_auto_choice_on_cpu():
    """The C++ CPU kernel competes with the reference (trials decide); projected_linear has only the reference on
    the CPU, and the interpreted Triton kernels are not tried unless asked for."""
    x = torch.randn(64, 4)
    able = {"cpu", "reference"} if EXTENSION.has_kernel("cov_accumulate", "CPU") else {"reference"}
    assert choose_backend("cov_accumulate", x) in able
    assert choose_backend("cov_accumulate", x.double()) in able
    assert choose_backend("projected_linear", x) == "reference"


def test_forced_backend_that_cannot_run_says_why(monkeypatch):
    x = torch.randn(4, 4)
    with pytest.raises(ValueError, match="backend: backend 'cuda' cannot run cov_accumulate here: .*cuda tensors"):
        choose_backend("cov_accumulate", x, "cuda")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        choose_backend("cov_accumulate", x, "fast")
    with pytest.raises(ValueError, match="triton backend takes float32/float16/bfloat16"):
        choose_backend("projected_linear", x.double(), "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        choose_backend("cov_accumulate", x, "triton")


def test_environment_override(monkeypatch):
    x = torch.randn(4, 4)
    monkeypatch.setenv(ENV_VAR, "reference")
    assert choose_backend("cov_accumulate", x) == "reference"
    monkeypatch.setenv(ENV_VAR, "projected_linear=triton")
    assert choose_backend("projected_linear", x) == "triton"
    assert choose_backend("cov_accumulate", x) != "triton"  # other ops keep the automatic choice
    assert choose_backend("projected_linear", x, "reference") == "reference"  # the argument wins
    monkeypatch.setenv(ENV_VAR, "cov=cpu")
    with pytest.raises(ValueError, match=f"{ENV_VAR}: unknown op 'cov'"):
        choose_backend("cov_accumulate", x)
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(ValueError, match=f"{ENV_VAR}: backend 'cuda' cannot run"):
        choose_backend("cov_accumulate", x)


def _cov_state(d=4, dtype=torch.float64):
    return torch.zeros(d, d, dtype=dtype), torch.zeros(d, dtype=torch.float64), torch.zeros((), dtype=torch.int64)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: cov_accumulate(torch.randn(3, 4, 1), *_cov_state()), r"x: expected a 2-D tensor"),
        (lambda: cov_accumulate(torch.randn(3, 5), *_cov_state()), r"gram: expected shape \(5, 5\)"),
        (lambda: cov_accumulate(torch.randn(3, 4), *_cov_state(dtype=torch.float16)), r"gram: expected dtype in"),
        (lambda: cov_accumulate(torch.randint(0, 3, (3, 4)), *_cov_state()), r"x: expected dtype in"),
        (lambda: cov_accumulate(torch.randn(3, 4), torch.zeros(4, 4, dtype=torch.float64),
                                torch.zeros(4), torch.zeros((), dtype=torch.int64)), r"colsum: expected a float64"),
        (lambda: cov_accumulate(torch.randn(3, 4), *_cov_state()[:2], torch.zeros(2, dtype=torch.int64)),
         r"nonfinite_rows: expected a one-element int64"),
        (lambda: cov_accumulate(torch.randn(3, 4), *_cov_state(), torch.ones(3)), r"row_mask: expected a bool"),
        (lambda: cov_accumulate(torch.randn(3, 4), *_cov_state(), torch.ones(4, dtype=torch.bool)),
         r"row_mask: expected shape \(3,\)"),
        (lambda: cov_accumulate(torch.randn(3, 4), torch.zeros(8, 8, dtype=torch.float64)[::2, ::2],
                                *_cov_state()[1:]), r"gram: expected a contiguous tensor"),
        (lambda: cov_accumulate(torch.randn(3, 4), _cov_state()[0], torch.zeros(8, dtype=torch.float64)[::2],
                                _cov_state()[2]), r"colsum: expected a contiguous tensor"),
        (lambda: projected_linear(torch.randn(3, 5), torch.randn(4, 2), torch.randn(6, 2)),
         r"x: expected last dimension 4"),
        (lambda: projected_linear(torch.randn(3, 4), torch.randn(4, 2), torch.randn(6, 3)),
         r"weight: expected 2 columns to match basis's k = 2"),
        (lambda: projected_linear(torch.randn(3, 4), torch.randn(4, 2).double(), torch.randn(6, 2)),
         r"basis: expected dtype torch.float32"),
        (lambda: projected_linear(torch.randn(3, 4), torch.randn(4, 2), torch.randn(6, 2), torch.randn(5)),
         r"bias: expected shape \(6,\)"),
        (lambda: projected_linear(torch.randn(3, 4), torch.randn(4, 2, 1), torch.randn(6, 2)),
         r"basis: expected a 2-D tensor"),
        (lambda: projected_linear(torch.tensor(1.0), torch.randn(4, 2), torch.randn(6, 2)),
         r"x: expected a tensor of shape \(\.\.\., d_in\) with d_in >= 1"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU for a device mismatch")
def test_device_mismatch_is_named():
    with pytest.raises(ValueError, match="basis: expected a tensor on cuda"):
        projected_linear(torch.randn(3, 4, device="cuda"), torch.randn(4, 2), torch.randn(6, 2, device="cuda"))


def test_native_build_matches_expectation():
    """CI sets RMTKD_EXPECT_EXTENSION=cuda: then the built module must really hold the CUDA kernels."""
    expected = os.environ.get("RMTKD_EXPECT_EXTENSION")
    if expected is None:
        pytest.skip("RMTKD_EXPECT_EXTENSION not set (CI sets it to the build it asked for)")
    assert expected in ("cuda", "cpu", "none"), f"RMTKD_EXPECT_EXTENSION={expected!r}"
    if expected == "none":
        assert not EXTENSION.loaded
        return
    assert EXTENSION.loaded, EXTENSION.error
    assert EXTENSION.has_kernel("cov_accumulate", "CPU")
    assert EXTENSION.with_cuda == (expected == "cuda")
    if expected == "cuda":
        assert EXTENSION.has_kernel("cov_accumulate", "CUDA")
        binary = Path(rmtkd_kernels._C.__file__).read_bytes()
        assert b".nv_fatbin" in binary, "no device code section in the extension"
        for kernel in (b"cov_syrk_kernel", b"colsum_kernel"):
            assert kernel in binary, f"{kernel.decode()} missing from the extension"


def test_import_and_ops_work_without_the_extension():
    """A pure-Python install (no _C) imports, reports why, and runs every op on the reference."""
    script = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'rmtkd_kernels._C': raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, rmtkd_kernels as rk\n"
        "assert not rk.EXTENSION.loaded and 'blocked' in rk.EXTENSION.error\n"
        "acc = rk.CovarianceAccumulator(3); acc.update(torch.randn(10, 3)); acc.covariance()\n"
        "x = torch.randn(2, 3); assert rk.choose_backend('cov_accumulate', x) == 'reference'\n"
        "rk.projected_linear(x, torch.randn(3, 2), torch.randn(4, 2))\n"
        "try:\n"
        "    rk.choose_backend('cov_accumulate', x, 'cpu')\n"
        "except ValueError as e:\n"
        "    assert 'not built' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('forcing cpu without the extension must fail')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.fixture
def scratch_registry(monkeypatch):
    """The backend registry as a copy that the test may extend; choices made meanwhile are forgotten after."""
    from rmtkd_kernels.backends import chooser, registry

    with registry.BACKENDS.scoped():
        chooser.forget_decisions()
        yield registry
    chooser.forget_decisions()


def test_a_new_backend_is_one_record_and_one_registration(scratch_registry):
    """A backend defined outside the package runs through the public ops, forced or by automatic choice."""
    from rmtkd_kernels import reference
    from rmtkd_kernels.backends import Backend, backend_names, register

    calls = []

    def traced_projected_linear(x, basis, weight, bias):
        calls.append(tuple(x.shape))
        return reference.projected_linear_ref(x, basis, weight, bias)

    register(Backend(name="traced", devices=frozenset({"cpu"}), dtypes=(torch.float32,),
                     kernels={"projected_linear": lambda: traced_projected_linear},
                     auto_devices=frozenset({"cpu"})))
    assert backend_names()[-1] == "traced"
    x, basis, weight = torch.randn(3, 5), torch.linalg.qr(torch.randn(5, 2))[0], torch.randn(4, 2)
    expected = reference.projected_linear_ref(x.double(), basis.double(), weight.double(), None)
    torch.testing.assert_close(projected_linear(x, basis, weight, backend="traced").double(), expected,
                               rtol=6e-4, atol=2e-3)
    assert calls == [(3, 5)]
    assert choose_backend("projected_linear", x) in ("traced", "reference")  # both correct: the faster one
    assert len(calls) > 1  # automatic choice tried it
    assert choose_backend("projected_linear", x.double()) == "reference"  # not its dtype
    assert choose_backend("cov_accumulate", x) != "traced"  # no kernel for that op
    with pytest.raises(ValueError, match="traced backend has no kernel for cov_accumulate"):
        choose_backend("cov_accumulate", x, "traced")


@pytest.mark.gpu
@pytest.mark.skipif(not EXTENSION.has_kernel("cov_accumulate", "CUDA"), reason="no CUDA kernels in this build")
def test_the_cuda_kernel_refuses_float64_it_would_round():
    """It forms every product on fp32 tensor cores: float64 input would lose its precision, so that backend refuses
    it (the reference runs it exactly). There is no native projected_linear, and the backend says so."""
    from rmtkd_kernels.backends import unsupported_reasons

    probe = torch.empty(0, 0, dtype=torch.float64, device="meta")
    assert any("takes float32/float16/bfloat16, not torch.float64" in reason
               for reason in unsupported_reasons("cuda", "cov_accumulate", probe, "cuda"))
    assert any("has no kernel for projected_linear" in reason
               for reason in unsupported_reasons("cuda", "projected_linear", probe.float(), "cuda"))
