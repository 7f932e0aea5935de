#!/usr/bin/env bash
# The GPU measurements issues #17 and #18 wait for, on a one-GPU machine (an H100 or H200 with PyTorch installed;
# nothing is downloaded there), in phases that each end within their own limit:
#   tests      tests/test_gpu.py, at most 150 s: the kernels, blocks streamed from pinned memory, vram's count against
#              the allocator's peak, both bench runs on small configs -- what a CPU cannot check, before the 18B runs
#   suite      bench --gpu --suite, at most 420 s: docs/GPU.md and docs/results/gpu-18b.json
#   low-vram   bench --gpu --low-vram 24 16, at most 555 s (4 cases of 1-2 min each): docs/GPU.md's section "On a 24 GB
#              card" and docs/results/gpu-low-vram.json
#   all        the three in turn (about 19 min: a machine without a 600 s limit)
# So one 600 s device command holds `tests suite` (no phase named: these two) or `low-vram`, not `tests low-vram`:
#   LIVEACT_COMMIT=$(git rev-parse --short HEAD) bash scripts/gpu-checks.sh tests suite
#   LIVEACT_COMMIT=$(git rev-parse --short HEAD) bash scripts/gpu-checks.sh low-vram
# Each phase copies what it wrote (and the tests their log) to $OUT when that is set. Both bench runs write docs/GPU.md,
# each keeping the other's part: copy a phase's docs/GPU.md back into the tree before the next one runs.
#
# Beforehand, where pip can reach PyPI, fetch the pure-Python wheels liveact needs beyond such a machine's image
# (diffusers is pinned in requirements.txt; av/moviepy for tests/test_gpu.py's pipeline tests and --low-vram's options):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     diffusers==0.42.1 ftfy wcwidth av moviepy decorator imageio imageio-ffmpeg proglog python-dotenv
# and carry .whl (listed in .git/info/exclude) with the run.
set -uo pipefail
phases=("$@")
[ $# -eq 0 ] && phases=(tests suite)
[ "${phases[*]}" = all ] && phases=(tests suite low-vram)
for phase in "${phases[@]}"; do
    case "$phase" in tests|suite|low-vram) ;; *) echo "unknown phase $phase: tests, suite, low-vram or all" >&2; exit 2;; esac
done
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
out="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
for phase in "${phases[@]}"; do
    case "$phase" in
    tests)
        timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/test_gpu.log" ;;
    suite)  # every variant within the budget, the page and JSON rewritten after each one
        timeout -s INT 420 python3 -m liveact bench --gpu --suite --budget-s 380 --json docs/results/gpu-18b.json \
            --markdown docs/GPU.md
        cp docs/GPU.md docs/results/gpu-18b.json "$out"/ 2>/dev/null ;;
    low-vram)  # each card and size within the budget, the section and JSON rewritten after each one
        timeout -s INT -k 15 540 python3 -m liveact bench --gpu --low-vram 24 16 --budget-s 460 \
            --json docs/results/gpu-low-vram.json --markdown docs/GPU.md
        cp docs/GPU.md docs/results/gpu-low-vram.json "$out"/ 2>/dev/null ;;
    esac
done
