#!/usr/bin/env bash
# The GPU check on the GPU machine, which reaches no registry: install the kit's wheels (.whl/, made here by
# `make gpu-kit` and carried with the call) into a target dir, then run gpu/check.py with use_gpu=True.
# Results go to $OUT (the device tool's folder that comes back), else to build/gpu-check.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-build/gpu-check}"
site="${GPU_CHECK_SITE:-/tmp/art_gpu_site}"
mkdir -p "$out"
if ! compgen -G ".whl/*.whl" > /dev/null; then
    echo "no wheels in .whl/: run 'make gpu-kit' here first and name .whl in the call's carry" >&2
    exit 2
fi
start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
echo "installed $(ls .whl/*.whl | wc -l) wheels into $site in $(( $(date +%s) - start )) s"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH" PYTHONUNBUFFERED=1
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
exec python3 gpu/check.py --use-gpu --out "$out" "$@"
