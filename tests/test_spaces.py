"""The Space bundle builds and validates offline; the app says in one sentence when the 18B model cannot run."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_deploy_dry_run_builds_and_validates_the_bundle(tmp_path):
    out = tmp_path / "space"
    result = subprocess.run([sys.executable, "spaces/deploy.py", "--dry-run", "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "bundle ok" in result.stdout
    for name in ("app.py", "README.md", "requirements.txt", "packages.txt", "liveact/app.py", "liveact/weights/tiny"):
        assert (out / name).exists(), name
    assert "espeak-ng" in (out / "packages.txt").read_text()


def test_a_broken_bundle_is_reported(tmp_path):
    sys.path.insert(0, str(ROOT / "spaces"))
    try:
        import deploy
    finally:
        sys.path.pop(0)
    folder = deploy.build(tmp_path / "space")
    readme = folder / "README.md"
    readme.write_text(readme.read_text().replace("suggested_hardware: rtx-pro-6000x2", "suggested_hardware: h100x9"))
    (folder / "packages.txt").unlink()
    problems = deploy.validate(folder)
    assert "packages.txt is missing" in problems
    assert any("h100x9" in problem for problem in problems)


def test_the_18b_model_without_gpus_falls_back_to_tiny_with_one_sentence():
    from liveact.app import load_model

    pipe, pool, notice = load_model("liveact-18b")
    assert pipe.name == "tiny" and pool is None
    assert "liveact-18b is not available here" in notice and "GPU" in notice
