#!/usr/bin/env bash
# The vLLM recipe (issue 12), for a GPU machine WITH network access and vLLM installable; the check that fits
# the lent machine (no vLLM, no network) is bench/gpu_check.sh. <= 8 minutes on one GPU. From the repository root:
#     bash bench/gpu_check_vllm.sh [PYTHON]
# 1. exits with a clear message when there is no CUDA GPU;
# 2. installs vLLM into its own virtual environment (never into the project's), unless `vllm` is importable;
# 3. serves the demo arms (embedded base + the two LoRA adapters) with `vllm serve` as
#    `extes serve --vllm-command` prints it (local weights, so no hub access is needed);
# 4. runs bench/load.py with 50 participants against it and prints tokens/s and latency percentiles;
# 5. runs the local engine's bench/generation.py on CUDA in bf16.
set -u
PY="${1:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
DEADLINE=$((SECONDS + 470))
left() { echo $((DEADLINE - SECONDS)); }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing or finds none); nothing to check. Run this on a GPU machine."
  exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: a GPU is present but this torch ($PY) has no CUDA; the vLLM part still runs, the local-engine part is skipped."
  LOCAL_CUDA=0
else
  LOCAL_CUDA=1
fi
nvidia-smi -L

WORK="$(mktemp -d /tmp/extes-gpu-check.XXXXXX)"
trap 'kill $VLLM_PID 2>/dev/null; wait $VLLM_PID 2>/dev/null' EXIT
VLLM_PID=""

# --- vLLM in its own venv --------------------------------------------------------------------------------
VPY="$(command -v python3)"
if ! "$VPY" -c "import vllm" 2>/dev/null; then
  echo "== installing vLLM into $WORK/vllm-venv (timeout 240 s)"
  python3 -m venv "$WORK/vllm-venv" && VPY="$WORK/vllm-venv/bin/python"
  if ! timeout 240 "$VPY" -m pip install -q vllm; then
    echo "gpu_check: could not install vLLM (no package index reachable?); skipping the vLLM part."
    VPY=""
  fi
fi

PORT=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
if [ -n "$VPY" ]; then
  echo "== vllm serve (the command extes serve --vllm-command prints, with local weights)"
  CMD=$("$PY" -m extes.cli serve --vllm-command eval_protocol/default.yaml --port "$PORT" --vllm-local-weights \
        --vllm-arms-out "$WORK/arms.yaml" | grep '^vllm serve')
  echo "$CMD"
  # run it with the venv's vllm
  VLLM_BIN="$(dirname "$VPY")/vllm"; [ -x "$VLLM_BIN" ] || VLLM_BIN=vllm
  ${CMD/vllm serve/$VLLM_BIN serve} --gpu-memory-utilization 0.5 >"$WORK/vllm.log" 2>&1 &
  VLLM_PID=$!
  for _ in $(seq 1 180); do
    curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1 && break
    kill -0 $VLLM_PID 2>/dev/null || break
    sleep 1
  done
  if curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1; then
    "$PY" - "$WORK" <<'PYEOF'
import sys, yaml, pathlib
work = pathlib.Path(sys.argv[1])
proto = yaml.safe_load(open("eval_protocol/default.yaml"))
proto["arms"] = yaml.safe_load((work / "arms.yaml").read_text())["arms"]
(work / "protocol.yaml").write_text(yaml.safe_dump(proto, sort_keys=False))
PYEOF
    echo "== bench/load.py: 50 participants against vLLM (time left $(left) s)"
    timeout $(( $(left) > 300 ? 240 : $(left) / 2 )) "$PY" bench/load.py --participants 50 --turns 3 \
      --protocol "$WORK/protocol.yaml" || echo "gpu_check: load benchmark failed or timed out (see above)"
  else
    echo "gpu_check: vLLM did not come up; last lines of its log:"; tail -20 "$WORK/vllm.log"
  fi
  kill $VLLM_PID 2>/dev/null; wait $VLLM_PID 2>/dev/null; VLLM_PID=""
fi

# --- the local engine on CUDA in bf16 ---------------------------------------------------------------------
if [ "$LOCAL_CUDA" = 1 ] && [ "$(left)" -gt 60 ]; then
  echo "== bench/generation.py on CUDA, bf16 (time left $(left) s)"
  timeout $(( $(left) - 10 )) "$PY" bench/generation.py --device cuda --dtype bfloat16 --no-rss --rounds 3 \
    || echo "gpu_check: generation benchmark failed or timed out"
fi
echo "gpu_check: done in $SECONDS s"
