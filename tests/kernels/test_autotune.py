"""Automatic choice by verification and timing: wrong or failing backends are never chosen, decisions persist on
disk and are invalidated by a version change, and tuning a mutating op leaves the caller's buffers updated once."""
from __future__ import annotations

import importlib
import json
import warnings

import pytest
import torch

from rmtkd_kernels import CovarianceAccumulator, choose_backend, cov_accumulate, projected_linear
from rmtkd_kernels.backends import chooser, registry, tuning
from rmtkd_kernels.backends.problem import Problem


def _register_faulty_backends() -> None:
    import tests.kernels.faulty_backends as faulty

    importlib.reload(faulty)  # registers into the registry in place now


@pytest.fixture
def tuner(monkeypatch, tmp_path):
    """A registry copy holding the faulty backends, a fresh tuner and an empty cache folder of the test's own."""
    with registry.BACKENDS.scoped():
        chooser.forget_decisions()
        monkeypatch.setenv(tuning.CACHE_ENV, str(tmp_path))
        monkeypatch.setattr(tuning, "TUNER", tuning.Tuner())
        _register_faulty_backends()
        yield tuning.TUNER
        monkeypatch.undo()
    chooser.forget_decisions()


def _pl_args(rows=7, d_in=12, k=5, d_out=9):
    return torch.randn(rows, d_in), torch.linalg.qr(torch.randn(d_in, k))[0], torch.randn(d_out, k), torch.randn(d_out)


