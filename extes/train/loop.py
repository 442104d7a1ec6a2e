"""The training loop every method shares: AdamW, warmup + cosine decay, gradient accumulation,
validation loss and perplexity, early stopping, checkpoints with exact resume, progress with tokens/s.

Two things keep it fast on a CPU without changing what is learnt:
- batches group examples of similar length and pad only to the longest in the batch;
- the output layer runs only on positions whose next token is supervised (assistant tokens), not on
  the whole context: for a 49k-token vocabulary that is a fifth of the model's compute per token.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

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


@torch.no_grad()
def evaluate(model, examples: Sequence[Encoded], batch_size: int, pad_id: int, device: torch.device,
             amp: torch.dtype | None = None) -> dict:
    """Token-level loss and perplexity on supervised tokens."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    lengths = [len(e) for e in examples]
    for b in length_grouped_batches(lengths, batch_size, shuffle=False):
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in b], pad_id).items()}
        with _autocast(device, amp):
            loss, n = token_loss(model, batch)
        total += float(loss)
        count += n
    if was_training:
        model.train()
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count}


# ----------------------------------------------------------------------------------------------------------
# The loop


@dataclass
class LoopOptions:
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    group_by_length: bool = True
    pad_to: int | None = None  # pad every batch to this length (the naive baseline in bench/)
    full_logits: bool = False  # compute logits on every position (the naive baseline in bench/)
    eval_every: int | None = None
    eval_at_start: bool = True
    early_stopping: int | None = None
    keep_best: bool = True
    save_every: int | None = None
    checkpoint_dir: Path | None = None
    resume: bool = False
    progress: bool = True
    precision: str = "auto"
    keep_checkpoints: int = 2


@dataclass
class LoopResult:
    metrics: dict
    best_state: dict | None = None
    history: list = field(default_factory=list)


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


def _latest_checkpoint(folder: Path | None) -> Path | None:
    if folder is None or not folder.is_dir():
        return None
    done = sorted(p for p in folder.glob("step-*") if (p / "trainer_state.pt").is_file())
    return done[-1] if done else None


