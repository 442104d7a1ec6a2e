"""Test scaffolding: `extes <argv...>` in this process, crashing at the N-th optimizer step (N = argv[1]).

    python tests/train_crash.py N train --config run.yaml      (N = 0: no crash)

Launched under torchrun by tests/test_train_distributed.py to interrupt a multi-process run after a
checkpoint, the way a killed job would be; every process crashes at the same step. After `extes`
returns or raises, it says on stderr if the process group was left open: exiting with gloo's threads
alive can abort a process whose run succeeded."""

import sys

import torch

from extes.cli import main

if __name__ == "__main__":
    crash_at = int(sys.argv[1])
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def flaky_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise SystemExit(f"simulated crash at optimizer step {crash_at}")
        return real_step(self, *a, **k)

    torch.optim.AdamW.step = flaky_step
    try:
        code = main(sys.argv[2:])
    finally:
        if torch.distributed.is_initialized():
            print("extes left the process group open", file=sys.stderr)
    sys.exit(code)
