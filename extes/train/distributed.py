"""Training on several processes through `accelerate`: `extes train` runs unchanged under
`accelerate launch` or `torchrun`, which set WORLD_SIZE/RANK/LOCAL_RANK for each process.

With one process (a plain `extes train`) nothing here touches accelerate: `Dist()` is a no-op.
With several, `accelerate.Accelerator` sets up the process group (NCCL on GPUs, gloo on CPUs) and wraps
the loss module in DDP. With `fsdp: true` (full fine-tunes, method clm, whose weights, gradients and
AdamW state are too large for one GPU) the model is sharded instead with torch's FSDP2 (`fully_shard`
on each transformer block, then on the whole), which runs on gloo too, so the CPU tests cover it;
checkpoints then hold the gathered (full) weights and optimizer state, written by rank 0, and a resume
shards them again. The loop keeps its own batching:
every process builds the same length-grouped global batches (`batch_size` x processes examples) and
takes its own slice of each, so n processes with `batch_size` B learn what one process with n x B learns.
Only rank 0 writes files; the others wait at a barrier.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch


def launched_processes() -> int:
    """How many processes the launcher started (1 without `accelerate launch`/`torchrun`)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


@dataclass
class Dist:
    """This process's place in a run; the default is a run of one process."""

    processes: int = 1
    rank: int = 0
    accelerator: Any = None  # accelerate.Accelerator when processes > 1
    shard: bool = False  # FSDP (fully_shard) instead of DDP

    @property
    def active(self) -> bool:
        return self.processes > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def fsdp(self) -> bool:
        return self.active and self.shard

    def barrier(self) -> None:
        if self.active:
            self.accelerator.wait_for_everyone()

    def close(self) -> None:
        """Tear the process group down before the interpreter exits. Left to exit, gloo's threads can
        be destroyed while still joinable, and the process aborts ("terminate called without an active
        exception") after a run that succeeded. (accelerate skips a group that is already gone.)"""
        if self.active:
            self.accelerator.end_training()

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the processes (float64)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """`obj` from every process, in rank order (on every process)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.processes
        torch.distributed.all_gather_object(out, obj)
        return out

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """DDP, or FSDP (each transformer block its own shard unit), around the module whose forward
        computes the loss; the module itself with one process."""
        if not self.active:
            return module
        if not self.fsdp:
            return self.accelerator.prepare_model(module)
        from torch.distributed.fsdp import fully_shard

        blocks = set(getattr(module.model, "_no_split_modules", None) or [])
        for sub in module.modules():
            if type(sub).__name__ in blocks:
                fully_shard(sub)
        fully_shard(module)
        return module

    @contextlib.contextmanager
    def no_sync(self, module: torch.nn.Module, skip: bool):
        """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) for a micro-batch that is not the
        step's last."""
        if not (self.active and skip):
            yield
        elif self.fsdp:
            module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                module.set_requires_gradient_sync(True)
        else:
            with module.no_sync():
                yield

    # -- FSDP: full (gathered) state for checkpoints; collectives, so every process calls them ---------
    @staticmethod
    def _options(**kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **kw)

    def full_state(self, wrapped: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The whole model's weights, on rank 0 (the other processes get {})."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(wrapped, options=self._options(cpu_offload=True))

    def load_full_state(self, wrapped: torch.nn.Module, state: dict[str, torch.Tensor], from_rank0: bool) -> None:
        """Shard full weights back: each process's own copy, or rank 0's sent to all (`from_rank0`)."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(wrapped, state, options=self._options(broadcast_from_rank0=from_rank0))

    def full_optimizer_state(self, wrapped: torch.nn.Module, optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(wrapped, optimizer, options=self._options(cpu_offload=True))

    def load_full_optimizer_state(self, wrapped: torch.nn.Module, optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(wrapped, optimizer, state, options=self._options())


def init(device_name: str = "auto", fsdp: bool = False) -> tuple[Dist, torch.device]:
    """This process's Dist and device. One process: `device_name` as given ('auto' = CUDA when there is
    one; `fsdp` changes nothing). Several: accelerate's device for this rank (cuda:LOCAL_RANK, or the CPU
    with gloo), and FSDP instead of DDP when `fsdp`."""
    from extes.train.loop import pick_device  # lazy: extes.train.loop imports this module

    if launched_processes() <= 1:
        return Dist(), pick_device(device_name)
    from accelerate import Accelerator

    cpu = device_name == "cpu" or (device_name == "auto" and not torch.cuda.is_available())
    # mixed_precision stays "no": the loop runs its own autocast (bf16 on GPUs), as with one process
    accelerator = Accelerator(cpu=cpu, mixed_precision="no")
    return Dist(processes=accelerator.num_processes, rank=accelerator.process_index, accelerator=accelerator,
                shard=fsdp), accelerator.device