def train(model, train_set: Sequence[Encoded], valid_set: Sequence[Encoded], pad_id: int,
          opts: LoopOptions, device: torch.device | None = None) -> LoopResult:
    """Train `model` (its trainable parameters) in place; returns metrics and the best trainable state."""
    if not train_set:
        raise ValueError("no training examples (every dialogue was empty or had no assistant turn)")
    device = device or next(model.parameters()).device
    amp = autocast_dtype(device, opts.precision)
    lengths = [len(e) for e in train_set]
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=opts.lr, betas=(0.9, 0.999), eps=1e-8,
    )
    n_batches = math.ceil(len(train_set) / opts.batch_size)
    steps_per_epoch = max(1, math.ceil(n_batches / opts.grad_accum))
    total_steps = opts.max_steps or max(1, math.ceil(steps_per_epoch * opts.epochs))
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = int(round(opts.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, warmup))

    def epoch_batches(epoch: int) -> list[list[int]]:
        if opts.group_by_length and opts.pad_to is None:
            return length_grouped_batches(lengths, opts.batch_size, seed=opts.seed + epoch)
        order = list(range(len(train_set)))
        random.Random(opts.seed + epoch).shuffle(order)
        return [order[i:i + opts.batch_size] for i in range(0, len(order), opts.batch_size)]

    state = {"step": 0, "epoch": 0, "micro": 0, "history": [], "evals": [], "best": None, "bad_evals": 0,
             "train_time": 0.0, "train_tokens": 0, "sup_tokens": 0, "padded": 0, "base_valid": None,
             "stopped_early": False}
    best_state: dict | None = None
    ckpt = _latest_checkpoint(opts.checkpoint_dir) if opts.resume else None
    if ckpt is not None:
        saved = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=False)
        load_trainable_state(model, saved["weights"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        best_state = saved.get("best_state")
        torch.set_rng_state(saved["torch_rng"])
        print(f"resumed from {ckpt} at step {state['step']}")

    def run_eval(tag: str) -> dict | None:
        nonlocal best_state
        if not valid_set:
            return None
        r = evaluate(model, valid_set, opts.batch_size, pad_id, device, amp)
        r = {"step": state["step"], "epoch": round(state["step"] / steps_per_epoch, 3), "valid_loss": r["loss"],
             "valid_ppl": r["ppl"], "at": tag}
        state["evals"].append(r)
        if state["best"] is None or r["valid_loss"] < state["best"]["valid_loss"] - 1e-6:
            state["best"] = r
            state["bad_evals"] = 0
            if opts.keep_best:
                best_state = trainable_state(model)
        else:
            state["bad_evals"] += 1
        return r

    def save_checkpoint() -> None:
        if opts.checkpoint_dir is None:
            return
        folder = opts.checkpoint_dir / f"step-{state['step']:07d}"
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save({"weights": trainable_state(model), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "state": state, "best_state": best_state,
                    "torch_rng": torch.get_rng_state()}, tmp / "trainer_state.pt")
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        tmp.rename(folder)
        old = sorted(p for p in opts.checkpoint_dir.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        import shutil

        for p in old[:-opts.keep_checkpoints]:
            shutil.rmtree(p, ignore_errors=True)

    if ckpt is None and opts.eval_at_start and valid_set:
        r = run_eval("start")
        state["base_valid"] = r
        if opts.keep_best:  # the untrained model is not a candidate for "best": training must improve on it
            state["best"], state["bad_evals"], best_state = None, 0, None

    bar = None
    if opts.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=state["step"], desc="train", unit="step", dynamic_ncols=True)
    model.train()
    done = state["step"] >= total_steps
    while not done and state["epoch"] < n_epochs:
        epoch = state["epoch"]
        batches = epoch_batches(epoch)
        ep_loss = ep_tok = 0.0
        micro_batches = batches[state["micro"]:]
        groups = [micro_batches[i:i + opts.grad_accum] for i in range(0, len(micro_batches), opts.grad_accum)]
        for group in groups:
            t0 = time.perf_counter()
            examples = [[train_set[i] for i in b] for b in group]
            n_sup = sum(e.n_supervised for ex in examples for e in ex) or 1
            step_loss = 0.0
            for ex in examples:
                batch = collate(ex, pad_id, pad_to=opts.pad_to)
                state["padded"] += batch["input_ids"].numel()
                state["train_tokens"] += int(batch["attention_mask"].sum())
                batch = {k: v.to(device) for k, v in batch.items()}
                with _autocast(device, amp):
                    loss_sum, n = token_loss(model, batch, full_logits=opts.full_logits)
                (loss_sum / n_sup).backward()
                step_loss += float(loss_sum.detach())
                state["sup_tokens"] += n
            if opts.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, opts.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["train_time"] += time.perf_counter() - t0
            state["step"] += 1
            state["micro"] += len(group)
            ep_loss += step_loss
            ep_tok += n_sup
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss / n_sup:.3f}",
                                tok_s=f"{state['train_tokens'] / max(state['train_time'], 1e-9):.0f}")
            if opts.eval_every and state["step"] % opts.eval_every == 0 and state["micro"] < len(batches):
                run_eval("step")
                if opts.early_stopping and state["bad_evals"] >= opts.early_stopping:
                    state["stopped_early"] = True
            if opts.save_every and state["step"] % opts.save_every == 0 and state["micro"] < len(batches):
                save_checkpoint()
            if state["step"] >= total_steps or state["stopped_early"]:
                break
        train_loss = ep_loss / max(ep_tok, 1) if ep_tok else None
        r = run_eval("epoch")
        state["history"].append({
            "epoch": epoch + 1, "step": state["step"],
            "train_loss": train_loss, "train_ppl": math.exp(min(train_loss, 50.0)) if train_loss is not None else None,
            "valid_loss": r["valid_loss"] if r else None, "valid_ppl": r["valid_ppl"] if r else None,
            "lr": scheduler.get_last_lr()[0],
        })
        if opts.early_stopping and state["bad_evals"] >= opts.early_stopping:
            state["stopped_early"] = True
        state["epoch"] += 1
        state["micro"] = 0
        done = state["step"] >= total_steps or state["stopped_early"]
        save_checkpoint()
    if bar is not None:
        bar.close()
    trainable, total = count_parameters(model)
    metrics = {
        "epochs": state["history"],
        "evals": state["evals"],
        "steps": state["step"],
        "total_steps": total_steps,
        "base_valid_loss": state["base_valid"]["valid_loss"] if state["base_valid"] else None,
        "base_valid_ppl": state["base_valid"]["valid_ppl"] if state["base_valid"] else None,
        "best": state["best"],
        "stopped_early": state["stopped_early"],
        "train_time_s": round(state["train_time"], 2),
        "train_tokens": state["train_tokens"],
        "supervised_tokens": state["sup_tokens"],
        "tokens_per_s": round(state["train_tokens"] / max(state["train_time"], 1e-9), 1),
        "supervised_tokens_per_s": round(state["sup_tokens"] / max(state["train_time"], 1e-9), 1),
        "padding_waste": round(1 - state["train_tokens"] / max(state["padded"], 1), 4),
        "expected_padding_waste": round(padding_waste(lengths, epoch_batches(0), opts.pad_to), 4),
        "trainable_params": trainable,
        "total_params": total,
        "n_train_examples": len(train_set),
        "n_valid_examples": len(valid_set),
        "precision": str(amp).replace("torch.", "") if amp else "fp32",
        "device": str(device),
    }
    if opts.keep_best and best_state is not None:
        load_trainable_state(model, best_state)
    return LoopResult(metrics=metrics, best_state=best_state, history=state["history"])
