"""Deployment: every registered adapter's model, compressed at every site, exports to ONNX and runs in ONNX
Runtime as in PyTorch with no rmtkd op in the graph; int8 (PyTorch and ONNX Runtime) quantizes every factor
of the compressed layers and stays close to float32; bad input gets one clear error."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from rmtkd.adapters.hf_common import HFModelAdapter
from rmtkd.calibration import calibrate, discover_sites
from rmtkd.deploy import ExportedModel, export_onnx, int8_linears, plain_copy, quantize_int8, rewritten_layers
from rmtkd.layers import FactorizedEmbedding
from rmtkd.persistence import save_compressed
from rmtkd.surgery import rewrite_site
from rmtkd_kernels import ProjectedLinear
from rmtkd.deploy.compare import VARIANTS
from tests.method.test_contracts import ADAPTER_EXAMPLES, Example, outputs
from tests.tiny_text import needs_minilm, write_table

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("onnxruntime", reason="the ONNX path is optional: pip install 'rmtkd[onnx]'")
pytest.importorskip("onnxscript", reason="the ONNX path is optional: pip install 'rmtkd[onnx]'")


def compress_every_site(example: Example) -> tuple[nn.Module, list]:
    """The example's model with every site projected on its top half of directions (mean folded in); a module
    that is a site on both sides is projected on the first found."""
    model, adapter = copy.deepcopy(example.model), example.adapter
    sites = discover_sites(model, example.batches[0], adapter.forward, adapter.include)
    statistics = calibrate(model, example.batches, adapter.forward, sites, mask_key=adapter.mask_key)
    rewrites, taken = [], set()
    for site in sites:
        if taken & set(site.names):
            continue
        taken |= set(site.names)
        accumulator = statistics.of(site).accumulator
        k = max(1, site.dim // 2)
        basis = torch.linalg.eigh(accumulator.covariance())[1][:, -k:].float()
        rewrites.append(rewrite_site(model, site, basis, accumulator.mean()))
    return model.eval(), rewrites


@pytest.fixture(params=sorted(ADAPTER_EXAMPLES))
def compressed(request, tmp_path) -> tuple[Example, nn.Module, object]:
    example = ADAPTER_EXAMPLES[request.param](tmp_path)
    model, rewrites = compress_every_site(example)
    folder = save_compressed(model, rewrites, tmp_path / "model", example.adapter.architecture(example.model),
                             write_assets=example.adapter.save_assets)
    return example, model, folder


def test_the_plain_copy_has_no_rmtkd_layer_and_the_same_outputs(compressed):
    example, model, _ = compressed
    plain = plain_copy(model)
    before = rewritten_layers(model)  # 0 for the CNNs: ProjectedConv2d is two plain Conv2d already
    assert before > 0 or not isinstance(example.adapter, HFModelAdapter)
    assert rewritten_layers(plain) == 0
    assert not any(isinstance(m, (ProjectedLinear, FactorizedEmbedding)) for m in plain.modules())
    torch.testing.assert_close(outputs(example, plain), outputs(example, model), rtol=1e-5, atol=1e-5)
    assert rewritten_layers(model) == before  # the original is untouched


def test_export_runs_in_onnx_runtime_as_in_pytorch_at_other_shapes(compressed, tmp_path):
    example, model, folder = compressed
    meta = export_onnx(folder, tmp_path / "onnx", int8=True)
    fp32 = meta["validation"]["fp32"]
    assert fp32["max_abs_error"] <= fp32["tolerance"] and fp32["argmax_agreement"] == 1.0
    assert meta["ops"]["fp32"].get("MatMul", 0) + meta["ops"]["fp32"].get("Gemm", 0) >= 2 * meta["rewritten_layers"] \
        or meta["ops"]["fp32"].get("Conv", 0) > 0
    if isinstance(example.adapter, HFModelAdapter):  # attention in its eager form: no SDPA NaN guards
        assert "IsNaN" not in meta["ops"]["fp32"] and meta["ops"]["fp32"].get("Softmax", 0) > 0
    assert json.loads((tmp_path / "onnx" / "deploy.json").read_text()) == meta
    exported = ExportedModel.load(tmp_path / "onnx")
    batch = example.batches[-1]  # real data, a shape the export did not trace with
    torch.testing.assert_close(exported.run(batch), outputs(example, model) if batch is example.batches[0]
                               else example.adapter.forward(model, batch).detach().float(), rtol=1e-4, atol=1e-4)
    int8 = meta["validation"]["int8"]
    assert int8["max_abs_error"] > 0  # the int8 graph is another graph
    assert meta["ops"]["int8"].get("MatMulInteger", 0) + meta["ops"]["int8"].get("ConvInteger", 0) \
        + meta["ops"]["int8"].get("DynamicQuantizeMatMul", 0) > 0 or meta["ops"]["int8"].get("Conv", 0) > 0


def test_sessions_leave_out_the_skip_layer_norm_fusion(tmp_path):
    """rmtkd's ONNX Runtime sessions keep each residual Add and LayerNormalization apart (measured faster),
    where ONNX Runtime's default fuses them into SkipLayerNormalization."""
    import onnx

    from rmtkd.deploy.runtime import session

    example = ADAPTER_EXAMPLES["hf-sequence-classification"](tmp_path)
    model, rewrites = compress_every_site(example)
    folder = save_compressed(model, rewrites, tmp_path / "model", example.adapter.architecture(example.model),
                             write_assets=example.adapter.save_assets)
    export_onnx(folder, tmp_path / "onnx")
    counts = {}
    for name, unfused in (("rmtkd", None), ("default", ())):
        optimized = tmp_path / f"{name}.onnx"
        session(tmp_path / "onnx" / "model.onnx", 1, optimized_path=optimized,
                **({} if unfused is None else {"unfused": unfused}))
        ops = [node.op_type for node in onnx.load(str(optimized)).graph.node]
        counts[name] = (ops.count("SkipLayerNormalization"), ops.count("LayerNormalization"))
    assert counts["default"][0] > 0 and counts["rmtkd"][0] == 0
    assert counts["rmtkd"][1] == counts["default"][0] + counts["default"][1]


