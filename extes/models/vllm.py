"""Serving the arms from vLLM: the path beyond one machine.

`extes serve --vllm-command PROTOCOL` prints, for the local arms of a protocol (or arms YAML):
1. one `vllm serve ...` command per base model, with `--enable-lora --lora-modules name=path ...` for the
   arms' LoRA adapters (vLLM batches requests of different adapters together, like our engine);
2. the arms YAML that points the study at it: every arm becomes `backend: openai` with the server's
   `base_url` and `model` (the adapter's module name, or the base's hub id), keeping its system prompt,
   generation settings and strategies flag.
Nothing is started or downloaded here. The base is named by its hub id (the embedded model is
HuggingFaceTB/SmolLM2-135M-Instruct; see extes.base.embedded), which is also what `extes train`
records in each adapter's adapter_config.json.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from extes.base.loading import checkpoint_source, hub_id, is_embedded
from extes.errors import CLIError
from extes.models.arms import Arm

_NAME = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass
class VLLMPlan:
    commands: list[list[str]]
    arms: list[dict]

    def commands_text(self) -> str:
        return "\n".join(" ".join(shlex.quote(a) for a in cmd) for cmd in self.commands)

    def arms_yaml(self) -> str:
        return yaml.safe_dump({"arms": self.arms}, sort_keys=False, allow_unicode=True)


def _vllm_base(base: str) -> str:
    if is_embedded(base):
        return hub_id(base)
    p = Path(base).expanduser()
    return str(p.resolve()) if p.exists() else base


def _rank(path: Path) -> int:
    cfg = json.loads((path / "adapter_config.json").read_text())
    return int(cfg.get("r", 8))


def vllm_plan(arms: list[Arm], host: str = "127.0.0.1", port: int = 8000, tensor_parallel: int = 1,
              dtype: str = "bfloat16", max_model_len: int | None = 8192, local_weights: bool = False) -> VLLMPlan:
    """The vllm serve command(s) and the openai arms for `arms` (local arms only).

    local_weights: serve the local checkpoint folder (for a machine without access to the hub) under the
    hub id as its served model name."""
    from extes.models.fastllama import adapter_unsupported_reason  # lazy: torch, not needed to plan

    groups: dict[str, list[Arm]] = {}
    out_arms: list[dict] = []
    for arm in arms:
        if arm.backend != "local":
            continue
        if arm.adapter and adapter_unsupported_reason(arm.adapter):
            raise CLIError(f"arm {arm.name!r}: vLLM serves LoRA adapters only; {arm.adapter} has "
                           f"{adapter_unsupported_reason(arm.adapter)}")
        groups.setdefault(_vllm_base(arm.base), []).append(arm)
    if not groups:
        raise CLIError("no local arms to serve with vLLM")
    commands = []
    endpoint_of: dict[str, str] = {}
    for i, (base, group) in enumerate(groups.items()):
        p = port + i
        endpoint_of[base] = f"http://{host}:{p}/v1"
        cmd = ["vllm", "serve", base, "--host", host, "--port", str(p), "--dtype", dtype]
        if local_weights and not Path(base).exists():
            cmd[2:3] = [checkpoint_source(base), "--served-model-name", base]
        if max_model_len:
            cmd += ["--max-model-len", str(max_model_len)]
        if tensor_parallel > 1:
            cmd += ["--tensor-parallel-size", str(tensor_parallel)]
        adapters = {}
        for arm in group:
            if arm.adapter:
                adapters.setdefault(str(Path(arm.adapter).resolve()), _NAME.sub("-", Path(arm.adapter).name))
        if adapters:
            names = list(adapters.values())
            if len(set(names)) != len(names):  # two folders with one name: make them unique
                adapters = {path: f"{name}-{j}" for j, (path, name) in enumerate(adapters.items())}
            max_rank = max(_rank(Path(a)) for a in adapters)
            rank = next(r for r in (8, 16, 32, 64, 128, 256, max_rank) if r >= max_rank)
            cmd += ["--enable-lora", "--max-loras", str(len(adapters)), "--max-lora-rank", str(rank),
                    "--lora-modules", *[f"{name}={path}" for path, name in adapters.items()]]
        commands.append(cmd)
        for arm in group:
            entry = {"name": arm.name, "backend": "openai", "base_url": endpoint_of[base],
                     "model": adapters[str(Path(arm.adapter).resolve())] if arm.adapter else base,
                     "system_prompt": arm.system_prompt, "generation": arm.generation.to_dict(),
                     "strategies": arm.strategies}
            out_arms.append(entry)
    return VLLMPlan(commands=commands, arms=out_arms)


def print_vllm_plan(arms: list[Arm], host: str, port: int, tensor_parallel: int = 1,
                    local_weights: bool = False) -> str:
    plan = vllm_plan(arms, host=host, port=port, tensor_parallel=tensor_parallel, local_weights=local_weights)
    return (
        "# 1. On the GPU machine (pip install vllm), serve the base and its LoRA adapters:\n"
        + plan.commands_text()
        + "\n\n# 2. Point the study at it: save this as arms.yaml and use `arms: arms.yaml` in the protocol\n"
        "#    (or paste the list under `arms:`). Several replicas behind one load balancer: use its URL.\n"
        + plan.arms_yaml()
    )
