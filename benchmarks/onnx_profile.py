"""Where an exported model's time goes: ONNX Runtime's profiler on a run's teacher and compressed graphs, float32
and int8, each op's time split into weight matmuls (the layers RMT-KD shrinks) and the rest (attention scores
and softmax, LayerNorm, GELU, bias adds, reshapes), and the bound that split sets on the compressed model's
speed-up.

    python benchmarks/onnx_profile.py --run runs/sst2-minilm-budget0.78

A weight matmul is a MatMul-family node of the optimised graph with a weight initializer among its inputs, plus
the DynamicQuantizeLinear nodes that quantize an int8 matmul's activations. Every graph is profiled --calls
times per round on copies of one sentence padded to --seq-len, --rounds rounds, and each op's time is the median
of the rounds' means per call ("ms per call" is the profiled call, the profiler's own cost included). The bound
is the teacher's fastest graph's kernel time over the compressed graph's kernel time outside weight matmuls: the
speed-up the compressed model would reach if those cost nothing.
Writes <out>/cpu/onnx_profile.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table, write_results  # noqa: E402

from rmtkd.adapters import load_model  # noqa: E402
from rmtkd.deploy.compare import run_models  # noqa: E402
from rmtkd.deploy.onnx_export import export_onnx  # noqa: E402
from rmtkd.deploy.runtime import FILES, read_deploy_meta, require, run_session, session  # noqa: E402

MATMULS = {"MatMul", "FusedMatMul", "Gemm", "FusedGemm", "MatMulInteger", "MatMulIntegerToFloat",
           "DynamicQuantizeMatMul", "QGemm"}
SENTENCE = "a moving and often funny film"
WARM_UP = 3  # calls before the profiled ones


def weight_matmul_nodes(optimized: Path) -> set[str]:
    """Names of the optimised graph's nodes that multiply by a weight, and of those that quantize their inputs."""
    graph = require("onnx", "profile").load(str(optimized), load_external_data=False).graph
    weights = {tensor.name for tensor in graph.initializer}
    matmuls = {node.name for node in graph.node
               if node.op_type in MATMULS and any(name in weights for name in node.input[1:])}
    feeds_matmul = {name for node in graph.node if node.name in matmuls for name in node.input}
    quantizers = {node.name for node in graph.node
                  if node.op_type == "DynamicQuantizeLinear" and feeds_matmul.intersection(node.output)}
    return matmuls | quantizers


