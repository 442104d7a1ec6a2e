"""A short model card (README.md) for a training run: what it is, how it was trained, how it scored."""

from __future__ import annotations

from extes.train.config import TrainConfig

_METHOD_TEXT = {
    "clm": "full causal-LM fine-tuning (DialoGPT style)",
    "lora": "LoRA adapter (PEFT)",
    "qlora": "QLoRA adapter (LoRA on a 4-bit NF4 base, PEFT + bitsandbytes)",
    "adapter": "LLaMA-Adapter (PEFT AdaptionPrompt)",
}


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def model_card(cfg: TrainConfig, metrics: dict) -> str:
    peft = cfg.method != "clm"
    lines = ["---"]
    if peft:
        lines += ["library_name: peft", f"base_model: {cfg.base}"]
    lines += ["tags:", "- extes", "- emotional-support", f"- {cfg.method}", "---", "",
              f"# {cfg.run_name}", "",
              f"An emotional-support chat model: {_METHOD_TEXT[cfg.method]} on `{cfg.base}`, trained with "
              f"`extes train` on {', '.join(f'`{d}`' for d in cfg.data)}"
              + (" with a strategy tag (`[Strategy Name] `) before each reply." if cfg.strategies
                 else " (plain replies, no strategy tags)."),
              "",
              "It is a research artefact from the ExTES reproduction, not a therapist: it can be wrong, and it "
              "must not be used as a substitute for professional help.", "",
              "## Training", "",
              f"- method `{cfg.method}`, lr {cfg.learning_rate:g}, batch {cfg.batch_size} x accumulation "
              f"{cfg.grad_accum}, max length {cfg.max_length}, seed {cfg.seed}",
              f"- {metrics.get('steps')} optimizer steps, {metrics.get('n_train_examples')} training examples, "
              f"{metrics.get('trainable_params'):,} of {metrics.get('total_params'):,} parameters trained",
              f"- {metrics.get('tokens_per_s')} tokens/s on {metrics.get('device')} ({metrics.get('precision')}), "
              f"padding waste {100 * (metrics.get('padding_waste') or 0):.1f}%, "
              f"wall time {metrics.get('wall_time_s')} s"]
    if cfg.method in ("lora", "qlora"):
        lines += [f"- LoRA r={cfg.lora_r}, alpha={cfg.lora_alpha}, dropout={cfg.lora_dropout}, "
                  f"target modules {cfg.target_modules or 'PEFT default'}"
                  + (f" in the top {cfg.lora_layers} blocks" if cfg.lora_layers else ""), ""]
    if cfg.method == "adapter":
        lines += [f"- adapter length {cfg.adapter_len}, layers {cfg.adapter_layers}", ""]
    lines += ["## Results (loss and perplexity on supervised reply tokens)", "",
              "| epoch | train loss | train ppl | valid loss | valid ppl |", "|---|---|---|---|---|"]
    if metrics.get("base_valid_ppl") is not None:
        lines.append(f"| base (before training) | - | - | {_fmt(metrics['base_valid_loss'])} | "
                     f"{_fmt(metrics['base_valid_ppl'], 2)} |")
    for e in metrics.get("epochs", []):
        lines.append(f"| {e['epoch']} | {_fmt(e['train_loss'])} | {_fmt(e['train_ppl'], 2)} | "
                     f"{_fmt(e['valid_loss'])} | {_fmt(e['valid_ppl'], 2)} |")
    lines += ["", "## Use", "", "As an arm of the study (arms YAML):", "", "```yaml", "arms:",
              f"  - name: {cfg.run_name}"]
    if peft:
        lines += [f"    base: {cfg.base}", "    adapter: <this folder>"]
    else:
        lines += ["    base: <this folder>"]
    lines += [f"    strategies: {str(cfg.strategies).lower()}", "```", ""]
    return "\n".join(lines)
