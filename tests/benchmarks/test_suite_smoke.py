"""The benchmark suite's other parts run end to end on tiny inputs (so they never rot): the end-to-end
benchmark on a tiny compressed BERT (eager and torch.compile, fused and two-matmul paths), the pytest-benchmark
kernel timings, and the energy meters' bookkeeping."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rmtkd.app.cli import main as rmtkd
from tests.tiny_text import needs_minilm, write_table

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_minilm
def test_end_to_end_quick(tmp_path, tiny_model, capsys):
    write_table(tmp_path / "train.tsv", 200, seed=5)
    write_table(tmp_path / "dev.tsv", 32, seed=6)
    run = tmp_path / "run"
    assert rmtkd(["compress", "--model", str(tiny_model), "--train", str(tmp_path / "train.tsv"), "--eval",
                  str(tmp_path / "dev.tsv"), "--out", str(run), "--train-samples", "128", "--calibration-samples",
                  "64", "--distill-steps", "1", "--max-len", "16", "--noise", "quantile", "--tau", "0.6",
                  "--latency-seq-len", "16"]) == 0
    end_to_end = load("end_to_end")
    assert end_to_end.main(["--quick", "--run", str(run), "--device", "cpu", "--out", str(tmp_path / "results"),
                            "--batch", "4"]) == 0
    result = json.loads((tmp_path / "results" / "cpu-quick" / "end_to_end.json").read_text())
    seen = {(r["model"], r["mode"], r["path"], r["batch"]) for r in result["rows"]}
    assert ("compressed", "compile", "two-matmul", 1) in seen and ("compressed", "eager", "fused", 4) in seen
    assert ("original", "compile", "fused", 1) in seen
    for row in result["rows"]:
        assert row["ms"] > 0 and row["speedup"] > 0
        assert row["energy"]["available"] or row["energy"]["reason"]  # a number or the reason there is none
    assert (tmp_path / "results" / "cpu-quick" / "end_to_end.png").stat().st_size > 10_000
    assert [(c["mode"], c["seq_len"]) for c in result["targets"]["checks"]] == [("eager", 16), ("compile", 16)]
    assert "Target: at >= 50% fewer parameters" in (tmp_path / "results" / "cpu-quick" / "end_to_end.md").read_text()
    assert end_to_end.main(["--quick", "--models", str(run / "teacher"), str(run / "teacher"), "--device",
                            "cpu", "--out", str(tmp_path / "results")]) == 2
    assert "is not a compressed model" in capsys.readouterr().err


def test_targets_are_checked_against_the_measured_ratios():
    end_to_end = load("end_to_end")

    def row(model: str, parameters: int, seq_len: int, speedup: float, energy_ratio: float | None = None) -> dict:
        extra = {"energy_ratio": energy_ratio} if energy_ratio is not None else {}
        return {"model": model, "parameters": parameters, "mode": "eager", "path": "fused", "seq_len": seq_len,
                "batch": 1, "speedup": speedup, **extra}

    rows = [row("original", 1000, 32, 1.0), row("compressed", 400, 32, 1.79, 0.55),
            row("compressed", 400, 128, 1.81), {**row("compressed", 400, 128, 3.0), "path": "two-matmul"}]
    cpu = end_to_end.target_checks(rows, "cpu")
    assert cpu["parameter_reduction"] == pytest.approx(0.6)
    assert [(c["seq_len"], c["met"]) for c in cpu["checks"]] == [(32, False), (128, True)]
    gpu = end_to_end.target_checks(rows, "cuda")  # energy measured at seq 32 only: seq 128 is not met
    assert [(c["seq_len"], c["energy_ratio"], c["met"]) for c in gpu["checks"]] == [(32, 0.55, True), (128, None, False)]
    assert "| eager | 128 | not measured | no |" in end_to_end.targets_markdown(gpu)
    too_small = end_to_end.target_checks([row("original", 1000, 32, 1.0), row("compressed", 600, 32, 2.5)], "cpu")
    assert not too_small["checks"][0]["met"]  # fast, but only 40% fewer parameters


def test_paired_timing_alternates_blocks_of_the_two_models():
    end_to_end = load("end_to_end")
    calls: list[str] = []

    def run(name: str, seconds: float):
        return lambda: (calls.append(name), __import__("time").sleep(seconds))

    medians = end_to_end.paired_medians({"original": run("original", 0.02), "compressed": run("compressed", 0.01)},
                                        torch.device("cpu"), min_time=0.3)
    switches = [i for i in range(1, len(calls)) if calls[i] != calls[i - 1]]
    assert len(switches) >= 3  # original, compressed, original, compressed, ... in blocks
    assert all(j - i >= 2 for i, j in zip([0] + switches, switches))  # a block: a warm-up call and timed calls
    assert medians["original"] == pytest.approx(0.02, abs=0.008) and medians["compressed"] < medians["original"]


def test_a_run_without_teacher_folder_is_compared_with_its_model_argument(tmp_path):
    end_to_end = load("end_to_end")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"model": "models/fine-tuned", "no_fine_tune": True}))
    args = end_to_end.argparse.Namespace(models=None, run=str(run))
    assert end_to_end.resolve_models(args) == (Path("models/fine-tuned"), run / "model")
    (run / "teacher").mkdir()  # a fine-tuned teacher written by the run wins
    assert end_to_end.resolve_models(args) == (run / "teacher", run / "model")


@needs_minilm
def test_cpu_breakdown_runs(tiny_model, capsys):
    assert load("cpu_breakdown").main(["--model", str(tiny_model), "--seq-len", "8", "--k", "16", "--calls", "2",
                                            "--min-time", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "ms per forward = matmuls" in out and "| thin 16 -> 1536 |" in out


def test_pytest_benchmark_kernels_smoke():
    done = subprocess.run([sys.executable, "-m", "pytest", str(BENCHMARKS / "test_kernel_timings.py"), "-q",
                           "-p", "no:cacheprovider", "--benchmark-disable"],
                          env={**os.environ, "RMTKD_BENCH_QUICK": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


def test_rapl_meter_reads_package_counters_and_wraps(tmp_path, monkeypatch):
    energy = load("energy")
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "max_energy_range_uj").write_text("1000000\n")
    (zone / "energy_uj").write_text("999000\n")
    monkeypatch.setattr(energy, "POWERCAP", tmp_path)
    meter, how = energy.open_meter(torch.device("cpu"))
    assert how == "rapl package energy counters"

    def body() -> int:  # the counter wraps past its range during the window: 999,000 → 4,000 is 5,000 µJ
        (zone / "energy_uj").write_text("4000\n")
        return 10

    joules, _, calls = meter.window(body)
    assert joules == pytest.approx(0.005) and calls == 10


def test_no_energy_counter_gives_a_reason(tmp_path, monkeypatch):
    energy = load("energy")
    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "absent")
    meter, why = energy.open_meter(torch.device("cpu"))
    assert meter is None and "RAPL" in why and "unavailable" in why


def test_rmtkd_bench_runs_the_suite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no runs/bbc-news-minilm here: the end-to-end part says it is skipped
    assert rmtkd(["bench", "--quick", "--device", "cpu", "--out", str(tmp_path / "results")]) == 0
    assert (tmp_path / "results" / "cpu-quick" / "kernels.json").is_file()


def test_nvml_meter_falls_back_to_power_sampling_and_says_so(monkeypatch):
    """A GPU whose total-energy counter is unsupported: energy is integrated from power samples, and the
    method says so (a fake pynvml stands in for the driver)."""
    import types

    class NVMLError(Exception):
        pass

    def unsupported(handle):
        raise NVMLError("Not Supported")

    handles = []
    fake = types.SimpleNamespace(
        NVMLError=NVMLError, NVML_CLOCK_SM=0, NVML_CLOCK_MEM=1, NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None, nvmlDeviceGetHandleByPciBusId=lambda bus_id: handles.append(bus_id) or "gpu0",
        nvmlDeviceGetTotalEnergyConsumption=unsupported,
        nvmlDeviceGetPowerUsage=lambda handle: 150_000,  # mW
        nvmlDeviceGetClockInfo=lambda handle, kind: 1980, nvmlDeviceGetTemperature=lambda handle, kind: 40,
        nvmlDeviceGetEnforcedPowerLimit=lambda handle: 700_000)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    props = types.SimpleNamespace(pci_domain_id=0, pci_bus_id=0x65, pci_device_id=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    energy = load("energy")
    meter = energy.NvmlMeter(torch.device("cuda", 0))
    assert handles == ["00000000:65:00.0"]  # matched by PCI address, not by ordinal (CUDA_VISIBLE_DEVICES renumbers)
    assert meter.method.startswith("nvml power sampling") and "unsupported" in meter.method
    joules, seconds, calls = meter.window(lambda: (__import__("time").sleep(0.2), 3)[1])
    assert calls == 3 and joules == pytest.approx(150.0 * seconds)
    assert meter.state() == {"sm_clock_mhz": 1980, "mem_clock_mhz": 1980, "temperature_c": 40,
                             "power_limit_w": 700.0}


def test_measure_reports_per_item_and_above_idle():
    energy = load("energy")

    class Meter:  # 50 J over a 2 s window, whatever ran
        method, idle_watts = "fake", 10.0

        def window(self, body):
            return 50.0, 2.0, body()

        def state(self):
            return {"temperature_c": 40}

    result = energy.measure(Meter(), lambda: None, torch.device("cpu"), min_seconds=0.01, items_per_call=4)
    items = 4 * result["calls"]
    assert result["joules_per_item"] == pytest.approx(50.0 / items) and result["watts"] == pytest.approx(25.0)
    assert result["joules_per_item_above_idle"] == pytest.approx(30.0 / items)
    assert result["watts_above_idle"] == pytest.approx(15.0) and result["temperature_c"] == 40


@needs_minilm
def test_distributed_calibration_benchmark_quick(tmp_path):
    """benchmarks/distributed.py on a tiny model with 1 and 2 gloo processes: a row each, the reduction timed."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "distributed.py"), "--device", "cpu", "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads((tmp_path / "cpu" / "distributed.json").read_text())["rows"]
    assert [row["processes"] for row in rows] == [1, 2] and rows[0]["tokens"] == rows[1]["tokens"] > 0
    assert rows[0]["reduction_s"] == 0 and rows[1]["reduction_s"] > 0 and 0 < rows[1]["reduction_share"] < 1