def test_torch_int8_quantizes_both_factors_of_every_projected_layer(compressed):
    example, model, _ = compressed
    projected = sum(isinstance(m, ProjectedLinear) for m in model.modules())
    shared = len({id(m.basis) for m in model.modules() if isinstance(m, ProjectedLinear)})
    embeddings = sum(isinstance(m, FactorizedEmbedding) for m in model.modules())
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    quantized = quantize_int8(model)
    # every Linear, each ProjectedLinear's second factor, one first factor per shared basis, each embedding's
    # projection (a module used in several places is quantized once per place)
    assert int8_linears(quantized) >= linears + projected + shared + embeddings
    assert not any(type(m) is nn.Linear for m in quantized.modules())
    reference, got = outputs(example, model), outputs(example, quantized)
    assert float((got - reference).abs().max()) > 0
    assert float((got - reference).abs().max()) <= 0.1 * (1 + float(reference.abs().max()))


def test_bad_input_gets_one_clear_error(tmp_path):
    example = ADAPTER_EXAMPLES["rmtkd-small-resnet"](tmp_path)
    folder = save_compressed(*compress_every_site(example), tmp_path / "model",
                             example.adapter.architecture(example.model), write_assets=example.adapter.save_assets)
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "rmtkd.json").write_text("{not json")
    with pytest.raises(ValueError, match="rmtkd.json is not readable JSON"):
        export_onnx(tmp_path / "damaged", tmp_path / "out")
    with pytest.raises(ValueError, match="opset: expected 18 or newer"):
        export_onnx(folder, tmp_path / "out", opset=13)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="out: .* is not an rmtkd export folder"):
        export_onnx(folder, mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "out").exists()


def test_export_and_evaluate_through_the_command_line(tmp_path, capsys):
    """`rmtkd export` writes the folder; `rmtkd evaluate` scores the .onnx file in ONNX Runtime exactly as the
    PyTorch model folder scores; a format rmtkd does not write is refused by name."""
    from rmtkd.app.cli import main

    example = ADAPTER_EXAMPLES["hf-sequence-classification"](tmp_path)
    model, rewrites = compress_every_site(example)
    folder = save_compressed(model, rewrites, tmp_path / "model", example.adapter.architecture(example.model),
                             write_assets=example.adapter.save_assets)
    data = tmp_path / "eval.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in [
        ("a sharp and funny film", "pos"), ("a dull, tedious plot", "neg"), ("the cast is charming", "pos"),
        ("boring ending", "neg"), ("moving", "pos"), ("flat and long", "neg")]))
    assert main(["export", "--model", str(folder), "--int8", "--out", str(tmp_path / "onnx")]) == 0
    assert "arg-max agreement 100.0%" in capsys.readouterr().out
    scores = {}
    for name, path in (("torch", folder), ("onnx", tmp_path / "onnx" / "model.onnx"),
                       ("int8", tmp_path / "onnx" / "model.int8.onnx")):
        assert main(["evaluate", "--model", str(path), "--eval", str(data), "--latency-seq-len", "16", "--json"]) == 0
        scores[name] = json.loads(capsys.readouterr().out)
    assert scores["onnx"]["accuracy"] == scores["torch"]["accuracy"]
    assert scores["onnx"]["parameters"] == scores["torch"]["parameters"] and scores["onnx"]["compressed_by_rmtkd"]
    assert scores["int8"]["latency_ms"]["median"] > 0
    with pytest.raises(SystemExit) as refused:
        main(["export", "--model", str(folder), "--format", "tflite"])
    assert refused.value.code == 2 and "--format" in capsys.readouterr().err


