"""Deploy the web demo to a Hugging Face Space.

    python spaces/deploy.py --dry-run [--out build/space]     build the exact bundle into a folder and validate it
                                                              (front matter, files, the app imports; the storage
                                                              tier against the model's files when the Hub answers)
    python spaces/deploy.py --repo YOU/liveact [--hardware rtx-pro-6000x2] [--model liveact-18b]
                                                              create or update the Space and upload the bundle

The bundle is what the Space runs: app.py, the liveact package (with the tiny model's weights), the Space's
README.md (its front matter configures the Space), requirements.txt (CUDA torch) and packages.txt (Debian).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
# bundle path -> source in this repository
BUNDLE = {"app.py": ROOT / "app.py", "liveact": ROOT / "liveact", "LICENSE": ROOT / "LICENSE",
          "README.md": HERE / "README.md", "requirements.txt": HERE / "requirements.txt",
          "packages.txt": HERE / "packages.txt"}
REQUIRED_FRONT_MATTER = ("title", "sdk", "sdk_version", "app_file", "python_version", "suggested_hardware",
                         "suggested_storage")
# persistent storage tiers (huggingface_hub.SpaceStorage) -> capacity in GB,
# per https://huggingface.co/docs/hub/spaces-storage
STORAGE_GB = {"small": 20, "medium": 150, "large": 1000}
# a tenth more than the files: HF_HOME holds more than the snapshots (hf-xet's folder, HF_HOME/xet), and an
# updated repository's changed files download beside the old revision's, which stay until the cache is pruned
HEADROOM = 1.1


def build(out: Path) -> Path:
    """Copy the bundle into `out` (emptied first)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name, source in BUNDLE.items():
        if source.is_dir():
            shutil.copytree(source, out / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "checkpoint.pt"))
        else:
            shutil.copy2(source, out / name)
    return out


def front_matter(readme: Path) -> dict:
    import yaml

    text = readme.read_text()
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        raise ValueError(f"{readme} does not start with a '---' front matter block")
    return yaml.safe_load(text[4:text.index("\n---\n", 4)])


def storage_problems(tier: str, model: str) -> list[str]:
    """The storage tier against the bytes `model` downloads; skipped, in one printed line, when the Hub cannot say."""
    from liveact.hub import PRESETS, LiveActError, download_bytes

    if tier not in STORAGE_GB:
        return [f"suggested_storage {tier!r} is not a Space storage tier ({', '.join(STORAGE_GB)})"]
    preset = PRESETS.get(model)
    if preset is None or preset.repo is None:
        return []  # tiny ships in the bundle, and a local folder is not on the Space: nothing to download
    try:
        needed = download_bytes(preset) * HEADROOM / 1e9
    except LiveActError as error:
        print(f"storage check skipped: {error}")
        return []
    print(f"storage: {model} needs about {needed:.0f} GB with {HEADROOM - 1:.0%} headroom; {tier} holds "
          f"{STORAGE_GB[tier]} GB")
    if needed <= STORAGE_GB[tier]:
        return []
    fits = next((name for name, capacity in STORAGE_GB.items() if capacity >= needed), "none")
    return [f"suggested_storage {tier} ({STORAGE_GB[tier]} GB) is too small for {model}: its files need about "
            f"{needed:.0f} GB with {HEADROOM - 1:.0%} headroom; the tier that fits is {fits}"]


def requirement_names(requirements: Path) -> set[str]:
    """The package names a requirements file installs (versions, options and comments left out)."""
    names = set()
    for line in requirements.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[; ]", line)[0].lower().replace("_", "-"))
    return names


def validate(folder: Path, model: str = "liveact-18b") -> list[str]:
    """Everything that would make the Space fail to build or start, or run out of disk for `model`, as
    sentences (empty: all good)."""
    import gradio
    from huggingface_hub import SpaceHardware

    problems = [f"{name} is missing" for name in BUNDLE if not (folder / name).exists()]
    try:
        meta = front_matter(folder / "README.md")
    except (OSError, ValueError) as error:
        return problems + [str(error)]
    problems += [f"front matter has no {key}" for key in REQUIRED_FRONT_MATTER if key not in meta]
    if meta.get("sdk") != "gradio":
        problems.append(f"sdk is {meta.get('sdk')!r}, not 'gradio'")
    if str(meta.get("sdk_version")) != gradio.__version__:
        problems.append(f"sdk_version {meta.get('sdk_version')} differs from the gradio this was tested with "
                        f"({gradio.__version__})")
    if f"gradio=={meta.get('sdk_version')}" not in (folder / "requirements.txt").read_text():
        problems.append("requirements.txt does not pin gradio to the sdk_version")
    missing = sorted(requirement_names(ROOT / "requirements.txt") - requirement_names(folder / "requirements.txt"))
    if missing:
        problems.append(f"the Space's requirements.txt lacks liveact's runtime requirements {', '.join(missing)}")
    if meta.get("suggested_hardware") not in {h.value for h in SpaceHardware}:
        problems.append(f"suggested_hardware {meta.get('suggested_hardware')!r} is not a Space hardware flavour")
    if "suggested_storage" in meta:
        problems += storage_problems(str(meta["suggested_storage"]), model)
    if not (folder / str(meta.get("app_file", "app.py"))).is_file():
        problems.append(f"app_file {meta.get('app_file')} is not in the bundle")
    if not list((folder / "liveact" / "weights" / "tiny").glob("*/*.safetensors")):
        problems.append("the tiny model's weights are not in the bundle")
    check = ("import app, liveact, liveact.app, pathlib; "
             "assert pathlib.Path(liveact.__file__).resolve().is_relative_to(pathlib.Path.cwd().resolve()), liveact.__file__")
    imported = subprocess.run([sys.executable, "-c", check], cwd=folder, capture_output=True, text=True)
    if imported.returncode:
        problems.append(f"the app does not import from the bundle: {imported.stderr.strip().splitlines()[-1]}")
    return problems


def deploy(folder: Path, repo: str, hardware: str | None, model: str, private: bool) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo, repo_type="space", space_sdk="gradio", exist_ok=True, private=private,
                          space_hardware=hardware, space_variables=[{"key": "LIVEACT_MODEL", "value": model}])
    api.upload_folder(repo_id=repo, repo_type="space", folder_path=folder, commit_message="Deploy liveact")
    return str(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="build and validate the bundle only (no upload; the storage check asks the Hub for sizes)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "space", help="where the bundle is built")
    parser.add_argument("--repo", help="the Space, e.g. you/liveact (required without --dry-run)")
    parser.add_argument("--hardware", help="a Space hardware flavour, requested when the Space is created (default: "
                                           "Hugging Face's cpu-basic; the front matter only suggests one)")
    parser.add_argument("--model", default="liveact-18b",
                        help="LIVEACT_MODEL for a Space this creates (tiny runs on CPU); the storage check's model")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    if not args.dry_run and not args.repo:
        parser.error("--repo is required unless --dry-run")
    folder = build(args.out)
    problems = validate(folder, args.model)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        return 1
    files = sum(1 for path in folder.rglob("*") if path.is_file())
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    print(f"bundle ok: {folder} ({files} files, {size / 2**20:.1f} MiB)")
    if args.dry_run:
        return 0
    print(f"deployed: {deploy(folder, args.repo, args.hardware, args.model, args.private)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
