"""Automatic backend choice by verification and timing on the user's own hardware.

Like ``torch.backends.cudnn.benchmark`` and Triton's autotuner, but checked: the first call of an op for a
(device, dtype, size bucket) runs every able backend on scratch inputs of that size (``trials.run_trials``),
compares it with a float64 oracle, times the correct ones, and remembers the fastest, in memory and on disk.
A backend that is wrong or fails is never chosen and is reported once, as a warning naming op, backend, sizes
and error. The reference is always among the candidates, so there is always a correct choice.

On CUDA the trials run in a child process (``python -m rmtkd_kernels.backends.trial_process``), as Inductor's
``autotune_in_subproc`` does: an illegal memory access poisons the CUDA context of the process it happens in,
so a faulty kernel must not fault the user's process. A child that dies takes only the backend it was trying
with it; the rest are tried in a new child.

The disk cache is one JSON file per device under ``$RMTKD_CACHE_DIR`` (default ``$XDG_CACHE_HOME/rmtkd``, else
``~/.cache/rmtkd``), holding the fingerprint it was made under: device name, driver, torch, triton and rmtkd
versions. A file that is corrupt or has another fingerprint is ignored and rewritten, atomically.
``RMTKD_AUTOTUNE=0`` (read by the chooser) turns the trials off (automatic choice is then the reference);
``RMTKD_TRIAL_PROCESS=1`` or ``0`` forces trials into a child process or into this one.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch

from rmtkd_kernels.backends.problem import Problem
from rmtkd_kernels.backends.registry import get_backend
from rmtkd_kernels.backends.trials import Outcome, run_trials

CACHE_ENV, TRIAL_PROCESS_ENV = "RMTKD_CACHE_DIR", "RMTKD_TRIAL_PROCESS"
CACHE_FORMAT = 1
TRIAL_TIMEOUT_S = 600


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rmtkd"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _driver_version() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return str(pynvml.nvmlSystemGetDriverVersion())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - nvidia-ml-py missing or NVML unusable: the CUDA runtime stands in
        return f"cuda runtime {torch.version.cuda}"


def device_name(device: torch.device) -> str:
    """The hardware a decision holds for: the GPU's name, or the CPU's model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def fingerprint(device: torch.device) -> dict:
    """What a cached decision depends on besides the op's sizes; any change invalidates the cache file."""
    return {"format": CACHE_FORMAT, "device": device_name(device),
            "driver": _driver_version() if device.type == "cuda" else "none",
            "torch": torch.__version__, "triton": _version("triton"), "rmtkd": _version("rmtkd")}


def decision_key(problem: Problem, dtype: torch.dtype, candidates: tuple[str, ...]) -> str:
    return f"{problem.op}|{str(dtype).removeprefix('torch.')}|{'x'.join(map(str, problem.bucket()))}|" \
           f"{','.join(candidates)}"


class DiskCache:
    """One device's decisions in a JSON file, read once and rewritten atomically after each new decision."""

    def __init__(self, device: torch.device) -> None:
        self.fingerprint = fingerprint(device)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.fingerprint["device"]).strip("-").lower()[:60]
        digest = hashlib.sha1(self.fingerprint["device"].encode()).hexdigest()[:8]
        self.path = cache_dir() / f"backends-{slug}-{digest}.json"
        self.decisions: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # corrupt: ignored, rewritten with the next decision
        if not isinstance(data, dict) or data.get("fingerprint") != self.fingerprint:
            return {}  # another version, driver or device: stale
        decisions = data.get("decisions")
        return decisions if isinstance(decisions, dict) else {}

    def store(self, key: str, record: dict) -> None:
        self.decisions[key] = record
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, staged = tempfile.mkstemp(dir=self.path.parent, prefix=".backends-", suffix=".tmp")
            with os.fdopen(fd, "w") as out:
                json.dump({"fingerprint": self.fingerprint, "decisions": self.decisions}, out, indent=1)
            os.replace(staged, self.path)
        except OSError as error:  # a read-only home: decisions stay in memory, the user is told once
            warnings.warn(f"rmtkd: cannot write the backend cache {self.path} ({error}); set {CACHE_ENV} to a "
                          "writable folder to keep decisions across runs", stacklevel=3)


def _in_child(device: torch.device) -> bool:
    setting = os.environ.get(TRIAL_PROCESS_ENV, "")
    return setting == "1" if setting in ("0", "1") else device.type == "cuda"