@needs_minilm
def test_compress_reports_the_fastest_deployment_and_the_benchmark_compares_all_eight(tmp_path, tiny_model, capsys):
    """`rmtkd compress --deploy` names each model's fastest deployment; benchmarks/deploy.py --quick times the
    run's teacher and model in all four forms and scores them on the run's validation slice."""
    from rmtkd.app.cli import main

    write_table(tmp_path / "train.tsv", 300, seed=1)
    write_table(tmp_path / "dev.tsv", 32, seed=2)
    out = tmp_path / "run"
    assert main(["compress", "--model", str(tiny_model), "--train", str(tmp_path / "train.tsv"), "--eval",
                 str(tmp_path / "dev.tsv"), "--out", str(out), "--train-samples", "200", "--calibration-samples", "64",
                 "--validation-samples", "32", "--distill-steps", "2", "--max-len", "16", "--latency-seq-len", "16",
                 "--deploy"]) == 0
    deployment = json.loads((out / "report.json").read_text())["deployment"]
    assert set(deployment["variants"]) == {f"{role} {variant}" for role in ("teacher", "compressed")
                                          for variant in VARIANTS}
    assert deployment["best"]["compressed"].startswith("compressed ")
    assert "fastest deployment (batch 1, 16 tokens" in capsys.readouterr().out
    assert (out / "onnx" / "compressed" / "model.int8.onnx").is_file()

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import deploy

    assert deploy.main(["--run", str(out), "--quick", "--goal-seq-len", "16", "--out", str(tmp_path / "bench")]) == 0
    result = json.loads((tmp_path / "bench" / "cpu" / "deploy.json").read_text())
    assert len(result["rows"]) == 8 and set(result["accuracy"]) == {r["variant"] for r in result["rows"]}
    assert all(r["ms_min"] <= r["ms"] <= r["ms_max"] and len(r["rounds_ms"]) == 3 for r in result["rows"])
    assert result["accuracy"]["teacher torch fp32"] == result["accuracy"]["teacher ORT fp32"]
    assert result["goals"]["shape"] == "batch 1, 16 tokens"

    import onnx_profile

    assert onnx_profile.main(["--run", str(out), "--seq-len", "16", "--calls", "3",
                              "--out", str(tmp_path / "bench")]) == 0
    profile = json.loads((tmp_path / "bench" / "cpu" / "onnx_profile.json").read_text())
    assert set(profile["profiles"]) == {f"{role} ORT {precision}" for role in ("teacher", "compressed")
                                        for precision in ("fp32", "int8")}
    for measured in profile["profiles"].values():
        assert measured["weight_matmul_nodes"] > 0 and measured["weight_matmul_ms"] > 0 and measured["rest_ms"] > 0
        assert measured["weight_matmul_ms"] + measured["rest_ms"] <= measured["wall_ms"]
    assert profile["bound"]["with_free_weight_matmuls"] > profile["bound"]["measured"]


class DataDependent(nn.Module):
    """A model whose output shape depends on its values: ONNX cannot express it with static rank logic."""

    def forward(self, x):
        return x.nonzero().float() if x.sum() > 0 else x


class DataDependentAdapter:
    name = "data-dependent"

    def example_batch(self, model, batch_size, seq_len):
        return {"x": torch.randn(batch_size, 4)}

    def forward(self, model, batch):
        return model(batch["x"])


def test_a_model_the_exporter_cannot_express_gets_its_cause_and_nothing_is_written(tmp_path):
    from rmtkd.adapters.loading import LoadedModel

    with pytest.raises(ValueError, match=r"model: <in memory> cannot be exported to ONNX \(\w+: "):
        export_onnx(LoadedModel(DataDependentAdapter(), DataDependent(), None), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
