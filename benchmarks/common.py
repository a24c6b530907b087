"""Timing, roofline and result-writing helpers shared by the benchmark scripts.

Rules: median of many timed calls after warm-up, random inputs, several input buffers rotated when
they would otherwise sit in cache, ratios only between numbers measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

import rmtkd_kernels
from rmtkd.atomic import write_text_atomically
from rmtkd.metrics import call_seconds, paired_medians  # noqa: F401 - the same timing as `rmtkd compress`


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --quick and --out, shared by every benchmark script."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny inputs and few calls (smoke run)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")


def usable_device(args: argparse.Namespace, script: str) -> Optional[torch.device]:
    """The device to benchmark, or None (after saying so) when a GPU is asked for and none is visible."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"{script}: --device cuda: no GPU visible to torch; GPU part skipped (run with --device cpu)")
        return None
    return torch.device(args.device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[int], object], device: torch.device, min_time: float, min_reps: int = 5) -> float:
    """Median wall time of fn(i) for i = 0, 1, ... (i picks a rotating input buffer), after two warm-up calls."""
    for i in range(2):
        fn(i)
    synchronize(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - started < min_time:
        index = len(times)
        times.append(call_seconds(lambda: fn(index), device))
    return statistics.median(times)


def buffer_count(bytes_per_set: int, device: torch.device) -> int:
    """How many input sets to rotate so that a call does not find its inputs in the last-level cache."""
    cache = 64 << 20 if device.type == "cuda" else 32 << 20
    return max(1, min(8, -(-2 * cache // max(bytes_per_set, 1))))


def measure_roofline(device: torch.device, dtype: torch.dtype, quick: bool) -> dict[str, float]:
    """Peak GEMM FLOP/s in ``dtype`` and copy bandwidth (read + write bytes/s), measured now on this device."""
    size = 1024 if quick else (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    gemm = median_seconds(lambda _: torch.mm(a, b), device, 0.05 if quick else 0.5)
    elements = (16 << 20) if quick else ((256 << 20) if device.type == "cuda" else (32 << 20))
    src = torch.randn(elements, device=device)
    dst = torch.empty_like(src)
    copy = median_seconds(lambda _: dst.copy_(src), device, 0.05 if quick else 0.5)
    return {"gemm_flops": 2 * size**3 / gemm, "copy_bytes_per_s": 2 * src.numel() * src.element_size() / copy,
            "gemm_size": size, "gemm_dtype": str(dtype)}


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module knows: CPU speed-ups differ by
    tens of percent between models, so results name the one they were measured on."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "device": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "extension": {"loaded": rmtkd_kernels.EXTENSION.loaded, "with_cuda": rmtkd_kernels.EXTENSION.with_cuda},
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, sm_count=props.multi_processor_count, cuda=torch.version.cuda,
                    driver=torch.cuda.driver_version() if hasattr(torch.cuda, "driver_version") else None)
    return info


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def markdown_table(rows: Sequence[dict[str, object]], columns: Sequence[str]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(out_dir: Path, name: str, payload: dict[str, object], markdown: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out_dir / f"{name}.json", json.dumps(payload, indent=2, default=str) + "\n")
    write_text_atomically(out_dir / f"{name}.md", markdown + "\n")
