"""The training loop every method shares: AdamW, warmup + cosine decay, gradient accumulation,
validation loss and perplexity, early stopping, checkpoints with exact resume, progress with tokens/s.

Two things keep it fast on a CPU without changing what is learnt:
- batches group examples of similar length and pad only to the longest in the batch;
- the output layer runs only on positions whose next token is supervised (assistant tokens), not on
  the whole context: for a 49k-token vocabulary that is a fifth of the model's compute per token.

Under `accelerate launch`/`torchrun` the same loop runs in every process (extes.train.distributed): the
loss is computed by `SupervisedLoss`, the module DDP/FSDP wraps, every process takes its slice of the
same global batches, and each scales its loss so that the averaged gradients equal one process's over the
whole batch. Validation is split over the processes and summed; only rank 0 writes checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from extes.train.config import FIELDS as CONFIG_FIELDS
from extes.train.config import TrainConfig
from extes.train.distributed import Dist
from extes.train.formatting import IGNORE, Encoded, collate, length_grouped_batches, padding_waste

# Model types whose causal-LM head is exactly `lm_head(backbone(...).last_hidden_state)`; others take
# the plain forward (full logits) path.
FAST_HEAD_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "smollm3", "olmo", "olmo2", "phi3"}


# ----------------------------------------------------------------------------------------------------------
# Devices and precision


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 autocast on a GPU that supports it ('auto' or 'bf16'); fp16 when asked; fp32 on CPU."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision in ("auto", "bf16"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else (None if precision == "auto" else torch.bfloat16)
    return torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------
# Loss


def _unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _fast_parts(model):
    inner = _unwrap(model)
    if getattr(inner.config, "model_type", None) not in FAST_HEAD_TYPES:
        return None
    backbone = getattr(inner, inner.base_model_prefix, None)
    head = inner.get_output_embeddings()
    if backbone is None or head is None or getattr(inner.config, "final_logit_softcapping", None):
        return None
    return backbone, head


def token_loss(model, batch: dict, full_logits: bool = False) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over supervised positions, and their count."""
    labels = batch["labels"]
    targets = labels[:, 1:]
    keep = targets != IGNORE
    n = int(keep.sum())
    parts = None if full_logits else _fast_parts(model)
    if parts is None:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        logits = out.logits[:, :-1][keep]
    else:
        backbone, head = parts
        hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          use_cache=False).last_hidden_state
        logits = head(hidden[:, :-1][keep])
    loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    return loss, n


class SupervisedLoss(torch.nn.Module):
    """`token_loss` as a module, so that DDP/FSDP wrap the forward that really runs (the fast path calls
    the backbone and the head directly, which a wrapper around the bare model would never see)."""

    def __init__(self, model, full_logits: bool = False):
        super().__init__()
        self.model = model
        self.full_logits = full_logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        return token_loss(self.model, batch, full_logits=self.full_logits)[0]


def _supervised(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


@torch.no_grad()
def evaluate(model, examples: Sequence[Encoded], batch_size: int, pad_id: int, device: torch.device,
             amp: torch.dtype | None = None, dist: Dist | None = None,
             loss_module: torch.nn.Module | None = None) -> dict:
    """Token-level loss and perplexity on supervised tokens. With several processes each takes every
    n-th batch (the same number of forwards on each: a process short of one repeats a batch and drops
    its result) and the sums are added up."""
    dist = dist or Dist()
    loss_module = loss_module or SupervisedLoss(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    lengths = [len(e) for e in examples]
    batches = length_grouped_batches(lengths, batch_size, shuffle=False)
    rounds = math.ceil(len(batches) / dist.processes)
    for r in range(rounds):
        k = r * dist.processes + dist.rank
        mine = k < len(batches)
        b = batches[k] if mine else batches[0]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in b], pad_id).items()}
        with _autocast(device, amp):
            loss = loss_module(**batch)
        if mine:
            total += float(loss)
            count += _supervised(batch)
    total, count = dist.sum(total, count)
    count = int(count)
    if was_training:
        model.train()
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count}


# ----------------------------------------------------------------------------------------------------------
# The loop


# The defaults of every setting the YAML config shares with the loop come from `TrainConfig`: one source.
_CONFIG = TrainConfig()


