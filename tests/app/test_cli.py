"""`rmtkd compress` end to end on a tiny BERT (MiniLM's tokenizer, random small weights) and synthetic text."""
from __future__ import annotations

import json

import pytest
import torch

from rmtkd.adapters import HFSequenceClassifier, SmallResNetAdapter
from rmtkd.app.cli import main
from rmtkd.data import FASHION_MNIST, load_fashion_mnist
from rmtkd.persistence import load_compressed
from tests.tiny_text import needs_minilm, write_table


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
    model, meta = load_compressed(out / "model", HFSequenceClassifier().build)
    assert meta["rewrites"] == report["rewrites"] and meta["architecture"]["adapter"] == HFSequenceClassifier.name
    assert [b["method"].split(" ")[0] for b in report["baselines"]] == ["weight_svd", "activation_pca",
                                                                         "fixed_fraction_pca"]
    latency = report["latency_ms"]
    assert latency["original"] > 0 and latency["compressed"] > 0
    for name in ("original", "compressed"):  # paired alternating blocks, as benchmarks/end_to_end.py times
        low, high = latency[f"{name}_quartiles"]
        assert low <= latency[name] <= high and latency[f"{name}_calls"] >= 5
    terminal = capsys.readouterr().out
    assert "| RMT-KD |" in terminal and "| step | site | d | k |" in terminal
    assert "latency speed-up:" in terminal and "alternating blocks of 0.1 s per model" in terminal

    # the report folder: markdown summary, one readable spectrum plot per site looked at, the trade-off plot
    sites = [site for step in report["steps"] for site in step["sites"]]
    # word embeddings, then per layer Q/K/V, attention output, FFN in, FFN out (input side, then output side)
    assert len(sites) == 1 + 2 * 5
    for site in sites:
        assert (out / site["plot"]).stat().st_size > 10_000
    assert (out / "plots" / "tradeoff.png").stat().st_size > 10_000
    markdown = (out / "report.md").read_text()
    assert "![accuracy vs. parameter reduction](plots/tradeoff.png)" in markdown
    assert f"| RMT-KD | {report['final']['parameters']:,} |" in markdown
    assert "| weight_svd" in markdown

    # the compressed folder stands alone (weights + tokenizer): `rmtkd evaluate` reproduces the accuracy
    assert main(["evaluate", "--model", str(out / "model"),  # evaluating needs no training data
                 "--eval", str(tmp_path / "dev.tsv"), "--max-len", "16", "--latency-seq-len", "16", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(report["final"]["accuracy"])
    assert evaluated["parameters"] == report["final"]["parameters"] and evaluated["compressed_by_rmtkd"]

    assert main(args) == 0  # re-running resumes: every step is done, nothing is recomputed
    assert "resuming after step 3 of 3" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["final"] == report["final"]

    changed = [a if a != "0.6" else "0.7" for a in args]  # another τ: a different run
    assert main(changed) == 2
    assert "holds a run with other settings (tau differ)" in capsys.readouterr().err
    assert main(changed + ["--json", "--overwrite", "--distill-steps", "1"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["settings"]["tau"] == 0.7  # stdout is exactly the report
    assert "original:" in captured.err and "resuming" not in captured.err


@needs_minilm
def test_spectrum_command_leaves_the_model_alone(tmp_path, tiny_model, capsys):
    write_table(tmp_path / "train.tsv", 120, seed=4)
    before = (tiny_model / "model.safetensors").read_bytes()
    assert main(["spectrum", "--model", str(tiny_model), "--train", str(tmp_path / "train.tsv"),
                 "--out", str(tmp_path / "spectrum"), "--calibration-samples", "100", "--max-len", "16",
                 "--threshold", "tracy_widom", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["examples"] == 100 and len(report["sites"]) == 1 + 2 * 5
    for site in report["sites"]:
        assert 0 <= site["k"] <= site["d"] and site["threshold_rule"] == "tracy_widom"
        assert (tmp_path / "spectrum" / site["plot"]).stat().st_size > 10_000
    assert "| bert.encoder.layer.1.output.dense | 96 |" in (tmp_path / "spectrum" / "summary.md").read_text()
    assert (tiny_model / "model.safetensors").read_bytes() == before


@needs_minilm
def test_user_errors_are_one_line(tmp_path, tiny_model, capsys):
    write_table(tmp_path / "train.tsv", 50, seed=3)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nfine\t7\n")
    base = ["compress", "--model", str(tiny_model), "--out", str(tmp_path / "out")]
    assert main(base + ["--train", str(tmp_path / "missing.tsv"), "--eval", str(tmp_path / "dev.tsv")]) == 2
    assert "rmtkd: error: data: file not found" in capsys.readouterr().err
    assert main(base + ["--train", str(tmp_path / "train.tsv")]) == 2
    assert "--train/--eval: give both files" in capsys.readouterr().err
    (tmp_path / "empty.tsv").write_text("")
    assert main(base + ["--train", str(tmp_path / "empty.tsv"), "--eval", str(tmp_path / "dev.tsv")]) == 2
    assert "holds no rows" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path), "--eval", str(tmp_path / "dev.tsv")]) == 2
    assert "is neither an rmtkd model folder" in capsys.readouterr().err
    assert main(base + ["--train", str(tmp_path / "train.tsv"), "--eval", str(tmp_path / "dev.tsv")]) == 2
    assert "eval: labels ['7'] do not occur in the training data" in capsys.readouterr().err
    (tmp_path / "one-class.tsv").write_text("sentence\tlabel\n" + "".join(f"text {i}\t1\n" for i in range(40)))
    assert main(base + ["--train", str(tmp_path / "one-class.tsv"), "--eval", str(tmp_path / "one-class.tsv")]) == 2
    assert "holds one class ('1'); a classifier needs examples of at least two" in capsys.readouterr().err
    assert main(base + ["--train", str(tmp_path / "train.tsv"), "--eval", str(tmp_path / "train.tsv"),
                        "--label-column", "stars"]) == 2
    assert "label_column: 'stars' is not a column" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    args = ["compress", "--model", str(tiny_model), "--out", str(tmp_path / "mine"),
            "--train", str(tmp_path / "train.tsv"), "--eval", str(tmp_path / "train.tsv")]
    assert main(args) == 2
    assert "holds files that are not an rmtkd run" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 2  # --overwrite replaces rmtkd runs only, never a user's files
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


needs_fashion_mnist = pytest.mark.skipif(not (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").exists(),
                                         reason="Debian's dataset-fashion-mnist is not installed")


@needs_fashion_mnist
def test_compress_images_end_to_end(tmp_path, capsys):
    out = tmp_path / "fashion"
    args = ["compress", "--task", "images", "--out", str(out), "--train-samples", "512", "--calibration-samples",
            "256", "--eval-samples", "500", "--distill-steps", "2", "--noise", "quantile", "--tau", "0.6"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert [s["sites"][0]["site"].split(".")[0] for s in report["steps"]] == ["stem", "stages", "stages", "stages"]
    assert {site["kind"] for step in report["steps"] for site in step["sites"]} == {"conv2d"}
    assert report["final"]["parameters"] < report["original"]["parameters"]
    model, _ = load_compressed(out / "model", SmallResNetAdapter().build)
    images, labels = load_fashion_mnist("test")
    with torch.no_grad():
        predicted = model(images[:500]).argmax(-1)
    assert (predicted == labels[:500]).float().mean().item() == pytest.approx(report["final"]["accuracy"])
    assert "| RMT-KD |" in capsys.readouterr().out


def test_ctrl_c_keeps_the_checkpoint_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    from rmtkd.app.tasks import TASKS

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(TASKS.get("images"), "prepare", interrupted)
    assert main(["compress", "--task", "images", "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert f"the last completed step is kept in {tmp_path / 'run'}/checkpoint" in err
    assert "Re-run the same command to resume" in err and "Traceback" not in err


@needs_fashion_mnist
def test_spectrum_and_evaluate_of_an_image_model_folder(tmp_path, capsys):
    from rmtkd.adapters.vision import SmallResNet

    torch.manual_seed(0)
    model = SmallResNet(in_channels=1, num_classes=10, widths=(8, 16, 16)).eval()
    SmallResNetAdapter().save_folder(model, tmp_path / "cnn")
    assert main(["spectrum", "--task", "images", "--model", str(tmp_path / "cnn"), "--out", str(tmp_path / "spec"),
                 "--calibration-samples", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["data"] == "fashion-mnist" and {s["kind"] for s in report["sites"]} == {"conv2d"}
    assert report["sites"][0]["d"] == 1 and (tmp_path / "spec" / report["sites"][1]["plot"]).is_file()
    assert main(["evaluate", "--task", "images", "--model", str(tmp_path / "cnn"), "--eval-samples", "200",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    images, labels = load_fashion_mnist("test")
    with torch.no_grad():
        expected = (model(images[:200]).argmax(-1) == labels[:200]).float().mean().item()
    assert result["examples"] == 200 and result["accuracy"] == pytest.approx(expected)
    assert result["parameters"] == sum(p.numel() for p in model.parameters()) and not result["compressed_by_rmtkd"]


def test_the_validation_slice_is_disjoint_from_calibration_training_and_evaluation():
    """Decisions are made on held-out training rows: never a calibration or training row, never --eval."""
    from rmtkd.app.tasks.base import Settings, split_train

    calib, valid, fit = split_train(1000, Settings(max_metric_drop=0.01, train_samples=700))
    assert len(calib) == 100 and len(valid) == 100 and len(fit) == 700
    assert not (set(calib) & set(valid) or set(calib) & set(fit) or set(valid) & set(fit))
    assert split_train(1000, Settings(train_samples=700))[1] == []  # no decision: nothing held out
    assert split_train(1000, Settings(early_stopping=50, train_samples=700))[1] == valid  # early stopping's slice
    calib_again, _, fit_again = split_train(1000, Settings(train_samples=700))
    assert calib_again == calib  # the calibration rows do not move when a validation slice is carved


@needs_minilm
def test_budgeted_run_with_hidden_state_distillation_and_early_stopping(tmp_path, tiny_model, capsys):
    """The new mode end to end: ranks planned to a parameter target and a FLOP cap, block outputs matched,
    checks on the validation slice; report.md says what the budget chose."""
    write_table(tmp_path / "train.tsv", 400, seed=1)
    write_table(tmp_path / "dev.tsv", 64, seed=2)
    args = ["compress", "--model", str(tiny_model), "--train", str(tmp_path / "train.tsv"),
            "--eval", str(tmp_path / "dev.tsv"), "--out", str(tmp_path / "out"), "--train-samples", "192",
            "--calibration-samples", "96", "--validation-samples", "48", "--distill-steps", "4", "--max-len", "16",
            "--noise", "quantile", "--tau", "0.6", "--latency-seq-len", "16", "--ranks", "budget",
            "--target-reduction", "0.5", "--target-flop-reduction", "0.55", "--distill-mode", "hidden", "--warmup",
            "0.25", "--early-stopping", "2", "--recovery-steps", "4"]
    assert main(args) == 0
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["parameter_reduction"] >= 0.5 and report["final"]["parameters"] == report["rank_plan"]["parameters"]
    distilled = [step["distillation"] for step in report["steps"] if "distillation" in step]
    assert distilled and all(d["early_stopping"]["checks"][0]["step"] == 0 for d in distilled)
    assert report["recovery"]["distillation"]["early_stopping"]["score"] == "loss"  # the default
    markdown = (out / "report.md").read_text()
    assert "## Rank budget" in markdown and "| site | d | k | variance kept | rule k |" in markdown
    plan = report["rank_plan"]
    assert plan["flops"] <= plan["flop_target"] == int(plan["flops_before"] * 0.45)
    assert f"the cap of {plan['flop_target']:,} forward FLOPs" in markdown
    assert "validation_accuracy" in report["final"]
    assert "cannot check that the validation slice" not in capsys.readouterr().out  # its teacher is its own
    assert main(args) == 0 and "resuming after step 3 of 3" in capsys.readouterr().out


@needs_minilm
def test_a_teacher_trained_elsewhere_is_noted_when_the_run_decides_on_a_validation_slice(tmp_path, tiny_model):
    """rmtkd cannot know what a reused teacher was trained on: a run that decides on its validation slice says
    so; one that decides nothing, or fine-tunes its own teacher, does not."""
    from rmtkd.app.tasks import TASKS, Settings

    def notes(**options) -> list[str]:
        lines: list[str] = []
        TASKS.get("text").teacher(Settings(model=str(tiny_model), **options), None, [], tmp_path, lines.append, None)
        return [line for line in lines if "cannot check that the validation slice" in line]

    assert len(notes(no_fine_tune=True, early_stopping=2)) == 1
    assert "--max-metric-drop decides on" in notes(no_fine_tune=True, max_metric_drop=1.0)[0]
    assert notes(no_fine_tune=True) == []


@needs_minilm
def test_settings_chosen_on_the_validation_slice(tmp_path, tiny_model, capsys):
    """--select-on validation: one candidate run per grid point under OUT/candidates, the choice on the slice,
    then the chosen model measured on --eval and written as the run's model; the run resumes as any other."""
    write_table(tmp_path / "train.tsv", 400, seed=1)
    write_table(tmp_path / "dev.tsv", 64, seed=2)
    args = ["compress", "--model", str(tiny_model), "--train", str(tmp_path / "train.tsv"),
            "--eval", str(tmp_path / "dev.tsv"), "--out", str(tmp_path / "out"), "--train-samples", "192",
            "--calibration-samples", "96", "--validation-samples", "48", "--distill-steps", "2", "--max-len", "16",
            "--noise", "quantile", "--latency-seq-len", "16", "--select-on", "validation", "--grid",
            "tau=0.5,0.8", "--grid", "recovery-steps=0,2", "--select-within", "1"]
    assert main(args) == 0
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    selection = report["selection"]
    names = ["tau=0.5,recovery-steps=0", "tau=0.5,recovery-steps=2", "tau=0.8,recovery-steps=0",
             "tau=0.8,recovery-steps=2"]
    assert [row["name"] for row in selection["candidates"]] == names
    assert all((out / "candidates" / name / "model" / "rmtkd.json").is_file() for name in names)
    smallest = min(row["parameters"] for row in selection["candidates"])
    assert selection["chosen"].startswith("tau=0.8") and report["final"]["parameters"] == smallest
    assert report["settings"]["select_on"] == "validation" and "validation_accuracy" in report["original"]
    markdown = (out / "report.md").read_text()
    assert "## Settings chosen on the validation slice" in markdown and f"`{selection['chosen']}` (chosen)" in markdown
    assert f"chosen on the validation slice: {selection['chosen']}" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(out / "model"), "--eval", str(tmp_path / "dev.tsv"), "--max-len", "16",
                 "--latency-seq-len", "16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(report["final"]["accuracy"])
    assert main(args) == 0  # resumed: every candidate is done
    assert capsys.readouterr().out.count("resuming after step 3 of 3") == len(names)
    assert json.loads((out / "report.json").read_text())["final"] == report["final"]
