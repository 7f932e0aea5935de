"""The Space bundle builds and validates offline, its storage tier is checked against the 18B model's files
(the Hub mocked at the HTTP boundary), it keeps the Hub cache on persistent storage; the app says in one
sentence when the 18B model cannot run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import ROOT

GB = 10**9
# the Hub's file listings (model_info with files_metadata): path -> size
HUB_FILES = {
    "Soul-AILab/LiveAct": {"diffusion_pytorch_model-00001-of-00002.safetensors": 30 * GB,
                           "diffusion_pytorch_model-00002-of-00002.safetensors": 8 * GB,
                           "Wan2.1_VAE.pth": GB // 2, "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth": 5 * GB,
                           "models_t5_umt5-xxl-enc-bf16.pth": 11 * GB, "google/umt5-xxl/spiece.model": 5 * 10**6,
                           "config.json": 10**3},
    "TencentGameMate/chinese-wav2vec2-base": {"config.json": 2 * 10**3, "preprocessor_config.json": 10**3,
                                              "pytorch_model.bin": 4 * GB // 10, ".gitattributes": 10**3,
                                              "chinese-wav2vec2-base-fairseq-ckpt.pt": GB},  # not downloaded
}
EXCLUDED = (".gitattributes", "chinese-wav2vec2-base-fairseq-ckpt.pt")


def load_deploy():
    sys.path.insert(0, str(ROOT / "spaces"))
    try:
        import deploy
    finally:
        sys.path.pop(0)
    return deploy


@pytest.fixture
def hub():
    """huggingface_hub's HTTP client answering model_info(repo, files_metadata=True) from HUB_FILES."""
    import huggingface_hub
    from huggingface_hub.utils import httpx
    from huggingface_hub.utils._http import default_client_factory

    def answer(request):
        repo = request.url.path.removeprefix("/api/models/")
        if request.method != "GET" or repo not in HUB_FILES or request.url.params.get("blobs") != "true":
            return httpx.Response(404, json={"error": f"unexpected {request.method} {request.url}"})
        siblings = [{"rfilename": name, "size": size} for name, size in HUB_FILES[repo].items()]
        return httpx.Response(200, json={"id": repo, "siblings": siblings})

    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(answer)))
    yield
    huggingface_hub.set_client_factory(default_client_factory)


def test_deploy_dry_run_builds_and_validates_the_bundle(tmp_path):
    out = tmp_path / "space"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # as in CI: the storage check is skipped, the build passes
    result = subprocess.run([sys.executable, "spaces/deploy.py", "--dry-run", "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "bundle ok" in result.stdout
    skipped = [line for line in result.stdout.splitlines() if line.startswith("storage check skipped")]
    assert len(skipped) == 1 and "OfflineModeIsEnabled" in skipped[0], result.stdout
    for name in ("app.py", "README.md", "requirements.txt", "packages.txt", "liveact/app.py", "liveact/weights/tiny"):
        assert (out / name).exists(), name
    assert "espeak-ng" in (out / "packages.txt").read_text()


def test_a_broken_bundle_is_reported(tmp_path, hub):
    deploy = load_deploy()
    folder = deploy.build(tmp_path / "space")
    readme = folder / "README.md"
    readme.write_text(readme.read_text().replace("suggested_hardware: rtx-pro-6000x2", "suggested_hardware: h100x9")
                      .replace("suggested_storage: medium", "suggested_storage: small"))
    (folder / "packages.txt").unlink()
    requirements = folder / "requirements.txt"
    requirements.write_text("".join(line for line in requirements.read_text().splitlines(True) if not line.startswith("ftfy")))
    problems = deploy.validate(folder)
    assert "packages.txt is missing" in problems
    assert "the Space's requirements.txt lacks liveact's runtime requirements ftfy" in problems
    assert any("h100x9" in problem for problem in problems)
    assert any(problem.startswith("suggested_storage small (20 GB) is too small") for problem in problems)


def test_download_bytes_counts_only_the_files_the_preset_downloads(hub):
    from liveact.hub import PRESETS, download_bytes

    counted = sum(sum(files.values()) for files in HUB_FILES.values())
    counted -= sum(HUB_FILES["TencentGameMate/chinese-wav2vec2-base"][name] for name in EXCLUDED)
    assert download_bytes(PRESETS["liveact-18b"]) == counted  # ~55 GB; the 1 GB fairseq checkpoint is not in it


def test_the_storage_tier_must_hold_the_18b_files(hub, capsys):
    deploy = load_deploy()
    (small,) = deploy.storage_problems("small", "liveact-18b")
    assert "20 GB" in small and "about 60 GB" in small and "the tier that fits is medium" in small  # 54.9 GB + 10%
    assert deploy.storage_problems("medium", "liveact-18b") == []
    assert "storage: liveact-18b needs about 60 GB with 10% headroom; medium holds 150 GB" in capsys.readouterr().out
    assert deploy.storage_problems("medium", "tiny") == []  # shipped in the bundle: nothing downloads
    assert "not a Space storage tier" in deploy.storage_problems("huge", "liveact-18b")[0]


def test_the_space_keeps_the_hub_cache_on_persistent_storage(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("space_app", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)  # the entry's setup only: liveact.app is imported under __main__
    monkeypatch.delenv("HF_HOME", raising=False)
    app.use_persistent_storage(tmp_path / "missing")
    assert "HF_HOME" not in os.environ  # no persistent storage: huggingface_hub's default
    app.use_persistent_storage(tmp_path)
    assert os.environ["HF_HOME"] == str(tmp_path / ".huggingface")
    monkeypatch.setenv("HF_HOME", "/somewhere/else")
    app.use_persistent_storage(tmp_path)
    assert os.environ["HF_HOME"] == "/somewhere/else"


def test_the_18b_model_without_gpus_falls_back_to_tiny_with_one_sentence():
    from liveact.app import load_model

    pipe, pool, notice = load_model("liveact-18b")
    assert pipe.name == "tiny" and pool is None
    assert "liveact-18b is not available here" in notice and "GPU" in notice
