"""Every tutorial notebook runs top to bottom on this CPU within its time budget; a failing cell fails the suite.

`LIVEACT_WRITE_NOTEBOOKS=1 python -m pytest tests/test_notebooks.py` also writes the outputs back into the
notebooks (they are committed with their figures, so they read on GitHub without running).
"""

from __future__ import annotations

import os
import time

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BUDGET_SECONDS = 240


def test_the_four_tutorials_are_there():
    assert [path.stem[:2] for path in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One data cache for the notebooks that train (as on a user's machine: the second reuses the clips)."""
    return os.environ.get("LIVEACT_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_within_budget(path, cache, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("LIVEACT_CACHE", cache)
    notebook = nbformat.read(path, as_version=4)
    began = time.perf_counter()
    NotebookClient(notebook, timeout=BUDGET_SECONDS, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()  # raises on the first failing cell
    seconds = time.perf_counter() - began
    print(f"\n{path.name}: {seconds:.0f} s")
    if os.environ.get("LIVEACT_WRITE_NOTEBOOKS"):
        nbformat.write(notebook, path)
    assert seconds <= BUDGET_SECONDS, f"{path.name} took {seconds:.0f} s (budget {BUDGET_SECONDS} s)"
