#!/usr/bin/env bash
# The GPU check that fits the lent GPU machine (issue 27): <= 8 minutes, no vLLM, no network, no weights
# carried (random weights of LLaMA-7B's and SmolLM2's shapes are built there). From the repository root:
#     bash bench/gpu_check.sh [--out FILE] [--device cuda] [more bench/gpu_check.py options]
#     bash bench/gpu_check.sh --device cpu --dry --out /tmp/check.json     # tiny shapes, any machine
# Writes one JSON file (default gpu_check.json) with every section's figures or error; see bench/gpu_check.py.
# Python: .venv/bin/python when there is one, else python3 (the GPU image's torch). Packages the image lacks
# (pydantic) travel as wheels in .whl/ (carry it; see docs/models.md) and are installed into /tmp/site.
# For labs with vLLM and network access, bench/gpu_check_vllm.sh serves the arms with vLLM instead.
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY="$(command -v python3)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import pydantic" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "gpu_check: could not install the carried wheels in .whl/"; exit 2; }
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "gpu_check: $PY has no pydantic and no .whl/ was carried (see docs/models.md, 'A GPU check that fits')"
    exit 2
  fi
fi
OUT=gpu_check.json
DEVICE=cuda
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [ "$DEVICE" != cpu ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing or finds none). Use --device cpu --dry for the dry run."
    exit 2
  fi
  nvidia-smi -L
fi
# 480 s in all: sections stop starting at --budget-s (default 450 s), the rest is the margin to write the file
timeout 480 "$PY" bench/gpu_check.py --device "$DEVICE" --out "$OUT" ${ARGS[@]+"${ARGS[@]}"}
rc=$?
[ $rc = 124 ] && echo "gpu_check: stopped at 480 s; the figures so far are in $OUT"
exit $rc