def _trials_in_child(problem: Problem, dtype: torch.dtype, device: torch.device,
                     backends: list[str]) -> list[Outcome]:
    """run_trials in child processes: a child that dies (or hangs) fails the backend it was trying, and a new
    child goes on with the rest."""
    modules = sorted({get_backend(name).kernels[problem.op].__module__ for name in backends})
    outcomes: list[Outcome] = []
    remaining = list(backends)
    while remaining:
        request = {"op": problem.op, "sizes": list(problem.sizes), "layout": problem.layout,
                   "dtype": str(dtype).removeprefix("torch."),
                   "device": str(device), "backends": remaining, "modules": modules}
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([p for p in sys.path if p]))
        try:
            done = subprocess.run([sys.executable, "-m", "rmtkd_kernels.backends.trial_process"],
                                  input=json.dumps(request), capture_output=True, text=True, env=env,
                                  timeout=TRIAL_TIMEOUT_S)
            stdout, stderr, status = done.stdout, done.stderr, f"exited with status {done.returncode}"
        except subprocess.TimeoutExpired as error:
            stdout, stderr = _text(error.stdout), _text(error.stderr)
            status = f"ran past {TRIAL_TIMEOUT_S} s and was killed"
        started = None
        for line in stdout.splitlines():
            if line.startswith("START "):
                started = line[6:].strip()
            elif line.startswith("RESULT "):
                outcome = Outcome(**json.loads(line[7:]))
                outcomes.append(outcome)
                remaining.remove(outcome.backend)
                started = None
        if not remaining:
            break
        tail = stderr.strip().splitlines()[-3:]
        why = f"the trial process {status} while it ran this backend" + (f": {' | '.join(tail)}" if tail else "")
        culprits = [started] if started in remaining else list(remaining)  # died before any backend: all fail
        for name in culprits:
            outcomes.append(Outcome(name, False, error=why[:500]))
            remaining.remove(name)
    return outcomes


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


class Tuner:
    """Decisions per (op, device, dtype, size bucket, candidates), made once by trials, then looked up."""

    def __init__(self) -> None:
        self._memory: dict[tuple, str] = {}
        self._caches: dict[str, DiskCache] = {}
        self._lock = threading.Lock()

    def lookup(self, key: tuple) -> Optional[str]:
        return self._memory.get(key)

    def choose(self, problem: Problem, dtype: torch.dtype, device: torch.device,
               candidates: tuple[str, ...]) -> str:
        """The verified fastest of ``candidates`` for this call (trials on the first call of its bucket)."""
        key = (problem.op, str(device), dtype, problem.bucket(), candidates)
        choice = self._memory.get(key)
        if choice is not None:
            return choice
        with self._lock:
            choice = self._memory.get(key)
            if choice is None:
                choice = self._decide(problem, dtype, device, candidates)["backend"]
                self._memory[key] = choice
        return choice

    def disk_cache(self, device: torch.device) -> DiskCache:
        if str(device) not in self._caches:
            self._caches[str(device)] = DiskCache(device)
        return self._caches[str(device)]

    def _decide(self, problem: Problem, dtype: torch.dtype, device: torch.device,
                candidates: tuple[str, ...]) -> dict:
        cache = self.disk_cache(device)
        key = decision_key(problem, dtype, candidates)
        record = cache.decisions.get(key)
        if isinstance(record, dict) and record.get("backend") in candidates:
            return record
        record = self.tune(problem, dtype, device, candidates)
        cache.store(key, record)
        return record

    def tune(self, problem: Problem, dtype: torch.dtype, device: torch.device,
             candidates: tuple[str, ...]) -> dict:
        """Run the trials now (whatever is remembered) and return the decision record; warns for each failure."""
        if _in_child(device):
            outcomes = _trials_in_child(problem, dtype, device, list(candidates))
        else:
            outcomes = run_trials(problem, dtype, device, list(candidates))
        correct = [o for o in outcomes if o.ok]
        best = min(correct, key=lambda o: o.seconds) if correct else Outcome("reference", True)
        for failed in (o for o in outcomes if not o.ok):
            warnings.warn(f"rmtkd: backend {failed.backend!r} failed its check for {problem.op} "
                          f"({str(dtype).removeprefix('torch.')}, sizes {problem.trial_sizes()}) on "
                          f"{device_name(device)}: {failed.error}. It will not be chosen for such calls.",
                          RuntimeWarning, stacklevel=4)
        return {"backend": best.backend, "sizes": list(problem.trial_sizes()), "layout": problem.layout,
                "outcomes": [o.as_dict() for o in outcomes]}

    def demote(self, problem: Problem, dtype: torch.dtype, device: torch.device, candidates: tuple[str, ...],
               backend: str, error: BaseException) -> None:
        """``backend`` failed at run time after it was chosen: record it as failed for this bucket (memory and
        disk), warn once, and choose the fastest remaining correct candidate (the reference at the latest)."""
        key = (problem.op, str(device), dtype, problem.bucket(), candidates)
        cache = self.disk_cache(device)
        disk_key = decision_key(problem, dtype, candidates)
        with self._lock:
            record = dict(cache.decisions.get(disk_key) or {"sizes": list(problem.trial_sizes()), "outcomes": []})
            message = f"failed at run time: {type(error).__name__}: {error}"[:500]
            outcomes = [o for o in record["outcomes"] if o.get("backend") != backend]
            outcomes.append(Outcome(backend, False, error=message).as_dict())
            correct = [o for o in outcomes if o.get("ok") and o.get("seconds") is not None]
            record.update(outcomes=outcomes,
                          backend=min(correct, key=lambda o: o["seconds"])["backend"] if correct else "reference")
            self._memory[key] = record["backend"]
            cache.store(disk_key, record)
        warnings.warn(f"rmtkd: backend {backend!r} {message} for {problem.op} ({str(dtype).removeprefix('torch.')}, "
                      f"sizes {problem.trial_sizes()}) on {device_name(device)}; using {record['backend']!r} for "
                      "such calls from now on.", RuntimeWarning, stacklevel=4)

    def forget(self) -> None:
        """Drop the in-memory decisions and cache handles (the disk cache is read again on next use)."""
        with self._lock:
            self._memory.clear()
            self._caches.clear()


TUNER = Tuner()

