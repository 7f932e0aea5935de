"""The package is light to import and imports nothing its requirements do not provide."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import time

from conftest import ROOT

OWN = {"liveact"}


def requirement_names(file: str = "requirements.txt") -> set[str]:
    names = set()
    for line in (ROOT / file).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[<>=!~\[; ]", line)[0].lower().replace("_", "-"))
    return names


def imported_top_level_modules() -> set[str]:
    modules = set()
    for path in (ROOT / "liveact").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules - OWN


def test_every_import_is_stdlib_or_a_requirement():
    distributions = importlib.metadata.packages_distributions()
    required = requirement_names()
    # imported only when asked for (--attention) or when installed (Kokoro text to speech)
    optional = requirement_names("requirements-gpu.txt") | requirement_names("requirements-tts.txt")
    missing = {}
    for module in imported_top_level_modules():
        if module in sys.stdlib_module_names or module.replace("_", "-") in optional:
            continue
        provided_by = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
        if not provided_by & required:
            missing[module] = sorted(provided_by) or "not installed"
    assert missing == {}, f"imports not covered by requirements.txt: {missing}"


def test_import_is_fast():
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import liveact"], check=True, cwd=ROOT)
    seconds = time.perf_counter() - began
    assert seconds < 3.0, f"import liveact took {seconds:.2f} s"


def test_public_names_resolve():
    import liveact

    for name in liveact.__all__:
        assert getattr(liveact, name).__name__ == name
    assert liveact.load.__module__ == "liveact.pipeline"
