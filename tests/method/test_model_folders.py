"""Model folders that are damaged or do not belong together fail with one line naming the file and the fault."""
from __future__ import annotations

import json
import shutil

import pytest

from rmtkd.adapters import load_model
from rmtkd.loop import compress
from rmtkd.persistence import load_compressed
from tests.method.test_loop import CONFIG, trained_task
from tests.tiny_lm import save_tiny_lm
from tests.tiny_text import needs_minilm


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A compressed model folder of the loop's test classifier, and its adapter."""
    task = trained_task()
    out = tmp_path_factory.mktemp("run")
    compress(task, CONFIG, out, log=lambda message: None)
    return out / "model", task.adapter


def damaged(saved_folder, tmp_path, name="copy"):
    folder = tmp_path / name
    shutil.copytree(saved_folder, folder)
    return folder


def edit_meta(folder, change):
    meta = json.loads((folder / "rmtkd.json").read_text())
    change(meta)
    (folder / "rmtkd.json").write_text(json.dumps(meta))


def test_weights_files_that_are_not_safetensors(saved, tmp_path):
    model_folder, adapter = saved
    cases = {
        "truncated": lambda data: data[: len(data) // 2],
        "empty": lambda data: b"",
        "garbage": lambda data: b"\x00\x01 not a safetensors file " * 100,
    }
    for name, corrupt in cases.items():
        folder = damaged(model_folder, tmp_path, name)
        weights = folder / "model.safetensors"
        weights.write_bytes(corrupt(weights.read_bytes()))
        with pytest.raises(ValueError, match=rf"path: .*{name}/model.safetensors is not a readable safetensors file"):
            load_compressed(folder, adapter.build)
    folder = damaged(model_folder, tmp_path, "without-weights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"without-weights/model.safetensors is missing"):
        load_compressed(folder, adapter.build)


def test_rmtkd_json_that_does_not_fit(saved, tmp_path):
    model_folder, adapter = saved
    first = json.loads((model_folder / "rmtkd.json").read_text())["rewrites"][0]

    def with_first(**change):
        return lambda meta: meta["rewrites"][0].update(change)

    cases = [
        ("wrong-rank", with_first(rank=first["rank"] - 1),
         r"model.safetensors does not fit rmtkd.json: embed\.\w+ has shape .* where the model has"),
        ("rank-above-dim", with_first(rank=first["dim"] + 1), r"rewrite 0 is malformed \(rank: expected 1 <= rank"),
        ("missing-key", lambda meta: meta["rewrites"][0].pop("rank"), r"rewrite 0 is malformed \('rank'\)"),
        ("unknown-module", with_first(names=["nowhere"]), r"rewrite 0 \(embedding on nowhere\) does not fit the model"),
        ("swapped-kind", with_first(kind="conv2d"), r"rewrite 0 \(conv2d on embed\) does not fit the model"),
        ("unknown-kind", with_first(kind="sparse"), r"rewrite 0 is malformed \(kind: unknown site kind 'sparse'"),
        ("no-rewrites", lambda meta: meta.pop("rewrites"), r"needs an 'architecture' object and a 'rewrites' list"),
        ("old-format", lambda meta: meta.update(format=0), r"has format 0, this rmtkd reads format 1"),
    ]
    for name, change, message in cases:
        folder = damaged(model_folder, tmp_path, name)
        edit_meta(folder, change)
        with pytest.raises(ValueError, match=message):
            load_compressed(folder, adapter.build)
    folder = damaged(model_folder, tmp_path, "not-json")
    (folder / "rmtkd.json").write_text("{ broken")
    with pytest.raises(ValueError, match=r"not-json/rmtkd.json is not readable JSON"):
        load_compressed(folder, adapter.build)


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(tmp_path):
    """A Hugging Face folder without its tokenizer files would load a stub tokenizer of a few tokens and score
    every text as unknown words; it is refused instead."""
    folder = save_tiny_lm(tmp_path / "lm")
    assert load_model(folder).adapter.tokenizer is not None
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"model: .*(has no usable tokenizer|tokenizer in .* has \d+ tokens for)"):
        load_model(folder)


@needs_minilm
def test_an_encoder_folder_without_its_tokenizer_is_refused(tiny_model, tmp_path):
    """The case that scored 0.00% and exited 0: a BERT folder whose tokenizer files are gone."""
    folder = tmp_path / "bert"
    shutil.copytree(tiny_model, folder)
    for path in folder.iterdir():
        if "token" in path.name or "vocab" in path.name:
            path.unlink()
    with pytest.raises(ValueError, match=r"the tokenizer in .*bert has 5 tokens for 30,522 embedding rows"):
        load_model(folder)
