"""The Python examples of the README and of docs/ run as written."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    import contextlib

    from rmtkd.adapters.base import ADAPTERS
    from rmtkd.sites.base import KINDS
    from rmtkd_kernels.backends.chooser import forget_decisions
    from rmtkd_kernels.backends.registry import BACKENDS

    monkeypatch.chdir(tmp_path)  # examples may write files
    scopes = contextlib.ExitStack()
    for registry in (ADAPTERS, KINDS, BACKENDS):
        scopes.enter_context(registry.scoped())  # what examples register is forgotten after
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    if page.name == "README.md":
        assert blocks, "README has no python example"
    try:
        for block in blocks:
            exec(compile(block, str(page), "exec"), {"__name__": "readme_example"})
    finally:
        scopes.close()
        forget_decisions()