def test_no_benchmark_script_shadows_an_installed_package():
    """A script's folder comes first on sys.path, so benchmarks/<name>.py hides an installed package <name> from
    every library the script imports (transformers imports the `kernels` package when it is installed)."""
    import importlib.metadata

    installed = importlib.metadata.packages_distributions()
    shadowing = sorted(script.stem for script in BENCHMARKS.glob("*.py") if script.stem in installed)
    assert not shadowing, f"benchmarks/ scripts named like installed packages: {shadowing}"


@needs_minilm
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="the ONNX path is optional")
def test_onnx_choices_benchmark_quick(tmp_path, tiny_model, capsys):
    """Both attention forms and both SkipLayerNorm choices export, run in ONNX Runtime and are timed beside
    PyTorch at every shape asked for."""
    onnx_choices = load("onnx_choices")
    assert onnx_choices.main(["--model", str(tiny_model), "--seq-lens", "16", "--batches", "1", "2",
                              "--min-time", "0.05", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "cpu" / "onnx_choices.json").read_text())["rows"]
    names = ["torch fp32", "ORT fp32, SDPA export", "ORT fp32 (rmtkd)", "ORT fp32, SkipLayerNorm fused",
             "ORT int8 (rmtkd)", "ORT int8, SkipLayerNorm fused"]
    assert [row["variant"] for row in rows] == names * 2 and [row["batch"] for row in rows] == [1] * 6 + [2] * 6
    assert all(row["ms"] > 0 for row in rows) and rows[0]["speedup"] == 1.0
    assert "| ORT int8 (rmtkd) | 2 | 16 |" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="the ONNX path is optional")
