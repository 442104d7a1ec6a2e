"""The GPU check that fits the lent GPU machine (issue 27): no vLLM, no network, nothing carried but the tree.

    python bench/gpu_check.py --device cuda --out gpu_check.json          # on the GPU machine (bench/gpu_check.sh)
    python bench/gpu_check.py --device cpu --dry --out /tmp/check.json    # tiny shapes: runs in `make test`

Weights are random (speed does not depend on their values), built here in the real shapes:
LLaMA-7B (4096 wide, 32 blocks, 32 heads, vocab 32000) and SmolLM2-135M (576 wide, 30 blocks, 9/3 heads,
vocab 49152); `--dry` uses a 2-block, 64-wide llama instead of both. The tokenizer is the tiny test one
(ids it does not know decode to nothing; every reply runs to its token cap with end-of-turn ignored).
Sections, each recorded in one JSON file (`ok`, figures, or the error), in this order:

  equality      a tiny model's greedy replies (a base arm and two LoRA arms) from the fast engine on the
                device in fp32 = the transformers path on the CPU (the reference);
  <shape>       per model shape, the local engine on the device in `--dtype` (bf16 on CUDA): one arm vs
                three arms (base + two LoRA adapters) replying at once (time ratio), and tokens/s with
                20 and 64 concurrent conversations spread over the three arms (median of --rounds);
  training      one optimizer step of each method (lora, qlora, adapter, clm) through `extes train`'s
                own pipeline on the SmolLM2 shape (tiny under --dry), precision auto (bf16 autocast on a
                GPU); qlora needs bitsandbytes and is recorded as skipped where it is missing.

A section that would start past `--budget-s` is recorded as skipped, so the file is always written.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

SHAPES = {
    # name: (hidden, intermediate, layers, heads, kv_heads, vocab, tied embeddings, rope theta)
    "llama-7b": (4096, 11008, 32, 32, 32, 32000, False, 10000.0),
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152, True, 100000.0),
    "tiny": (64, 128, 2, 4, 2, None, True, 10000.0),
}
SYSTEM = "You are a warm, supportive listener."
OPENINGS = ["I feel so alone since the breakup.", "My exams start next week and I cannot focus.",
            "My boss keeps piling work on me.", "I had a fight with my sister.",
            "I cannot sleep at night.", "I moved to a new city and know nobody."]


class Deadline:
    def __init__(self, budget_s: float):
        self.end = time.perf_counter() + budget_s

    def left(self) -> float:
        return self.end - time.perf_counter()


def conversation(i: int, turns: int = 3) -> list[dict[str, str]]:
    """A distinct conversation of a few turns (the system prompt is the arm's, shared by all)."""
    msgs: list[dict[str, str]] = []
    for t in range(turns):
        msgs.append({"role": "user", "content": f"{OPENINGS[(i + t) % len(OPENINGS)]} (conversation {i}, turn {t})"})
        if t < turns - 1:
            msgs.append({"role": "assistant", "content": "That sounds hard. What has been the hardest part?"})
    return msgs


# ------------------------------------------------------------------------------------------------ models


def make_base(out: Path, shape: str, device: str, seed: int = 0) -> Path:
    """A randomly initialised llama of `shape` with the tiny tokenizer, saved in bf16 (fp32 for tiny)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from extes.testing.tiny import make_tokenizer

    hidden, inter, layers, heads, kv, vocab, tied, theta = SHAPES[shape]
    tok = make_tokenizer()
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab or len(tok),
                         max_position_embeddings=4096, tie_word_embeddings=tied, rope_theta=theta,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    dtype = torch.float32 if shape == "tiny" else torch.bfloat16
    torch.manual_seed(seed)
    specials = sorted(set(tok.all_special_ids))
    build_on = device if device != "cpu" and torch.cuda.is_available() else "cpu"
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(build_on):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(old)
    with torch.no_grad():  # zero logits for end-of-turn and the other specials: replies run to their cap
        model.get_output_embeddings().weight[specials] = 0
        model.get_input_embeddings().weight[specials] = 0
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    del model
    if build_on != "cpu":
        torch.cuda.empty_cache()
    return out


def make_lora(base_dir: Path, out: Path, seed: int, r: int = 8) -> Path:
    """A LoRA adapter (r=8 on all linear layers of the blocks) with random, non-zero A and B, written as
    PEFT writes one; the model is built on the meta device, so no weights are read."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    lcfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, lcfg)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            key = name.replace(".default", "")
            tensors[key] = (torch.randn(p.shape, generator=gen) * 0.02).to(torch.bfloat16).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    lcfg.base_model_name_or_path = str(base_dir)
    lcfg.save_pretrained(str(out))
    (out / "training_config.json").write_text(json.dumps({"method": "lora", "base": str(base_dir),
                                                          "strategies": False, "note": "random (gpu_check)"}))
    return out


def arms(base: Path, adapters: list[Path], new_tokens: int, dtype: str):
    from extes.models import Arm, GenerationSettings

    g = GenerationSettings(max_new_tokens=new_tokens, temperature=0.0, repetition_penalty=1.0)
    return [Arm("base", base=str(base), generation=g, dtype=dtype, system_prompt=SYSTEM)] + [
        Arm(f"lora{i}", base=str(base), adapter=str(a), generation=g, dtype=dtype, system_prompt=SYSTEM)
        for i, a in enumerate(adapters)]


def run_many(pool, requests: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    replies = {}
    for key, ev in pool.stream_many(requests):
        if ev.done:
            if ev.reply is None:
                raise RuntimeError(f"request {key!r} failed: {ev.error}")
            replies[key] = ev.reply
    return time.perf_counter() - t0, replies


# ---------------------------------------------------------------------------------------------- sections


def check_equality(work: Path, device: str) -> dict:
    """Greedy token ids of three arms: fast engine on `device` in fp32 vs the transformers path on the CPU."""
    import torch

    from extes.models import ArmPool

    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    base = make_base(work / "eq-base", "tiny", "cpu", seed=1)
    adapters = [make_lora(base, work / f"eq-lora{i}", seed=10 + i) for i in range(2)]
    the_arms = arms(base, adapters, 16, "float32")
    requests = {(a.name, i): (a.name, conversation(i)) for a in the_arms for i in range(2)}
    out = {}
    for label, kw in (("reference", dict(engine="transformers")), ("candidate", dict(device=device))):
        with ArmPool(the_arms, **kw) as pool:
            _, replies = run_many(pool, requests)
            out[label] = {k: r.token_ids for k, r in replies.items()}
            out[label + "_engine"] = sorted({r.engine_version for r in replies.values()})
    same = sum(out["reference"][k] == out["candidate"][k] for k in requests)
    agree = sum(a == b for k in requests for a, b in zip(out["reference"][k], out["candidate"][k]))
    total = sum(len(out["reference"][k]) for k in requests)
    return {"ok": same == len(requests), "replies_equal": same, "replies": len(requests),
            "tokens_agreeing": agree, "tokens": total, "reference": out["reference_engine"],
            "candidate": out["candidate_engine"]}


def check_shape(work: Path, shape: str, args, deadline: Deadline) -> dict:
    import torch

    from extes.models import ArmPool

    t0 = time.perf_counter()
    base = make_base(work / f"{shape}-base", shape, args.device)
    adapters = [make_lora(base, work / f"{shape}-lora{i}", seed=20 + i) for i in range(2)]
    built_s = time.perf_counter() - t0
    the_arms = arms(base, adapters, args.new_tokens, args.dtype)
    names = [a.name for a in the_arms]
    result: dict = {"build_s": round(built_s, 1), "new_tokens": args.new_tokens, "dtype": args.dtype}
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with ArmPool(the_arms, device=args.device, max_batch=max(args.conversations)) as pool:
        result["load_s"] = round(time.perf_counter() - t0, 1)
        if args.device.startswith("cuda"):
            on_gpu = torch.cuda.memory_allocated()
            weights = sum(f.stat().st_size for f in base.glob("*.safetensors"))
            result["gpu_gib_after_load"] = round(on_gpu / 2**30, 2)
            if on_gpu < weights / 2:
                raise RuntimeError(f"{on_gpu} bytes on the GPU after loading {weights} bytes of weights: "
                                   "the engine is not running on it")
        _, warm = run_many(pool, {n: (n, conversation(0)) for n in names})  # warm-up
        reply = warm["base"]
        result.update(engine_version=reply.engine_version, weights=reply.dtype,
                      full_length=all(r.n_tokens == args.new_tokens for r in warm.values()))
        one, three = [], []
        for r in range(args.rounds):
            one.append(run_many(pool, {"base": ("base", conversation(100 + r))})[0])
            three.append(run_many(pool, {n: (n, conversation(100 + r)) for n in names})[0])
        result["one_arm_s"] = round(statistics.median(one), 3)
        result["three_arms_s"] = round(statistics.median(three), 3)
        result["three_vs_one"] = round(result["three_arms_s"] / result["one_arm_s"], 3)
        for n_conv in args.conversations:
            if deadline.left() < 20:
                result[f"c{n_conv}"] = {"skipped": "out of time"}
                continue
            rates, firsts = [], []
            for r in range(args.rounds):
                reqs = {i: (names[i % 3], conversation(1000 * (r + 1) + i)) for i in range(n_conv)}
                wall, replies = run_many(pool, reqs)
                tokens = sum(rep.n_tokens for rep in replies.values())
                rates.append(tokens / wall)
                firsts.append(statistics.median(rep.ttft_s or 0.0 for rep in replies.values()))
            result[f"c{n_conv}"] = {"tokens_per_s": round(statistics.median(rates), 1),
                                    "ttft_median_s": round(statistics.median(firsts), 3),
                                    "rounds": [round(x, 1) for x in rates]}
    if args.device.startswith("cuda"):
        result["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    shutil.rmtree(base, ignore_errors=True)
    result["ok"] = True
    return result


def _training_data(path: Path) -> Path:
    from extes.dialogue import Dialogue, Turn, write_jsonl

    ds = [Dialogue(id=f"g{i}", source="gpu_check", scene="", description="", turns=[
        Turn("user", f"{OPENINGS[i % len(OPENINGS)]} It has been like this for {i + 2} weeks."),
        Turn("assistant", "That sounds really hard. It makes sense that you feel this way."),
        Turn("user", "Thank you. What could I try tonight?"),
        Turn("assistant", "Maybe a short walk, or writing down what worries you before bed."),
    ]) for i in range(16)]
    write_jsonl(ds, path)
    return path


def check_training(work: Path, args, deadline: Deadline) -> dict:
    import torch

    from extes.train.config import TrainConfig
    from extes.train.runner import train_run

    shape = "tiny" if args.dry else "smollm2-135m"
    base = make_base(work / "train-base", shape, args.device)
    data = _training_data(work / "train.jsonl")
    out: dict = {"shape": shape}
    for method in ("lora", "qlora", "adapter", "clm"):
        if deadline.left() < 15:
            out[method] = {"skipped": "out of time"}
            continue
        if method == "qlora" and not _has("bitsandbytes"):
            out[method] = {"skipped": "bitsandbytes is not installed here"}
            continue
        cfg = TrainConfig(method=method, base=str(base), data=[str(data)], out=str(work / f"run-{method}"),
                          max_steps=1, batch_size=8, max_length=256, device=args.device, progress=False,
                          save_every=None, overwrite=True, target_modules="all-linear" if method != "adapter"
                          else None, system_prompt=SYSTEM)
        try:
            t0 = time.perf_counter()
            run = train_run(cfg)
            metrics = json.loads((run / "metrics.json").read_text())
            out[method] = {"ok": True, "run_s": round(time.perf_counter() - t0, 1),
                           "step_s": metrics["train_time_s"], "tokens": metrics["train_tokens"],
                           "loss": metrics["epochs"][-1]["train_loss"], "precision": metrics["precision"],
                           "device": metrics["device"], "trainable_params": metrics["trainable_params"]}
        except Exception as exc:  # one method's failure is a finding, not the end of the check
            out[method] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    done = [v for v in out.values() if isinstance(v, dict) and "ok" in v]
    out["ok"] = bool(done) and all(v["ok"] for v in done)
    return out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def environment(device: str) -> dict:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": device, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    for mod in ("peft", "accelerate", "bitsandbytes", "numba"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            env[mod] = None
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda or cpu")
    ap.add_argument("--dry", action="store_true", help="tiny shapes and few tokens (a CPU run of every section)")
    ap.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    ap.add_argument("--dtype", default=None, help="engine weights: bfloat16 (default on CUDA) or float32")
    ap.add_argument("--shapes", nargs="*", default=None, help=f"of {list(SHAPES)}")
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--conversations", type=int, nargs="*", default=[20, 64])
    ap.add_argument("--budget-s", type=float, default=450.0, help="no section starts after this many seconds")
    ap.add_argument("--sections", nargs="*", default=["equality", "speed", "training"])
    args = ap.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: --device cuda but torch sees no CUDA device; use --device cpu --dry", file=sys.stderr)
            return 2
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    args.shapes = args.shapes or (["tiny"] if args.dry else ["smollm2-135m", "llama-7b"])
    args.new_tokens = args.new_tokens or (8 if args.dry else 64)
    args.rounds = args.rounds or (1 if args.dry else 3)
    deadline = Deadline(args.budget_s)
    report: dict = {"check": "bench/gpu_check.py", "dry": args.dry, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                    time.gmtime()), "environment": environment(args.device), "sections": {}}
    work = Path(tempfile.mkdtemp(prefix="extes-gpu-check-"))
    plan = ([("equality", lambda: check_equality(work, args.device))] if "equality" in args.sections else []) + (
        [(s, lambda s=s: check_shape(work, s, args, deadline)) for s in args.shapes] if "speed" in args.sections
        else []) + ([("training", lambda: check_training(work, args, deadline))] if "training" in args.sections
                    else [])
    t_all = time.perf_counter()
    try:
        for name, section in plan:
            if deadline.left() <= 0:
                report["sections"][name] = {"skipped": "out of time"}
                continue
            t0 = time.perf_counter()
            print(f"== {name} ({deadline.left():.0f} s left)", flush=True)
            try:
                report["sections"][name] = section()
            except Exception as exc:
                traceback.print_exc()
                report["sections"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:800]}
            report["sections"][name]["section_s"] = round(time.perf_counter() - t0, 1)
            print(json.dumps({name: report["sections"][name]}), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # a kill later still leaves the figures
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["wall_s"] = round(time.perf_counter() - t_all, 1)
    report["ok"] = all(s.get("ok", False) for s in report["sections"].values() if "skipped" not in s)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check: {'ok' if report['ok'] else 'FAILED'} in {report['wall_s']} s; figures in {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