def test_wrong_raising_and_crashing_backends_are_never_chosen_and_each_is_reported(tuner, monkeypatch):
    monkeypatch.setenv(tuning.TRIAL_PROCESS_ENV, "1")  # as on CUDA: trials in a child process, which one kills
    monkeypatch.setenv("RMTKD_TEST_CRASHING_BACKEND", "1")
    _register_faulty_backends()
    x, basis, weight, bias = _pl_args()
    with pytest.warns(RuntimeWarning) as caught:
        y = projected_linear(x, basis, weight, bias)
    torch.testing.assert_close(y, x @ basis @ weight.T + bias, rtol=1e-5, atol=1e-5)
    messages = "\n".join(str(w.message) for w in caught)
    assert "'wrong' failed its check for projected_linear (float32, sizes (7, 12, 5, 9))" in messages
    assert "relative error" in messages
    assert "'raising' failed" in messages and "no kernel image is available" in messages
    assert "'crashing' failed" in messages and "trial process exited with status 139" in messages
    decision = next(iter(tuner.disk_cache(x.device).decisions.values()))
    assert decision["backend"] == "reference"
    tried = {o["backend"]: o["ok"] for o in decision["outcomes"]}
    assert tried == {"reference": True, "wrong": False, "crashing": False, "raising": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided once: no more trials and no more warnings
        projected_linear(x, basis, weight, bias)


def test_a_forced_faulty_backend_raises_instead_of_falling_back(tuner):
    with pytest.raises(RuntimeError, match="no kernel image"):
        projected_linear(*_pl_args(), backend="raising")


def test_tuning_a_mutating_op_updates_the_callers_accumulator_exactly_once(tuner):
    x = torch.randn(301, 17, dtype=torch.float64)
    gram, colsum = torch.zeros(17, 17, dtype=torch.float64), torch.zeros(17, dtype=torch.float64)
    bad = torch.zeros((), dtype=torch.int64)
    with pytest.warns(RuntimeWarning, match="'wrong' failed its check for cov_accumulate"):
        cov_accumulate(x, gram, colsum, bad)
    torch.testing.assert_close(torch.triu(gram), torch.triu(x.T @ x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(colsum, x.sum(0), rtol=1e-12, atol=1e-12)
    assert int(bad) == 0
    assert choose_backend("cov_accumulate", x) not in ("wrong", "raising")


def test_decisions_survive_a_restart_and_a_version_change_invalidates_them(tuner, monkeypatch):
    x, basis, weight, bias = _pl_args()
    with pytest.warns(RuntimeWarning):
        projected_linear(x, basis, weight, bias)
    path = tuner.disk_cache(x.device).path
    assert path.exists()
    calls = []
    monkeypatch.setattr(tuning, "run_trials", lambda *args, **kw: calls.append(args) or [])
    chooser.forget_decisions()  # a new process: memory empty, the file read again
    projected_linear(x, basis, weight, bias)
    assert calls == []  # answered from the file
    real = tuning.fingerprint
    monkeypatch.setattr(tuning, "fingerprint", lambda device: {**real(device), "rmtkd": "99.0"})
    chooser.forget_decisions()
    projected_linear(x, basis, weight, bias)
    assert len(calls) == 1  # another version: tuned again, and the file rewritten under the new fingerprint
    assert json.loads(path.read_text())["fingerprint"]["rmtkd"] == "99.0"


def test_a_corrupt_cache_file_is_ignored_and_rewritten(tuner):
    x, basis, weight, bias = _pl_args()
    path = tuner.disk_cache(x.device).path
    path.write_text('{"fingerprint": {"trunc')
    chooser.forget_decisions()
    with pytest.warns(RuntimeWarning):
        projected_linear(x, basis, weight, bias)
    data = json.loads(path.read_text())
    assert data["fingerprint"] == tuning.fingerprint(x.device) and len(data["decisions"]) == 1


def test_sizes_in_one_bucket_share_a_decision_and_other_buckets_get_their_own(tuner):
    assert Problem("cov_accumulate", (5000, 384)).bucket() == Problem("cov_accumulate", (8000, 300)).bucket()
    assert Problem("cov_accumulate", (10 ** 6, 384)).bucket() == (1 << 14, 512, "row-major")  # rows capped
    acc = CovarianceAccumulator(24, dtype=torch.float64)
    with pytest.warns(RuntimeWarning):
        acc.update(torch.randn(100, 24))
    acc.update(torch.randn(120, 24))  # same bucket: no new trials, so no new warnings
    with pytest.warns(RuntimeWarning):
        acc.update(torch.randn(1000, 24))
    assert len(tuner.disk_cache(acc.device).decisions) == 2


def test_turning_tuning_off_chooses_the_reference(tuner, monkeypatch):
    monkeypatch.setenv(chooser.AUTOTUNE_ENV, "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_backend("projected_linear", torch.randn(3, 4)) == "reference"


def test_doctor_reports_the_trials_and_stores_the_decisions_the_ops_then_use(tuner):
    from rmtkd_kernels.doctor import report

    problem = Problem("projected_linear", (5, 16, 4, 8))
    with pytest.warns(RuntimeWarning):
        lines = list(report(torch.device("cpu"), problems=[problem]))
    text = "\n".join(lines)
    assert "backend cache: " + str(tuner.disk_cache(torch.device("cpu")).path) in text
    assert "the cpu backend has no kernel for projected_linear" in text
    trial_rows = [line.split() for line in lines if line.startswith("  projected_linear ")]
    assert {row[3] for row in trial_rows} >= {"reference", "wrong", "raising"}
    assert all(row[4] == "FAILED" for row in trial_rows if row[3] in ("wrong", "raising"))
    assert sum(row[4] == "chosen" for row in trial_rows if row[1] == "float32") == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the ops use the stored decision: no trials, no warnings
        projected_linear(torch.randn(5, 16), torch.randn(16, 4), torch.randn(8, 4))


def test_doctor_command_without_trials():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "rmtkd", "doctor", "--no-trials"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "native extension rmtkd_kernels._C:" in done.stdout and "backend cache:" in done.stdout
    done = subprocess.run([sys.executable, "-m", "rmtkd", "doctor", "--device", "cuda"] if not torch.cuda.is_available()
                          else [sys.executable, "-m", "rmtkd", "doctor", "--device", "nonsense"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--device" in done.stderr


def test_a_chosen_backend_that_fails_at_run_time_is_demoted_and_the_reference_answers(tuner, monkeypatch):
    """Trials passed (here: faked as the fastest), then the kernel raises on a later call (say a compile failure
    for a new specialisation): one warning, the reference's answer, the accumulator updated once, and the
    reference is the decision from then on, on disk too."""
    from rmtkd_kernels import reference
    from rmtkd_kernels.backends import Backend, register
    from rmtkd_kernels.backends.trials import Outcome

    armed = []

    def flaky_cov(*args):
        if armed:
            raise RuntimeError("PTX JIT compilation failed")
        reference.cov_accumulate_ref(*args)

    register(Backend(name="flaky", devices=frozenset({"cpu"}), dtypes=(torch.float64,),
                     kernels={"cov_accumulate": lambda: flaky_cov}, auto_devices=frozenset({"cpu"})))
    monkeypatch.setattr(tuning, "run_trials", lambda problem, dtype, device, names, *rest: [
        Outcome(name, name in ("reference", "flaky"), seconds=1.0 if name == "reference" else 0.1)
        for name in names])
    x = torch.randn(50, 6, dtype=torch.float64)
    assert choose_backend("cov_accumulate", x) == "flaky"
    armed.append(True)
    gram, colsum = torch.zeros(6, 6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    bad = torch.zeros((), dtype=torch.int64)
    with pytest.warns(RuntimeWarning, match="'flaky' failed at run time: RuntimeError: PTX JIT compilation failed"):
        cov_accumulate(x, gram, colsum, bad)
    torch.testing.assert_close(torch.triu(gram), torch.triu(x.T @ x), rtol=1e-12, atol=1e-12)
    assert choose_backend("cov_accumulate", x) != "flaky"
    chooser.forget_decisions()
    assert choose_backend("cov_accumulate", x) != "flaky"  # the disk record says so too
    with pytest.raises(RuntimeError, match="PTX JIT"):
        cov_accumulate(x, gram, colsum, bad, backend="flaky")  # forced: no fallback


def test_trials_run_in_the_callers_layout(tuner):
    """Kernels are compiled per layout (a unit stride becomes a constant): a backend wrong only for column-major
    input passes the row-major trials and fails the column-major ones, which decide column-major calls."""
    from rmtkd_kernels import reference
    from rmtkd_kernels.backends import Backend, register

    def row_major_only(x, basis, weight, bias):
        y = reference.projected_linear_ref(x, basis, weight, bias)
        return y if x.is_contiguous() else y + 1.0

    register(Backend(name="row-major-only", devices=frozenset({"cpu"}), dtypes=(torch.float32,),
                     kernels={"projected_linear": lambda: row_major_only}, auto_devices=frozenset({"cpu"})))
    x, basis, weight, bias = _pl_args(rows=9)
    with pytest.warns(RuntimeWarning):
        projected_linear(x, basis, weight, bias)
    with pytest.warns(RuntimeWarning, match="'row-major-only' failed its check"):
        y = projected_linear(x.T.contiguous().T, basis, weight, bias)
    torch.testing.assert_close(y, x @ basis @ weight.T + bias, rtol=1e-5, atol=1e-5)
    records = tuner.disk_cache(x.device).decisions.values()
    ok = {r["layout"]: {o["backend"]: o["ok"] for o in r["outcomes"]}["row-major-only"] for r in records}
    assert ok == {"row-major": True, "column-major": False}