@dataclass
class LoopOptions:
    epochs: float = _CONFIG.epochs
    max_steps: int | None = _CONFIG.max_steps
    lr: float = _CONFIG.learning_rate  # the default method's (lora) learning rate
    batch_size: int = _CONFIG.batch_size
    grad_accum: int = _CONFIG.grad_accum
    warmup_ratio: float = _CONFIG.warmup_ratio
    weight_decay: float = _CONFIG.weight_decay
    max_grad_norm: float = _CONFIG.max_grad_norm
    seed: int = _CONFIG.seed
    group_by_length: bool = _CONFIG.group_by_length
    pad_to: int | None = None  # pad every batch to this length (the naive baseline in bench/)
    full_logits: bool = False  # compute logits on every position (the naive baseline in bench/)
    eval_every: int | None = _CONFIG.eval_every
    eval_at_start: bool = True
    early_stopping: int | None = _CONFIG.early_stopping
    keep_best: bool = _CONFIG.keep_best
    save_every: int | None = _CONFIG.save_every
    checkpoint_dir: Path | None = None
    resume: bool = _CONFIG.resume
    progress: bool = _CONFIG.progress
    precision: str = _CONFIG.precision
    keep_checkpoints: int = 2

    @classmethod
    def from_config(cls, cfg: TrainConfig, **extra: object) -> LoopOptions:
        """The loop's options of a run: every setting the two share taken from ``cfg`` (``lr`` resolved for
        its method), plus ``extra`` (e.g. ``checkpoint_dir``)."""
        shared = {f.name: getattr(cfg, f.name) for f in fields(cls) if f.name in CONFIG_FIELDS}
        return cls(**{**shared, "lr": cfg.learning_rate, **extra})


@dataclass
class LoopResult:
    metrics: dict
    best_state: dict | None = None
    history: list = field(default_factory=list)
    full_state: dict | None = None  # under FSDP: the final weights gathered (rank 0; {} elsewhere)


