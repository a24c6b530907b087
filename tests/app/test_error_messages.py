"""Bad input and the one line it gets: the table of docs/errors.md is made by this test, so it cannot drift.

Each case runs for real (a command through `rmtkd`'s main, or a library call) and its message, with temporary
paths replaced by placeholders, must be the documented one. After a deliberate change of messages, regenerate
the page with `RMTKD_WRITE_DOCS=1 python -m pytest tests/app/test_error_messages.py`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

from rmtkd.app.cli import main
from rmtkd.app.run_folder import folder_lock
from rmtkd_kernels import CovarianceAccumulator, ProjectedLinear, cov_accumulate
from tests.tiny_lm import save_tiny_lm
from tests.tiny_text import needs_minilm, write_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
HEADER = """# Bad input and what it gets

Every case below is run by `tests/app/test_error_messages.py`, which also writes this table: the messages are
the ones the product prints (temporary paths shown as `DIR/`). A command prints its message as one
`rmtkd: error: ...` line and exits with status 2; a library call raises `ValueError` with it. Nothing is written
or changed before the check that fails.

| bad input | message |
|---|---|
"""


def command(*args: str) -> Callable[[], str]:
    def run(capsys) -> str:
        assert main(list(args)) == 2
        return capsys.readouterr().err.strip().removeprefix("rmtkd: error: ")
    return run


def call(function: Callable[[], object]) -> Callable[..., str]:
    def run(capsys) -> str:
        with pytest.raises(ValueError) as error:
            function()
        return str(error.value)
    return run


def cases(root: Path, bert: Path, decoder: Path, model_folder: Path) -> list[tuple[str, Callable]]:
    """(what is wrong, how to provoke it) for every case of the table."""
    write_table(root / "train.tsv", 60, seed=1)
    write_table(root / "dev.tsv", 12, seed=2)
    (root / "extra-field.tsv").write_text("sentence\tlabel\ngood film\t1\nbad\tfilm\t0\n")
    (root / "no-text.jsonl").write_text('{"sentence": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    (root / "broken.jsonl").write_text('{"sentence": "a", "label": 1}\n{"sentence": "b", \n')
    (root / "one-class.tsv").write_text("sentence\tlabel\n" + "".join(f"text {i}\t1\n" for i in range(30)))
    (root / "unseen.tsv").write_text("sentence\tlabel\nfine\t7\n")
    (root / "short.txt").write_text("the cat.\n")
    (root / "t5").mkdir()
    (root / "t5" / "config.json").write_text('{"model_type": "t5"}')
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("mine")
    (root / "busy").mkdir()
    truncated = root / "truncated"
    shutil.copytree(model_folder, truncated)
    (truncated / "model.safetensors").write_bytes((truncated / "model.safetensors").read_bytes()[:100])
    wrong_rank = root / "wrong-rank"
    shutil.copytree(model_folder, wrong_rank)
    meta = json.loads((wrong_rank / "rmtkd.json").read_text())
    meta["rewrites"][0]["rank"] -= 1
    (wrong_rank / "rmtkd.json").write_text(json.dumps(meta))
    no_tokenizer = root / "no-tokenizer"
    shutil.copytree(bert, no_tokenizer)
    for path in no_tokenizer.iterdir():
        if "token" in path.name or "vocab" in path.name:
            path.unlink()
    data = ["--train", str(root / "train.tsv"), "--eval", str(root / "dev.tsv")]
    compress = ["compress", "--model", str(bert), "--out", str(root / "out")]
    lm = ["compress", "--task", "lm", "--model", str(decoder), "--out", str(root / "lm-out")]

    def locked(capsys) -> str:
        with folder_lock(root / "busy"):  # as another rmtkd process holds it
            return command(*compress[:4], str(root / "busy"), *data)(capsys)

    def overflowing() -> None:
        accumulator = CovarianceAccumulator(3)
        accumulator.update(torch.tensor([[1.0, 2.0, 3e20], [0.5, 1.0, -3e20]]))
        accumulator.covariance()

    def aliased() -> None:
        x = torch.randn(4, 4, dtype=torch.float64)
        cov_accumulate(x, x, torch.zeros(4, dtype=torch.float64), torch.zeros((), dtype=torch.int64))

    def too_few_for_ddof() -> None:
        accumulator = CovarianceAccumulator(3)
        accumulator.update(torch.randn(2, 3))
        accumulator.covariance(ddof=2)

    def without_onnxruntime() -> None:
        from unittest import mock

        from rmtkd.deploy import export_onnx

        with mock.patch.dict(sys.modules, {"onnxruntime": None}):  # as if it were not installed
            export_onnx(model_folder, root / "onnx")

    (root / "bad-export").mkdir()
    (root / "bad-export" / "deploy.json").write_text("{")

    def negative_count() -> None:
        accumulator = CovarianceAccumulator(3)
        CovarianceAccumulator(3).load_state_dict({**accumulator.state_dict(), "count": torch.tensor(-1)})

    return [
        ("a data file that does not exist", command(*compress, "--train", str(root / "missing.tsv"), *data[2:])),
        ("a training file without an evaluation file", command(*compress, *data[:2])),
        ("a TSV row with a field too many", command(*compress, "--train", str(root / "extra-field.tsv"), *data[2:])),
        ("a JSON line without the text column", command(*compress, "--train", str(root / "no-text.jsonl"),
                                                        *data[2:])),
        ("a JSON line that is not JSON", command(*compress, "--train", str(root / "broken.jsonl"), *data[2:])),
        ("training data of one class", command(*compress, "--train", str(root / "one-class.tsv"), "--eval",
                                               str(root / "one-class.tsv"))),
        ("evaluation labels the training data lacks", command(*compress, *data[:2], "--eval",
                                                              str(root / "unseen.tsv"))),
        ("τ without the noise rule that uses it", command(*compress, *data, "--tau", "0.6")),
        ("a metric budget with no validation slice to decide on", command(*compress, *data, "--max-metric-drop",
                                                                          "0.01", "--validation-samples", "0")),
        ("a rank budget without a target", command(*compress, *data, "--ranks", "budget")),
        ("a FLOP cap without a rank budget", command(*compress, *data, "--target-flop-reduction", "0.8")),
        ("a choice on the validation slice with nothing to choose among", command(*compress, *data, "--select-on",
                                                                               "validation")),
        ("a grid without a choice", command(*compress, *data, "--grid", "tau=0.6,0.7")),
        ("a grid of a setting it cannot vary", command(*compress, *data, "--select-on", "validation", "--grid",
                                                       "distill-lr=1e-4,1e-5")),
        ("a grid value of the wrong type", command(*compress, *data, "--select-on", "validation", "--grid",
                                                   "recovery-steps=100,1.5")),
        ("a grid candidate the command line refuses", command(*compress, *data, "--select-on", "validation",
                                                              "--grid", "tau=0.6,0.7")),
        ("a hidden-state weight without hidden-state distillation", command(*compress, *data, "--hidden-weight",
                                                                            "2")),
        ("an attention-relation weight without relation distillation",
         command(*compress, *data, "--distill-mode", "hidden", "--relation-weight", "2")),
        ("a warm-up of all the steps", command(*compress, *data, "--warmup", "1")),
        ("a model folder of a type no adapter knows", command(*compress[:2], str(root / "t5"),
                                                             *compress[3:], *data)),
        ("a `--task` that does not match the model", command("compress", "--task", "lm", "--model", str(bert),
                                                              "--out", str(root / "o"), *data)),
        ("a Hugging Face folder without its tokenizer", command("evaluate", "--model", str(no_tokenizer),
                                                               *data[2:])),
        ("a model folder with truncated weights", command("evaluate", "--task", "images", "--model",
                                                          str(truncated))),
        ("rmtkd.json whose rank does not fit the weights", command("evaluate", "--task", "images", "--model",
                                                                   str(wrong_rank))),
        ("an output folder holding a user's files", command(*compress[:4], str(root / "mine"), *data)),
        ("an output folder another run is using", locked),
        ("a text too short for one sequence of --max-len tokens", command(*lm, "--train", str(root / "short.txt"),
                                                                           "--eval", str(root / "short.txt"),
                                                                           "--max-len", "64")),
        ("an ONNX opset older than the exporter writes", command("export", "--model", str(model_folder), "--opset",
                                                                  "13", "--out", str(root / "onnx"))),
        ("an export into a folder holding a user's files", command("export", "--model", str(model_folder), "--out",
                                                                    str(root / "mine"))),
        ("an export without ONNX Runtime installed", call(without_onnxruntime)),
        ("an export folder whose deploy.json is damaged", command("evaluate", "--task", "images", "--model",
                                                                   str(root / "bad-export"))),
        ("`cov_accumulate` with `gram` aliasing `x`", call(aliased)),
        ("finite activations whose products overflow", call(overflowing)),
        ("an orthonormal basis that holds NaN", call(lambda: ProjectedLinear.from_linear(
            nn.Linear(4, 3), torch.full((4, 2), float("nan"))))),
        ("`covariance(ddof=2)` of two samples", call(too_few_for_ddof)),
        ("an accumulator state with a negative count", call(negative_count)),
        ("an accumulator too large for memory", call(lambda: CovarianceAccumulator(10_000_000))),
    ]


def compressed_cnn(out: Path) -> Path:
    """A small CNN compressed by the loop: a model folder of a registered adapter."""
    from rmtkd.adapters import SmallResNetAdapter
    from rmtkd.batching import image_batches
    from rmtkd.adapters.vision import SmallResNet
    from rmtkd.calibration import SelectionConfig
    from rmtkd.distill import DistillConfig
    from rmtkd.loop import LoopConfig, compress
    from rmtkd.task import Task

    torch.manual_seed(0)
    images = torch.randn(64, 1, 12, 12)
    batches = image_batches(images, torch.arange(64) % 10, 32)
    task = Task(adapter=SmallResNetAdapter(), model=SmallResNet(widths=(8, 16, 16)).eval(),
                train_batches=lambda step: batches, calibration_batches=batches, eval_batches=batches)
    config = LoopConfig(selection=SelectionConfig(noise="quantile", tau=0.6), distill=DistillConfig(steps=1),
                        granularity="block")
    compress(task, config, out, log=lambda message: None)
    return out / "model"


@needs_minilm
def test_the_documented_messages(tmp_path, tiny_model, capsys):
    decoder = save_tiny_lm(tmp_path / "decoder")
    rows = []
    for what, provoke in cases(tmp_path, tiny_model, decoder, compressed_cnn(tmp_path / "run")):
        message = provoke(capsys).replace(str(tmp_path), "DIR").replace(str(tiny_model), "BERT")
        message = re.sub(r"PID \d+", "PID 12345", message)
        assert "\n" not in message and "Traceback" not in message, (what, message)
        cell = message.replace("|", "\\|")
        rows.append(f"| {what} | `{cell}` |")
    page = HEADER + "\n".join(rows) + "\n"
    if os.environ.get("RMTKD_WRITE_DOCS") == "1":
        DOC.write_text(page)
    assert DOC.read_text() == page, "docs/errors.md differs: regenerate it with RMTKD_WRITE_DOCS=1 (see docstring)"
