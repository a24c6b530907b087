"""`rmtkd compress --task lm` end to end on a tiny decoder with a learnt BPE tokenizer, and its input errors."""
from __future__ import annotations

import json

import pytest

from rmtkd.adapters import HFCausalLM, load_model
from rmtkd.app.cli import main
from tests.tiny_lm import save_tiny_lm, write_text
from tests.tiny_text import needs_minilm


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory):
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-llama") / "model", "llama", tied=True)


def test_compress_a_decoder_end_to_end(tmp_path, tiny_decoder, capsys):
    train, valid = write_text(tmp_path / "train.txt", 300, 1), write_text(tmp_path / "valid.txt", 40, 2)
    out = tmp_path / "out"
    args = ["compress", "--task", "lm", "--model", str(tiny_decoder), "--train", str(train), "--eval", str(valid),
            "--out", str(out), "--max-len", "32", "--batch-size", "8", "--calibration-samples", "48",
            "--distill-steps", "2", "--noise", "quantile", "--tau", "0.6", "--latency-seq-len", "32", "--baselines"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["metric"]["name"] == "perplexity" and report["final"]["perplexity"] > 1
    assert report["final"]["parameters"] < report["original"]["parameters"]
    assert len(report["steps"]) == 3 and not (out / "teacher").exists()  # the model given is the teacher
    assert {row["method"].split(" ")[0] for row in report["baselines"]} == {"weight_svd", "activation_pca",
                                                                            "fixed_fraction_pca"}
    assert all(row["perplexity"] > 1 for row in report["baselines"])
    terminal = capsys.readouterr().out
    assert "| model | parameters | reduction | forward FLOPs | perplexity |" in terminal
    assert "![perplexity vs. parameter reduction](plots/tradeoff.png)" in (out / "report.md").read_text()

    loaded = load_model(out / "model")  # stands alone: weights, the rewrites and the tokenizer
    assert isinstance(loaded.adapter, HFCausalLM) and loaded.adapter.tokenizer is not None
    assert main(["evaluate", "--task", "lm", "--model", str(out / "model"), "--eval", str(valid), "--max-len", "32", "--batch-size", "8", "--latency-seq-len", "32", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["perplexity"] == pytest.approx(report["final"]["perplexity"], rel=1e-6)
    assert evaluated["parameters"] == report["final"]["parameters"] and evaluated["compressed_by_rmtkd"]

    assert main(["spectrum", "--task", "lm", "--model", str(tiny_decoder), "--train", str(train), "--out",
                 str(tmp_path / "spectrum"), "--max-len", "32", "--calibration-samples", "40", "--json"]) == 0
    spectrum = json.loads(capsys.readouterr().out)
    assert spectrum["sites"][0]["kind"] == "tied_embedding" and len(spectrum["sites"]) == 1 + 2 * 5


@needs_minilm
def test_a_task_that_does_not_match_the_model_is_named(tmp_path, tiny_decoder, tiny_model, capsys):
    train, valid = write_text(tmp_path / "train.txt", 20, 1), write_text(tmp_path / "valid.txt", 5, 2)
    data = ["--train", str(train), "--eval", str(valid), "--out", str(tmp_path / "o")]
    assert main(["compress", "--task", "lm", "--model", str(tiny_model), *data]) == 2
    assert ("--task lm: " in (err := capsys.readouterr().err) and "holds a hf-sequence-classification model"
            in err and "use --task text" in err)
    assert main(["evaluate", "--task", "text", "--model", str(tiny_decoder), *data[2:4]]) == 2
    assert "holds a hf-causal-lm model, and this task takes hf-sequence-classification; use --task lm" in (
        capsys.readouterr().err)


def test_bad_text_and_unknown_models_get_one_line(tmp_path, tiny_decoder, capsys):
    valid = write_text(tmp_path / "valid.txt", 5, 2)
    base = ["compress", "--task", "lm", "--model", str(tiny_decoder), "--eval", str(valid), "--out",
            str(tmp_path / "o"), "--max-len", "32"]
    (tmp_path / "empty.txt").write_text("\n  \n")
    assert main(base + ["--train", str(tmp_path / "empty.txt")]) == 2
    assert "rmtkd: error: data: " in (err := capsys.readouterr().err) and "holds no text" in err
    (tmp_path / "short.txt").write_text("the cat.\n")
    assert main(base + ["--train", str(tmp_path / "short.txt")]) == 2
    assert "fewer than one sequence of 32" in capsys.readouterr().err
    assert main(["compress", "--task", "lm", "--train", str(valid), "--eval", str(valid), "--out",
                 str(tmp_path / "o2")]) == 2
    assert "--model: --task lm needs a Hugging Face causal-LM folder" in capsys.readouterr().err
    unknown = tmp_path / "t5"
    unknown.mkdir()
    (unknown / "config.json").write_text('{"model_type": "t5"}')
    assert main(base[:4] + [str(unknown), "--train", str(valid), "--eval", str(valid), "--out",
                            str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert "holds a 't5' model, which no adapter knows; adapters: hf-sequence-classification (bert" in err
    assert "hf-causal-lm (gpt2, llama, mistral, qwen2)" in err and len(err.strip().splitlines()) == 1
    assert main(base + ["--train", str(valid), "--tau", "0.6"]) == 2  # τ without the rule that uses it
    assert "tau: only the 'quantile' noise rule uses τ" in capsys.readouterr().err
