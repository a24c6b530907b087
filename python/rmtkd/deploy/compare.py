"""Which deployment of a model is fastest: its PyTorch and ONNX Runtime forms, float32 and int8, timed together.

Used by ``rmtkd compress --deploy`` (batch 1, in the run's summary) and benchmarks/deploy.py (every shape, with
accuracy). Each variant is a runner, batch → logits; a group of runners is timed in alternating blocks of calls
(:func:`rmtkd.metrics.paired_times`) so that a slow stretch of a shared machine falls on all alike, and the
group is repeated: each figure is the median of the rounds' medians with their min–max.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Callable

import torch

from rmtkd.adapters.loading import LoadedModel, load_model
from rmtkd.deploy.int8 import quantize_int8
from rmtkd.deploy.onnx_export import export_onnx
from rmtkd.deploy.runtime import FILES, ExportedModel
from rmtkd.metrics import paired_times

Run = Callable[[dict], torch.Tensor]
VARIANTS = ("torch fp32", "torch int8", "ORT fp32", "ORT int8")


def run_models(run: Path) -> dict[str, Path]:
    """The teacher and compressed model folders of an ``rmtkd compress`` run: RUN/teacher (or, for a teacher
    used as trained elsewhere, run.json's --model) and RUN/model."""
    teacher = run / "teacher"
    if not teacher.is_dir():
        try:
            teacher = Path(json.loads((run / "run.json").read_text())["model"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"run: {run} has no teacher/ and its run.json names no --model ({error})") from None
    return {"teacher": teacher, "compressed": run / "model"}


def deployment_runners(folders: dict[str, Path], export_root: Path) -> tuple[dict[str, Run], dict[str, LoadedModel]]:
    """"ROLE VARIANT" → runner for every model folder (role → folder) in each of VARIANTS (the ONNX files are
    exported to export_root/ROLE), and each role's loaded model."""
    runs: dict[str, Run] = {}
    loaded_models: dict[str, LoadedModel] = {}
    for role, folder in folders.items():
        loaded = load_model(folder)
        adapter, model = loaded.adapter, loaded.model.to("cpu").float().eval()
        loaded_models[role] = loaded
        int8 = quantize_int8(model)
        runs[f"{role} torch fp32"] = lambda b, m=model, a=adapter: a.forward(m, b)
        runs[f"{role} torch int8"] = lambda b, m=int8, a=adapter: a.forward(m, b)
        export_onnx(loaded, export_root / role, int8=True)
        for precision in ("fp32", "int8"):
            runs[f"{role} ORT {precision}"] = ExportedModel.load(export_root / role / FILES[precision]).run
    return runs, loaded_models


def paired_rounds(runs: dict[str, Run], batch: dict, rounds: int, min_time: float) -> dict[str, dict[str, Any]]:
    """Per runner: milliseconds per call (median of the rounds' medians, their min and max, each round's) and the
    speed-up over the first runner (median and min–max of each round's ratio)."""
    per_round: list[dict[str, float]] = []
    baseline = next(iter(runs))
    with torch.no_grad():
        for _ in range(rounds):
            times = paired_times({name: (lambda r=run: r(batch)) for name, run in runs.items()}, torch.device("cpu"),
                                 min_time, min_calls=3)
            per_round.append({name: 1e3 * statistics.median(t) for name, t in times.items()})
    out = {}
    for name in runs:
        ms = [r[name] for r in per_round]
        speedups = [r[baseline] / r[name] for r in per_round]
        out[name] = {"ms": statistics.median(ms), "ms_min": min(ms), "ms_max": max(ms), "rounds_ms": ms,
                     "speedup": statistics.median(speedups), "speedup_min": min(speedups),
                     "speedup_max": max(speedups)}
    return out


def fastest(timed: dict[str, dict[str, Any]], role: str) -> str:
    """The fastest "ROLE VARIANT" of ``role``."""
    return min((name for name in timed if name.startswith(f"{role} ")), key=lambda name: timed[name]["ms"])


def best_deployments(folders: dict[str, Path], export_root: Path, batch: dict, rounds: int = 3,
                     min_time: float = 0.5) -> dict[str, Any]:
    """Every variant of every model timed on ``batch`` (see :func:`paired_rounds`) and each model's fastest, as
    ``rmtkd compress --deploy`` reports them."""
    runs, _ = deployment_runners(folders, export_root)
    timed = paired_rounds(runs, batch, rounds, min_time)
    return {"rounds": rounds, "variants": timed, "best": {role: fastest(timed, role) for role in folders},
            "onnx": str(export_root)}