def profiled_round(path: Path, inputs: list[dict], batch: dict, calls: int, threads: int, prefix: Path,
                   optimized: Path) -> tuple[float, dict[str, float]]:
    """One round: wall ms per call (ONNX Runtime's model_run) and kernel ms per call of each node, after warm-up."""
    ort_session = session(path, threads, profile_prefix=str(prefix), optimized_path=optimized)
    for _ in range(WARM_UP + calls):
        run_session(ort_session, inputs, batch)
    profile = Path(ort_session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[WARM_UP:]
    node_ms: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= runs[0]["ts"]:
            node_ms[event["name"].removesuffix("_kernel_time")] += event["dur"] / 1e3 / len(runs)
    return statistics.mean(e["dur"] / 1e3 for e in runs), node_ms


def op_milliseconds(path: Path, inputs: list[dict], batch: dict, calls: int, rounds: int, threads: int,
                    folder: Path) -> dict[str, Any]:
    """Per call, medians over rounds: wall ms, kernel ms of weight matmuls and of the rest, and of each op type."""
    optimized = folder / "optimized.onnx"
    measured = [profiled_round(path, inputs, batch, calls, threads, folder / f"profile-{index}", optimized)
                for index in range(rounds)]
    graph = require("onnx", "profile").load(str(optimized), load_external_data=False).graph
    op_of = {node.name: node.op_type for node in graph.node}
    weights = weight_matmul_nodes(optimized)
    split = [{"weight_matmuls": sum(ms for name, ms in nodes.items() if name in weights),
              "rest": sum(ms for name, ms in nodes.items() if name not in weights)} for _, nodes in measured]
    by_op: list[dict[str, float]] = []
    for _, nodes in measured:
        totals: dict[str, float] = defaultdict(float)
        for name, ms in nodes.items():
            totals[op_of.get(name, "?")] += ms
        by_op.append(totals)
    ops = {op for totals in by_op for op in totals}
    return {"wall_ms": statistics.median(wall for wall, _ in measured),
            "weight_matmul_ms": statistics.median(s["weight_matmuls"] for s in split),
            "rest_ms": statistics.median(s["rest"] for s in split),
            "weight_matmul_nodes": len(weights),
            "ops_ms": dict(sorted(((op, statistics.median(t.get(op, 0.0) for t in by_op)) for op in ops),
                                  key=lambda item: -item[1]))}


def bound(profiles: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The teacher's fastest graph, the compressed model's, and the largest speed-up over the teacher's fastest
    the compressed model could reach with its weight matmuls free: the teacher's kernel time over the
    compressed graph's kernel time outside weight matmuls (time outside kernels, which both pay, left out)."""
    def kernels(name: str) -> float:
        return profiles[name]["weight_matmul_ms"] + profiles[name]["rest_ms"]

    teacher = min((n for n in profiles if n.startswith("teacher")), key=kernels)
    compressed = min((n for n in profiles if n.startswith("compressed")), key=kernels)
    floor = min(p["rest_ms"] for n, p in profiles.items() if n.startswith("compressed"))
    return {"teacher_best": teacher, "compressed_best": compressed, "measured": kernels(teacher) / kernels(compressed),
            "compressed_floor_ms": floor, "with_free_weight_matmuls": kernels(teacher) / floor}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="an rmtkd compress output folder (text task)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=50, help="profiled calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=8, help="op types listed per graph")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds: at least 3 (figures are medians over rounds)")
    torch.set_num_threads(args.threads)
    profiles: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for role, folder in run_models(args.run).items():
            loaded = load_model(folder)
            export = Path(scratch) / role
            export_onnx(loaded, export, int8=True)
            inputs = read_deploy_meta(export)["inputs"]
            batch = dict(loaded.adapter.tokenizer([SENTENCE] * args.batch, padding="max_length",
                                                  max_length=args.seq_len, truncation=True, return_tensors="pt"))
            for precision in ("fp32", "int8"):
                work = Path(scratch) / f"{role}-{precision}"
                work.mkdir()
                profiles[f"{role} ORT {precision}"] = op_milliseconds(export / FILES[precision], inputs, batch,
                                                                      args.calls, args.rounds, args.threads, work)
    limit = bound(profiles)
    info = {**machine_info(torch.device("cpu")), "run": str(args.run), "threads": args.threads,
            "batch": args.batch, "seq_len": args.seq_len, "calls": args.calls, "rounds": args.rounds}
    table = markdown_table([{"graph": name, "ms per call": f"{p['wall_ms']:.2f}",
                             "weight matmuls": f"{p['weight_matmul_ms']:.2f} ({p['weight_matmul_nodes']} nodes)",
                             "other ops": f"{p['rest_ms']:.2f}",
                             "largest op types (ms)": ", ".join(f"{op} {ms:.2f}" for op, ms in
                                                                list(p["ops_ms"].items())[:args.top])}
                            for name, p in profiles.items()],
                           ["graph", "ms per call", "weight matmuls", "other ops", "largest op types (ms)"])
    text = (f"# ONNX Runtime profile: {args.run}\n\n{info['cpu']}, {args.threads} threads, batch {args.batch}, "
            f"{args.seq_len} tokens; {args.calls} profiled calls per round, median of {args.rounds} rounds; kernel "
            f"ms per call.\n\n{table}\n\nIn kernel time the compressed model's fastest graph "
            f"({limit['compressed_best']}) is {limit['measured']:.2f}× the teacher's fastest ({limit['teacher_best']})."
            f" With its weight matmuls free its kernels would take {limit['compressed_floor_ms']:.2f} ms: at most "
            f"{limit['with_free_weight_matmuls']:.2f}× the teacher's fastest graph.\n")
    write_results(args.out / "cpu", "onnx_profile", {"info": info, "profiles": profiles, "bound": limit}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
