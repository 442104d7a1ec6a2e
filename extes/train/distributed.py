"""Training on several processes through `accelerate`: `extes train` runs unchanged under
`accelerate launch` or `torchrun`, which set WORLD_SIZE/RANK/LOCAL_RANK for each process.

With one process (a plain `extes train`) nothing here touches accelerate: `Dist()` is a no-op.
With several, `accelerate.Accelerator` sets up the process group (NCCL on GPUs, gloo on CPUs) and wraps
the loss module in DDP, or in FSDP when the launch asks for it (`accelerate launch --use_fsdp`, for full
fine-tunes too large for one GPU's memory with their optimizer state). The loop keeps its own batching:
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

    @property
    def active(self) -> bool:
        return self.processes > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def fsdp(self) -> bool:
        if not self.active:
            return False
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.FSDP

    def barrier(self) -> None:
        if self.active:
            self.accelerator.wait_for_everyone()

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
        """DDP (or FSDP) around the module whose forward computes the loss."""
        return self.accelerator.prepare_model(module) if self.active else module

    def prepare_optimizer(self, optimizer):
        """FSDP needs accelerate's optimizer wrapper (its parameters were flattened); DDP does not."""
        return self.accelerator.prepare_optimizer(optimizer) if self.fsdp else optimizer

    def no_sync(self, module: torch.nn.Module, skip: bool):
        """Skip the gradient all-reduce for a micro-batch that is not the step's last."""
        if self.active and skip:
            return self.accelerator.no_sync(module)
        return contextlib.nullcontext()

    def clip_grad_norm(self, module: torch.nn.Module, params: list, max_norm: float) -> None:
        if self.fsdp:
            self.accelerator.clip_grad_norm_(module.parameters(), max_norm)
        else:
            torch.nn.utils.clip_grad_norm_(params, max_norm)

    def full_state(self, wrapped: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Under FSDP, the whole model's state gathered (a collective: every process calls it)."""
        return self.accelerator.get_state_dict(wrapped) if self.fsdp else None


def init(device_name: str = "auto") -> tuple[Dist, torch.device]:
    """This process's Dist and device. One process: `device_name` as given ('auto' = CUDA when there is
    one). Several: accelerate's device for this rank (cuda:LOCAL_RANK, or the CPU with gloo)."""
    from extes.train.loop import pick_device

    if launched_processes() <= 1:
        return Dist(), pick_device(device_name)
    from accelerate import Accelerator

    cpu = device_name == "cpu" or (device_name == "auto" and not torch.cuda.is_available())
    # mixed_precision stays "no": the loop runs its own autocast (bf16 on GPUs), as with one process
    accelerator = Accelerator(cpu=cpu, mixed_precision="no")
    return Dist(processes=accelerator.num_processes, rank=accelerator.process_index,
                accelerator=accelerator), accelerator.device