@dataclass
class TrainState:
    """Where a run stands: counters, evaluations, early-stopping bookkeeping.

    With the trainable weights, the optimizer and the scheduler it is the checkpoint. It holds plain values
    only, so it is saved as JSON beside the tensors (`trainer_state.json`), and the tensors load with
    ``torch.load(..., weights_only=True)``. It is mutable on purpose: the loop advances it every step.
    """

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs done
    micro: int = 0  # micro-batches done in the current epoch
    epoch_loss: float = 0.0  # summed loss and supervised tokens of the current epoch so far (so that an
    epoch_tokens: int = 0  # epoch resumed mid-way reports the same train loss as an uninterrupted one)
    history: list[dict] = field(default_factory=list)  # one row per finished epoch
    evals: list[dict] = field(default_factory=list)  # every validation
    best: dict | None = None  # the best validation so far (the untrained model's is not a candidate)
    bad_evals: int = 0  # validations since the best one
    train_time: float = 0.0
    train_tokens: int = 0
    sup_tokens: int = 0
    padded: int = 0
    base_valid: dict | None = None  # validation of the untrained model
    stopped_early: bool = False
    processes: int = 1  # how many processes wrote it (a resume must use as many: the batches depend on it)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainState:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"checkpoint state has unknown fields {unknown}")
        return cls(**data)


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise ValueError(f"checkpoint does not match the model: unknown parameters {missing[:3]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def count_parameters(model) -> tuple[int, int]:
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        qs = getattr(p, "quant_state", None)  # bitsandbytes 4-bit weights are packed two per byte
        if qs is not None and getattr(qs, "shape", None) is not None:
            n = math.prod(qs.shape)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: tensors in trainer_state.pt (loaded with weights_only=True), the rest in trainer_state.json

TENSORS_FILE = "trainer_state.pt"
STATE_FILE = "trainer_state.json"


@dataclass
class Checkpoint:
    """What a checkpoint folder holds, read back."""

    state: TrainState
    weights: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    best_state: dict[str, torch.Tensor] | None
    torch_rng: torch.Tensor
    rank_rngs: list[torch.Tensor] | None = None  # every process's RNG state, in a multi-process run


def _latest_checkpoint(folder: Path | None) -> Path | None:
    if folder is None or not folder.is_dir():
        return None
    done = sorted(p for p in folder.glob("step-*") if (p / TENSORS_FILE).is_file())
    return done[-1] if done else None


def save_checkpoint(folder: Path, ckpt: Checkpoint, keep: int) -> None:
    """Write `folder` (step-NNNNNNN) atomically: a .tmp folder renamed into place; keep the last `keep`."""
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {"weights": ckpt.weights, "optimizer": ckpt.optimizer, "best_state": ckpt.best_state,
               "torch_rng": ckpt.torch_rng}
    if ckpt.rank_rngs is not None:
        tensors["rank_rngs"] = ckpt.rank_rngs
    torch.save(tensors, tmp / TENSORS_FILE)
    (tmp / STATE_FILE).write_text(json.dumps({"state": ckpt.state.to_json(), "scheduler": ckpt.scheduler}))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    old = sorted(p for p in folder.parent.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for p in old[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(folder: Path) -> Checkpoint:
    """Read a checkpoint; tensors only (weights_only=True), so a checkpoint cannot run code when loaded."""
    saved = torch.load(folder / TENSORS_FILE, map_location="cpu", weights_only=True)
    meta_file = folder / STATE_FILE
    # Checkpoints of earlier versions kept the state and scheduler (plain values) inside the .pt file.
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else saved
    return Checkpoint(state=TrainState.from_json(meta["state"]), weights=saved["weights"],
                      optimizer=saved["optimizer"], scheduler=meta["scheduler"],
                      best_state=saved.get("best_state"), torch_rng=saved["torch_rng"],
                      rank_rngs=saved.get("rank_rngs"))


# ----------------------------------------------------------------------------------------------------------
# The loop


class _Run:
    """One call of `train`: the model, its optimizer and schedule, and the `TrainState` they advance."""

    def __init__(self, model, train_set: Sequence[Encoded], valid_set: Sequence[Encoded], pad_id: int,
                 opts: LoopOptions, device: torch.device, dist: Dist):
        self.model, self.train_set, self.valid_set = model, train_set, valid_set
        self.pad_id, self.opts, self.device, self.dist = pad_id, opts, device, dist
        self.amp = autocast_dtype(device, opts.precision)
        self.lengths = [len(e) for e in train_set]
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("the model has no trainable parameters")
        # wrapped (DDP/FSDP) before the optimizer is built: FSDP replaces the parameters it shards
        self.loss_module = dist.wrap(SupervisedLoss(model, full_logits=opts.full_logits))
        self.params = [p for p in self.loss_module.parameters() if p.requires_grad]
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=opts.lr, betas=(0.9, 0.999), eps=1e-8,
        )
        n_batches = math.ceil(len(train_set) / (opts.batch_size * dist.processes))
        self.steps_per_epoch = max(1, math.ceil(n_batches / opts.grad_accum))
        self.total_steps = opts.max_steps or max(1, math.ceil(self.steps_per_epoch * opts.epochs))
        self.n_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        warmup = int(round(opts.warmup_ratio * self.total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           cosine_with_warmup(self.total_steps, warmup))
        self.state = TrainState(processes=dist.processes)
        self.best_state: dict | None = None

    # -- pieces ------------------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches (`batch_size` x processes examples), the same in every process."""
        opts = self.opts
        size = opts.batch_size * self.dist.processes
        if opts.group_by_length and opts.pad_to is None:
            return length_grouped_batches(self.lengths, size, seed=opts.seed + epoch)
        order = list(range(len(self.train_set)))
        random.Random(opts.seed + epoch).shuffle(order)
        return [order[i:i + size] for i in range(0, len(order), size)]

    def slices(self, batch: list[int]) -> list[list[int]]:
        """A global batch cut into one slice per process, in rank order (a slice may be empty)."""
        n = self.dist.processes
        per = math.ceil(len(batch) / n)
        return [batch[r * per:(r + 1) * per] for r in range(n)]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable weights by the bare model's names; under FSDP (a full fine-tune: everything
        trains) the whole state gathered, tied weights under each name, on rank 0 only."""
        if not self.dist.fsdp:
            return trainable_state(self.model)
        return {n.removeprefix("model."): t for n, t in self.dist.full_state(self.loss_module).items()}

    def load_weights(self, state: dict[str, torch.Tensor], from_rank0: bool = False) -> None:
        if self.dist.fsdp:
            self.dist.load_full_state(self.loss_module, {f"model.{n}": t for n, t in state.items()}, from_rank0)
        else:
            load_trainable_state(self.model, state)

    def resume(self) -> bool:
        """Continue from the latest checkpoint, when asked and there is one."""
        folder = _latest_checkpoint(self.opts.checkpoint_dir) if self.opts.resume else None
        if folder is None:
            return False
        ckpt = load_checkpoint(folder)
        if ckpt.state.processes != self.dist.processes:
            raise ValueError(f"{folder}: written by a run of {ckpt.state.processes} process(es); resume it with "
                             f"as many (this run has {self.dist.processes}), or the batches would differ")
        self.load_weights(ckpt.weights)
        if self.dist.fsdp:
            self.dist.load_full_optimizer_state(self.loss_module, self.optimizer, ckpt.optimizer)
        else:
            self.optimizer.load_state_dict(ckpt.optimizer)
        self.scheduler.load_state_dict(ckpt.scheduler)
        self.state, self.best_state = ckpt.state, ckpt.best_state
        torch.set_rng_state(ckpt.rank_rngs[self.dist.rank] if ckpt.rank_rngs else ckpt.torch_rng)
        if self.dist.is_main:
            print(f"resumed from {folder} at step {self.state.step}")
        return True

    def checkpoint(self) -> None:
        """Rank 0 writes (the weights and optimizer state are the same in every DDP process); every
        process's RNG state goes in, so that a resumed run draws what the unbroken one would have."""
        if self.opts.checkpoint_dir is None:
            return
        rngs = self.dist.gather(torch.get_rng_state())
        weights = self.trainable_state()
        if self.dist.fsdp:  # gathered onto rank 0, by parameter name
            optimizer = self.dist.full_optimizer_state(self.loss_module, self.optimizer)
        else:
            optimizer = self.optimizer.state_dict()
        if self.dist.is_main:
            save_checkpoint(self.opts.checkpoint_dir / f"step-{self.state.step:07d}", Checkpoint(
                state=self.state, weights=weights, optimizer=optimizer, scheduler=self.scheduler.state_dict(),
                best_state=self.best_state, torch_rng=rngs[0], rank_rngs=rngs if self.dist.active else None,
            ), self.opts.keep_checkpoints)
        self.dist.barrier()

    def validate(self, tag: str) -> dict | None:
        """Validation loss now; tracks the best (and its weights) and the validations without improvement."""
        if not self.valid_set:
            return None
        st = self.state
        r = evaluate(self.model, self.valid_set, self.opts.batch_size, self.pad_id, self.device, self.amp,
                     dist=self.dist, loss_module=self.loss_module)
        r = {"step": st.step, "epoch": round(st.step / self.steps_per_epoch, 3), "valid_loss": r["loss"],
             "valid_ppl": r["ppl"], "at": tag}
        st.evals.append(r)
        if st.best is None or r["valid_loss"] < st.best["valid_loss"] - 1e-6:
            st.best, st.bad_evals = r, 0
            if self.opts.keep_best:
                self.best_state = self.trainable_state()
        else:
            st.bad_evals += 1
        return r

    def validate_untrained(self) -> None:
        self.state.base_valid = self.validate("start")
        if self.opts.keep_best:  # the untrained model is not a candidate for "best": training must improve on it
            self.state.best, self.state.bad_evals, self.best_state = None, 0, None

    def count(self, rows: list[int]) -> None:
        """Padded, real and supervised tokens of one process's slice (every process counts every slice)."""
        if not rows:
            return
        width = self.opts.pad_to or max(self.lengths[i] for i in rows)
        self.state.padded += width * len(rows)
        for i in rows:
            labels = self.train_set[i].labels[:width]
            self.state.train_tokens += len(labels)
            self.state.sup_tokens += sum(1 for x in labels[1:] if x != IGNORE)

    def step(self, group: list[list[int]]) -> tuple[float, int]:
        """One optimizer step over `group` (grad_accum global batches); (summed loss, supervised tokens).

        Each process's loss is divided by the supervised tokens of the whole step (all processes) and
        multiplied by the number of processes, since DDP averages the gradients: the result is one
        process's gradient over everything. A process whose slice is empty runs the batch's first example
        with its loss times 0, so that every process joins every gradient all-reduce."""
        st, opts, dist = self.state, self.opts, self.dist
        t0 = time.perf_counter()
        n_sup = sum(self.train_set[i].n_supervised for b in group for i in b) or 1
        step_loss = 0.0
        for j, global_batch in enumerate(group):
            slices = self.slices(global_batch)
            for rows in slices:
                self.count(rows)
            mine = slices[dist.rank]
            batch = collate([self.train_set[i] for i in (mine or global_batch[:1])], self.pad_id, pad_to=opts.pad_to)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with dist.no_sync(self.loss_module, skip=j < len(group) - 1):
                with _autocast(self.device, self.amp):
                    loss_sum = self.loss_module(**batch)
                if not mine:
                    loss_sum = loss_sum * 0.0
                (loss_sum * (dist.processes / n_sup)).backward()
            step_loss += float(loss_sum.detach())
        step_loss = dist.sum(step_loss)[0]
        if opts.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, opts.max_grad_norm)  # DTensors under FSDP: global norm
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        st.train_time += time.perf_counter() - t0
        st.step += 1
        st.micro += len(group)
        return step_loss, n_sup

    def _patience_spent(self) -> bool:
        return bool(self.opts.early_stopping and self.state.bad_evals >= self.opts.early_stopping)

    def after_step(self, n_batches: int) -> None:
        """Mid-epoch validation and checkpoint (the epoch's end does both anyway)."""
        st, opts = self.state, self.opts
        if st.micro >= n_batches:
            return
        if opts.eval_every and st.step % opts.eval_every == 0:
            self.validate("step")
            st.stopped_early = st.stopped_early or self._patience_spent()
        if opts.save_every and st.step % opts.save_every == 0:
            self.checkpoint()

    def epoch(self, bar) -> None:
        """The rest of the current epoch (all of it unless resumed mid-epoch), then its validation."""
        st, opts = self.state, self.opts
        batches = self.epoch_batches(st.epoch)
        rest = batches[st.micro:]
        for group in (rest[i:i + opts.grad_accum] for i in range(0, len(rest), opts.grad_accum)):
            step_loss, n_sup = self.step(group)
            st.epoch_loss += step_loss
            st.epoch_tokens += n_sup
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss / n_sup:.3f}",
                                tok_s=f"{st.train_tokens / max(st.train_time, 1e-9):.0f}")
            self.after_step(len(batches))
            if st.step >= self.total_steps or st.stopped_early:
                break
        train_loss = st.epoch_loss / st.epoch_tokens if st.epoch_tokens else None
        r = self.validate("epoch")
        st.history.append({
            "epoch": st.epoch + 1, "step": st.step,
            "train_loss": train_loss, "train_ppl": math.exp(min(train_loss, 50.0)) if train_loss is not None else None,
            "valid_loss": r["valid_loss"] if r else None, "valid_ppl": r["valid_ppl"] if r else None,
            "lr": self.scheduler.get_last_lr()[0],
        })
        st.stopped_early = st.stopped_early or self._patience_spent()
        st.epoch += 1
        st.micro, st.epoch_loss, st.epoch_tokens = 0, 0.0, 0
        self.checkpoint()

    def finished(self) -> bool:
        st = self.state
        return st.step >= self.total_steps or st.stopped_early or st.epoch >= self.n_epochs

    def metrics(self) -> dict:
        st, opts = self.state, self.opts
        trainable, total = count_parameters(self.model)
        per_s = max(st.train_time, 1e-9)
        return {
            "epochs": st.history,
            "evals": st.evals,
            "steps": st.step,
            "total_steps": self.total_steps,
            "base_valid_loss": st.base_valid["valid_loss"] if st.base_valid else None,
            "base_valid_ppl": st.base_valid["valid_ppl"] if st.base_valid else None,
            "best": st.best,
            "stopped_early": st.stopped_early,
            "train_time_s": round(st.train_time, 2),
            "train_tokens": st.train_tokens,
            "supervised_tokens": st.sup_tokens,
            "tokens_per_s": round(st.train_tokens / per_s, 1),
            "supervised_tokens_per_s": round(st.sup_tokens / per_s, 1),
            "padding_waste": round(1 - st.train_tokens / max(st.padded, 1), 4),
            "expected_padding_waste": round(padding_waste(self.lengths, self.epoch_batches(0), opts.pad_to), 4),
            "trainable_params": trainable,
            "total_params": total,
            "n_train_examples": len(self.train_set),
            "n_valid_examples": len(self.valid_set),
            "precision": str(self.amp).replace("torch.", "") if self.amp else "fp32",
            "device": str(self.device),
            "processes": self.dist.processes,
            "parallelism": "fsdp" if self.dist.fsdp else "ddp" if self.dist.active else "none",
            "global_batch_size": opts.batch_size * self.dist.processes * opts.grad_accum,
        }


def train(model, train_set: Sequence[Encoded], valid_set: Sequence[Encoded], pad_id: int,
          opts: LoopOptions, device: torch.device | None = None, dist: Dist | None = None) -> LoopResult:
    """Train `model` (its trainable parameters) in place; returns metrics and the best trainable state.
    `dist`: this process's place in a multi-process run (extes.train.distributed.init); one process if None."""
    if not train_set:
        raise ValueError("no training examples (every dialogue was empty or had no assistant turn)")
    dist = dist or Dist()
    run = _Run(model, train_set, valid_set, pad_id, opts, device or next(model.parameters()).device, dist)
    if not run.resume() and opts.eval_at_start and valid_set:
        run.validate_untrained()
    bar = None
    if opts.progress and dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.total_steps, initial=run.state.step, desc="train", unit="step", dynamic_ncols=True)
    model.train()
    while not run.finished():
        run.epoch(bar)
    if bar is not None:
        bar.close()
    metrics = run.metrics()
    if opts.keep_best and run.best_state is not None:
        run.load_weights(run.best_state, from_rank0=True)
    full = run.trainable_state() if dist.fsdp else None
    return LoopResult(metrics=metrics, best_state=run.best_state, history=run.state.history, full_state=full)
