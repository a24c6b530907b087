"""The kernel benchmark runs end to end on tiny shapes and writes its results (so the suite never rots)."""
import importlib.util
import json
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "kernel_benchmark.py"


def test_quick_run_writes_json_and_markdown(tmp_path):
    spec = importlib.util.spec_from_file_location("kernels_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "cpu-quick" / "kernels.json").read_text())
    candidates = {row["candidate"] for row in result["cov_accumulate"]}
    assert "baseline: acc64 += (x.T @ x).double()" in candidates
    assert any(c.startswith("cov_accumulate[") for c in candidates)
    assert {"baseline: two nn.Linear", "ProjectedLinear layer (auto)"} <= {row["candidate"]
                                                                           for row in result["projected_linear"]}
    for row in result["cov_accumulate"] + result["projected_linear"]:
        assert row["ms"] > 0 and row["roofline_fraction"] > 0
    assert "## projected_linear" in (tmp_path / "cpu-quick" / "kernels.md").read_text()
