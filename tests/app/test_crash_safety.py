"""A run that dies right after any one of its file writes, then is run again, ends exactly where an uninterrupted
run ends: every write, not a sample. And the output folder's lock, manifest and --overwrite."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from rmtkd.app.cli import main
from rmtkd.app.run_folder import LOCK_FILE, MANIFEST_FILE, folder_lock
from tests.tiny_text import needs_minilm, save_tiny_bert, write_table


class Died(BaseException):
    """Stands for the process being killed: nothing in rmtkd catches it."""


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """Arguments of a small `rmtkd compress` (a 1-layer BERT, 2 steps) and its data."""
    folder = tmp_path_factory.mktemp("crash")
    model = save_tiny_bert(folder / "bert", layers=1)
    write_table(folder / "train.tsv", 160, seed=1)
    write_table(folder / "dev.tsv", 32, seed=2)
    return ["compress", "--model", str(model), "--train", str(folder / "train.tsv"), "--eval", str(folder / "dev.tsv"),
            "--train-samples", "64", "--calibration-samples", "48", "--distill-steps", "1", "--max-len", "12",
            "--batch-size", "16", "--noise", "quantile", "--tau", "0.6", "--latency-seq-len", "8"]


def outcome(out):
    """What a finished run leaves that must not depend on crashes: the model's tensors, the report without its
    timings, the teacher's tensors."""
    report = json.loads((out / "report.json").read_text())
    report.pop("latency_ms")
    for step in report["steps"]:
        step.pop("seconds")
    return (load_file(out / "model" / "model.safetensors"), report,
            load_file(out / "teacher" / "model.safetensors"))


def same(a, b) -> bool:
    (model_a, report_a, teacher_a), (model_b, report_b, teacher_b) = a, b
    return (report_a == report_b and model_a.keys() == model_b.keys() and teacher_a.keys() == teacher_b.keys()
            and all(torch.equal(model_a[k], model_b[k]) for k in model_a)
            and all(torch.equal(teacher_a[k], teacher_b[k]) for k in teacher_a))


@needs_minilm
def test_a_crash_after_any_write_is_resumed_to_the_same_result(small_run, tmp_path, monkeypatch, capsys):
    rename = os.replace
    writes = []
    # A first run makes the kernel backends' decisions (written to the backend cache, outside the run folder),
    # so that every counted run below performs the same writes.
    assert main(small_run + ["--out", str(tmp_path / "warm-up")]) == 0

    def counting(source, target, **kwargs):
        rename(source, target, **kwargs)
        writes.append(str(target))

    monkeypatch.setattr(os, "replace", counting)
    assert main(small_run + ["--out", str(tmp_path / "whole")]) == 0
    expected, total = outcome(tmp_path / "whole"), len(writes)
    assert total > 20, writes  # run.json, manifest, teacher, plots, checkpoints, model, report …

    for n in range(1, total + 1):
        out = tmp_path / f"died-after-{n}"
        count = [0]

        def dying(source, target, **kwargs):
            rename(source, target, **kwargs)
            count[0] += 1
            if count[0] == n:
                raise Died(str(target))

        monkeypatch.setattr(os, "replace", dying)
        with pytest.raises(Died):
            main(small_run + ["--out", str(out)])
        monkeypatch.setattr(os, "replace", rename)
        assert main(small_run + ["--out", str(out)]) == 0, (n, capsys.readouterr().err)
        assert same(outcome(out), expected), f"died after write {n} ({writes[n - 1]})"
        leftovers = [p.name for p in out.rglob(".*") if p.name not in (LOCK_FILE, MANIFEST_FILE)]
        assert not leftovers, (n, leftovers)
        shutil.rmtree(out)
    capsys.readouterr()


@needs_minilm
def test_one_folder_one_run(small_run, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    with folder_lock(out):  # as another rmtkd process would hold it
        assert main(small_run + ["--out", str(out)]) == 2
    assert f"is in use by another rmtkd run (PID {os.getpid()})" in capsys.readouterr().err


@needs_minilm
def test_overwrite_removes_only_what_rmtkd_wrote(small_run, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(small_run + ["--out", str(out)]) == 0
    (out / "teacher" / "notes.txt").write_text("mine")
    (out / "plots" / "my-figure.png").write_bytes(b"not rmtkd's")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    (out / "model" / "rmtkd.json").write_text((out / "model" / "rmtkd.json").read_text() + "\n")  # changed since
    (out / "summary.md").symlink_to(elsewhere / "keep.txt")
    capsys.readouterr()
    other = [a if a != "0.6" else "0.7" for a in small_run]
    assert main(other + ["--out", str(out)]) == 2  # other settings: refused without --overwrite
    assert "holds a run with other settings (tau differ)" in capsys.readouterr().err
    assert main(other + ["--out", str(out), "--overwrite"]) == 2  # they would be lost: nothing is deleted
    err = capsys.readouterr().err
    assert "--overwrite: " in err and "where the new run writes: model/rmtkd.json, summary.md, teacher/notes.txt" in err
    assert (out / "model" / "model.safetensors").exists() and (out / "teacher" / "notes.txt").read_text() == "mine"
    (out / "teacher" / "notes.txt").rename(tmp_path / "notes.txt")
    (out / "summary.md").unlink()
    (out / "model" / "rmtkd.json").write_text((out / "model" / "rmtkd.json").read_text().rstrip("\n") + "\n")
    assert main(other + ["--out", str(out), "--overwrite"]) == 0
    assert "--overwrite: left 1 file(s) rmtkd did not write in" in capsys.readouterr().out
    assert (out / "plots" / "my-figure.png").read_bytes() == b"not rmtkd's" and (elsewhere / "keep.txt").exists()
    assert json.loads((out / "run.json").read_text())["tau"] == 0.7 and (out / "model" / "model.safetensors").exists()


@needs_minilm
def test_a_folder_without_a_manifest_is_never_a_run(small_run, tmp_path, capsys):
    out = tmp_path / "users"
    (out / "model").mkdir(parents=True)
    (out / "model" / "weights.bin").write_bytes(b"a user's model")
    for extra in ([], ["--overwrite"]):
        assert main(small_run + ["--out", str(out), *extra]) == 2
        assert "holds files that are not an rmtkd run (model, but no .rmtkd-manifest.json)" in capsys.readouterr().err
    assert (out / "model" / "weights.bin").read_bytes() == b"a user's model"


@needs_minilm
def test_debris_of_a_crash_is_cleared_and_an_interrupted_swap_undone(small_run, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(small_run + ["--out", str(out)]) == 0
    (out / ".checkpoint.tmp-0123abcd").mkdir()
    (out / ".checkpoint.tmp-0123abcd" / "model.safetensors").write_bytes(b"half")
    (out / "plots" / ".tradeoff.tmp-89abcdef.png").write_bytes(b"half")
    os.replace(out / "model", out / ".model.old-00000000")  # died between the two renames of a swap
    capsys.readouterr()
    assert main(small_run + ["--out", str(out)]) == 0  # resumes: everything done
    printed = capsys.readouterr().out
    assert "restored model from an interrupted write" in printed and "removed .checkpoint.tmp-0123abcd" in printed
    assert (out / "model" / "model.safetensors").exists()
    assert not [p for p in out.rglob(".*") if p.name not in (LOCK_FILE, MANIFEST_FILE)]
