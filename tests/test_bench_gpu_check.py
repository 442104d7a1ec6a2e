"""bench/gpu_check.sh end to end in its dry mode (tiny shapes, CPU), so the GPU check cannot rot while no
GPU is lent: every section runs and its figures land in one JSON file."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--device", "cpu", "--dry", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["dry"] and report["environment"]["device"] == "cpu"
    sections = report["sections"]
    assert list(sections) == ["equality", "tiny", "training"]
    eq = sections["equality"]  # the fast engine against the transformers path: same greedy tokens
    assert eq["replies_equal"] == eq["replies"] == 6 and eq["tokens_agreeing"] == eq["tokens"] > 0
    assert eq["reference"] != eq["candidate"]
    speed = sections["tiny"]
    assert speed["full_length"] and speed["three_vs_one"] > 0
    for n in (20, 64):
        assert speed[f"c{n}"]["tokens_per_s"] > 0
    training = sections["training"]
    for method in ("lora", "adapter", "clm", "qlora"):
        m = training[method]
        if "skipped" in m:
            assert method == "qlora"
            continue
        assert m["ok"] and m["tokens"] > 0 and math.isfinite(m["loss"]) and m["trainable_params"] > 0


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--out", str(tmp_path / "x.json")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and "no NVIDIA GPU" in proc.stdout
