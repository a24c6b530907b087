"""The Python examples of the README and of docs/ run as written."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    from rmtkd.adapters import base as adapters
    from rmtkd.sites import base as sites
    from rmtkd_kernels.backends import registry as backends

    monkeypatch.chdir(tmp_path)  # examples may write files
    for module, name in ((adapters, "_ADAPTERS"), (sites, "_KINDS"), (backends, "_REGISTRY")):
        monkeypatch.setattr(module, name, dict(getattr(module, name)))  # what examples register is forgotten after
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    if page.name == "README.md":
        assert blocks, "README has no python example"
    try:
        for block in blocks:
            exec(compile(block, str(page), "exec"), {"__name__": "readme_example"})
    finally:
        backends.forget_decisions()