def test_onnx_profile_counts_only_matmuls_by_a_weight_and_their_quantizers(tmp_path):
    """A MatMul by an initializer and the DynamicQuantizeLinear that feeds an int8 one are weight matmuls; a
    MatMul of two activations (attention scores) and a quantizer that feeds something else are not."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    onnx_profile = load("onnx_profile")
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    int8_weight = numpy_helper.from_array(np.ones((4, 4), np.int8), "Wq")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="by_weight"),
             helper.make_node("MatMul", ["x", "y"], ["scores"], name="scores"),
             helper.make_node("DynamicQuantizeLinear", ["y"], ["yq", "ys", "yz"], name="quantize_for_weight"),
             helper.make_node("MatMulInteger", ["yq", "Wq", "yz"], ["z"], name="int8_by_weight"),
             helper.make_node("DynamicQuantizeLinear", ["scores"], ["sq", "ss", "sz"], name="quantize_other"),
             helper.make_node("MatMulInteger", ["sq", "sq"], ["w"], name="int8_scores")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.INT32, [4, 4]),
                               helper.make_tensor_value_info("w", TensorProto.INT32, [4, 4])],
                              initializer=[weight, int8_weight])
    onnx.save(helper.make_model(graph), tmp_path / "g.onnx")
    assert onnx_profile.weight_matmul_nodes(tmp_path / "g.onnx") == {"by_weight", "quantize_for_weight",
                                                                    "int8_by_weight"}
