#!/usr/bin/env bash
# The GPU measurements issues #17 and #18 wait for, as one command on a one-GPU machine (an H100 or H200 with
# PyTorch installed; nothing is downloaded there). It writes docs/GPU.md and docs/results/gpu-18b.json, and
# copies them and the test log to $OUT when that is set.
#
# Beforehand, where pip can reach PyPI, fetch the pure-Python wheels liveact needs beyond such a machine's image
# (diffusers is pinned in requirements.txt; av/moviepy only for tests/test_gpu.py's pipeline tests):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     diffusers==0.42.1 ftfy wcwidth av moviepy decorator imageio imageio-ffmpeg proglog python-dotenv
# and carry .whl (listed in .git/info/exclude) with the run.
#
#   LIVEACT_COMMIT=$(git rev-parse --short HEAD) bash scripts/gpu-checks.sh
set -uo pipefail
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
out="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
# the GPU tests first (1-2 min; at most 150 s, so the whole script ends inside one 600 s device command): fp8 GEMM through _scaled_mm, each attention kernel, the overlapped decode
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/test_gpu.log"
# the suite: every variant within its own budget, the page and JSON rewritten after each one
timeout -s INT 420 python3 -m liveact bench --gpu --suite --budget-s 380 --json docs/results/gpu-18b.json --markdown docs/GPU.md
cp docs/GPU.md docs/results/gpu-18b.json "$out"/ 2>/dev/null
