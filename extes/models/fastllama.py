"""A compact LLaMA-family forward for inference, with gathered multi-LoRA (the decode path of the engine).

What it computes is what `transformers`' LlamaForCausalLM (and Qwen2/Mistral, which share the block)
computes, laid out for fast batched decoding on a CPU:
- q/k/v and gate/up projections are fused into one weight each, so a layer is four matmuls;
- base weights are fp32, or bf16 (prepacked for oneDNN where that private op works, else plain
  `F.linear` on the bf16 weight); the residual stream, norms, rotary embedding, attention, KV cache and
  LoRA stay in fp32;
- the KV cache is written in place into preallocated buffers (see `forward`): no concatenation per step;
- LoRA (PEFT's on-disk format stays the source of truth) is gathered: each base matmul runs once for the
  whole batch, and each row adds the delta of its own adapter. All adapters' A matrices of a projection
  group are concatenated, so one small matmul gives every adapter's low-rank activations; a per-row
  mask keeps the row's own adapter's columns, and a block B maps them back (scaling folded in). A batch
  with no adapter row skips LoRA entirely; no per-step adapter switching.

`unsupported_reason(config)` and `adapter_unsupported_reason(path)` say when this path cannot be used;
the engine then keeps the transformers path.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from extes.models.cpu_kernels import LORA_KERNEL_MAX_ROWS, compiled_kernels, decode_attention, lora_delta

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
GROUPS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))
_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
_LORA_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.(?:\w+\.)?weight$")


def unsupported_reason(config) -> str | None:
    """Why this forward cannot run a model with this config (None when it can)."""
    mt = getattr(config, "model_type", None)
    if mt not in SUPPORTED_MODEL_TYPES:
        return f"model type {mt!r} is not one of {list(SUPPORTED_MODEL_TYPES)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} is not silu"
    rope = getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) in ("dynamic", "longrope"):
        return f"rope scaling {rope.get('rope_type', rope.get('type'))!r} depends on the sequence length"
    window = getattr(config, "sliding_window", None)
    if window and (mt != "qwen2" or getattr(config, "use_sliding_window", False)):
        if window < getattr(config, "max_position_embeddings", window):
            return "sliding-window attention"
    return None


# ----------------------------------------------------------------------------------------------------------
# Kernels: x (N, in) -> x @ W^T (+ b), fp32 out


def _mkldnn_pack(w: torch.Tensor):
    """oneDNN-prepacked bf16 weight (private torch ops); raises when unavailable."""
    packed = torch.ops.mkldnn._reorder_linear_weight(w, 3)

    def run(x):
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")

    return run, packed


def _mkl_pack(w: torch.Tensor):
    """MKL-prepacked fp32 weight (private torch ops); raises when unavailable."""
    packed = torch.ops.mkl._mkl_reorder_linear_weight(w, 3)

    def run(x):
        return torch.ops.mkl._mkl_linear(x, packed, w, None, x.shape[0])

    return run, packed


class Kernel:
    """A base linear with fixed weights. `prepack` uses a private packed op when it exists and agrees with
    `F.linear` on a probe input; otherwise (or with prepack=False) the public `F.linear` path runs."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, prepack: bool = True,
                 device: str = "cpu"):
        self.dtype = dtype
        self.weight = weight.detach().to(device=device, dtype=dtype).contiguous()
        self.bias = None if bias is None else bias.detach().float().to(device).contiguous()
        self.out_features = self.weight.shape[0]
        self.nbytes = self.weight.numel() * self.weight.element_size()
        self.packed_with = "F.linear"
        self._run = self._public
        if prepack and self.weight.device.type == "cpu":
            self._try_pack()

    def _public(self, x):
        return F.linear(x, self.weight)

    def _try_pack(self) -> None:
        packer = {torch.bfloat16: _mkldnn_pack, torch.float32: _mkl_pack}.get(self.dtype)
        if packer is None:
            return
        try:
            run, keep = packer(self.weight)
            probe = torch.randn(3, self.weight.shape[1], generator=torch.Generator().manual_seed(0)).to(self.dtype)
            got, want = run(probe).float(), self._public(probe).float()
            tol = 1e-3 if self.dtype == torch.float32 else 5e-2
            if got.shape != want.shape or not torch.allclose(got, want, rtol=tol, atol=tol * want.abs().max()):
                raise RuntimeError("packed result differs from F.linear")
        except Exception as exc:  # private op missing or changed: keep the public path
            log.info("prepacked %s linear unavailable (%s: %s); using F.linear", self.dtype, type(exc).__name__, exc)
            return
        self._keep = keep
        self._run = run
        self.packed_with = packer.__name__.strip("_").replace("_pack", "")
        if packer is _mkldnn_pack:
            self.weight = None  # the packed copy holds the data (MKL's packed op still needs the original)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self._run(x if x.dtype == self.dtype else x.to(self.dtype))
        if y.dtype != torch.float32:
            y = y.float()
        if self.bias is not None:
            y = y + self.bias
        return y


# ----------------------------------------------------------------------------------------------------------
# LoRA adapters from PEFT folders


@dataclass
class LoraWeights:
    """One PEFT LoRA adapter: {(layer, module): (A (r, in), B * scaling (out, r))}, fp32."""

    path: str
    r: int
    modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]


def _adapter_config(path: Path) -> dict:
    return json.loads((Path(path) / "adapter_config.json").read_text())


def adapter_unsupported_reason(path: str | Path) -> str | None:
    """Why the gathered-LoRA path cannot run this adapter folder (None when it can)."""
    try:
        cfg = _adapter_config(Path(path))
    except (OSError, ValueError) as exc:
        return f"cannot read adapter_config.json: {exc}"
    if cfg.get("peft_type") != "LORA":
        return f"peft_type {cfg.get('peft_type')!r} is not LORA"
    if cfg.get("use_dora"):
        return "DoRA adapters"
    if cfg.get("bias", "none") != "none":
        return f"LoRA bias {cfg.get('bias')!r}"
    if cfg.get("modules_to_save"):
        return "modules_to_save"
    if cfg.get("alpha_pattern") or cfg.get("rank_pattern"):
        return "per-module rank/alpha patterns"
    if cfg.get("layers_to_transform") is not None and cfg.get("layers_pattern") not in (None, "layers"):
        return "layers_pattern"
    targets = cfg.get("target_modules")
    if isinstance(targets, str) and targets != "all-linear":
        return f"target_modules given as a pattern ({targets!r})"
    if isinstance(targets, list):
        outside = sorted({t.rsplit(".", 1)[-1] for t in targets} - set(_PARENT))
        if outside:
            return f"target_modules outside the attention and MLP projections: {outside}"
    return None


def load_lora(path: str | Path) -> LoraWeights:
    from safetensors.torch import load_file

    path = Path(path)
    cfg = _adapter_config(path)
    if (path / "adapter_model.safetensors").is_file():
        state = load_file(str(path / "adapter_model.safetensors"))
    else:
        state = torch.load(path / "adapter_model.bin", map_location="cpu", weights_only=True)
    r = int(cfg["r"])
    alpha = float(cfg.get("lora_alpha", r))
    scaling = alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r
    parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in state.items():
        m = _LORA_KEY.search(key)
        if m is None:
            if "lora_" in key:
                raise ValueError(f"adapter {path}: unexpected LoRA tensor {key!r}")
            continue
        parts.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = t.float()
    modules = {}
    for k, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"adapter {path}: layer {k[0]} {k[1]} lacks lora_A or lora_B")
        modules[k] = (ab["A"], ab["B"] * scaling)
    return LoraWeights(path=str(path), r=r, modules=modules)


class GroupLora:
    """All adapters' LoRA for one fused projection group of one layer: y += ((x @ A_t) * mask) @ B."""

    def __init__(self, names: tuple[str, ...], outs: list[int], in_features: int, layer: int,
                 adapters: list[LoraWeights], device: str = "cpu"):
        cols_a: list[torch.Tensor] = []
        blocks_b: list[torch.Tensor] = []
        owner: list[int] = []
        out_lo: list[int] = []  # per column: the slice of the fused output it writes (its projection's part)
        out_hi: list[int] = []
        offs = [0]
        for o in outs:
            offs.append(offs[-1] + o)
        for ai, ad in enumerate(adapters):
            for j, name in enumerate(names):
                ab = ad.modules.get((layer, name))
                if ab is None:
                    continue
                a, b = ab
                if a.shape[1] != in_features or b.shape[0] != outs[j]:
                    raise ValueError(f"adapter {ad.path}: layer {layer} {name} has shapes {tuple(a.shape)}, "
                                     f"{tuple(b.shape)}, the base has ({in_features} in, {outs[j]} out)")
                cols_a.append(a)
                block = torch.zeros(a.shape[0], offs[-1])
                block[:, offs[j]:offs[j + 1]] = b.t()
                blocks_b.append(block)
                owner += [ai] * a.shape[0]
                out_lo += [offs[j]] * a.shape[0]
                out_hi += [offs[j + 1]] * a.shape[0]
        self.empty = not cols_a
        self.kernel = None  # the compiled per-row kernel (extes.models.cpu_kernels), set by FastLlama
        if not self.empty:
            a = torch.cat(cols_a, 0).contiguous()  # (R, in)
            self.a_t = a.t().contiguous().to(device)  # (in, R)
            self.b = torch.cat(blocks_b, 0).contiguous().to(device)  # (R, out)
            self.owner = torch.tensor(owner, dtype=torch.long, device=device)  # (R,) adapter index per column
            self.owner_key = tuple(owner)
            if self.a_t.device.type == "cpu":  # the kernel's layout: rows of A, adapter column ranges, slices
                cols = [0]
                for ai in range(len(adapters)):
                    cols.append(cols[-1] + owner.count(ai))
                as_np = [torch.tensor(v, dtype=torch.long).numpy() for v in (cols, out_lo, out_hi)]
                self.layout = (a.numpy(), self.b.numpy(), *as_np)

    def delta_into(self, y: torch.Tensor, x: torch.Tensor, row_adapter: torch.Tensor, masks: dict) -> torch.Tensor:
        """y + each row's own adapter delta. row_adapter: (N,) adapter index per row, -1 for none. `masks`
        caches the (N, R) row masks for one forward pass (layers share their column layout)."""
        if self.kernel is not None and x.shape[0] <= LORA_KERNEL_MAX_ROWS:  # few rows: per row, no threading
            lora_delta(self.kernel, y, x, row_adapter, self.layout)
            return y
        key = self.owner_key
        mask = masks.get(key)
        if mask is None:
            mask = masks[key] = (row_adapter[:, None] == self.owner[None, :]).to(x.dtype)
        return torch.addmm(y, (x @ self.a_t) * mask, self.b)


# ----------------------------------------------------------------------------------------------------------
# The model


@dataclass
class LoraLinear:
    """A fused base projection and all adapters' LoRA for it: y = x W^T (+ b) + each row's own delta."""

    kernel: Kernel
    lora: GroupLora | None

    def __call__(self, x, row_adapter, masks):
        y = self.kernel(x)
        if row_adapter is not None and self.lora is not None:
            y = self.lora.delta_into(y, x, row_adapter, masks)
        return y


@dataclass
class Block:
    """One transformer layer: RMSNorm weights and the four fused projections (q/k/v, o, gate/up, down)."""

    attn_norm: torch.Tensor
    qkv: LoraLinear
    o: LoraLinear
    mlp_norm: torch.Tensor
    gate_up: LoraLinear
    down: LoraLinear

    @property
    def linears(self) -> tuple[LoraLinear, ...]:
        return self.qkv, self.o, self.gate_up, self.down


class FastLlama:
    """Weights of one LLaMA-family model (+ LoRA adapters) laid out for `forward`."""

    def __init__(self, hf_model, adapters: list[LoraWeights] = (), dtype: torch.dtype = torch.float32,
                 prepack: bool = True, device: str = "cpu", compiled: bool = True):
        cfg = hf_model.config
        why = unsupported_reason(cfg)
        if why:
            raise ValueError(f"the fast forward cannot run this model: {why}")
        inner = hf_model.model
        self.dtype = dtype
        self.device = torch.device(device)
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.window = int(getattr(cfg, "max_position_embeddings", 2048))
        self.adapters = list(adapters)
        self.layers: list[Block] = []
        with torch.no_grad():
            for li, layer in enumerate(inner.layers):
                lins = []
                for names in GROUPS:
                    mods = [getattr(getattr(layer, _PARENT[n]), n) for n in names]
                    w = torch.cat([m.weight.float() for m in mods], 0)
                    biases = [m.bias for m in mods]
                    b = None
                    if any(x is not None for x in biases):
                        b = torch.cat([x.float() if x is not None else torch.zeros(m.weight.shape[0])
                                       for x, m in zip(biases, mods)])
                    lora = GroupLora(names, [m.weight.shape[0] for m in mods], w.shape[1], li, self.adapters,
                                     device)
                    lins.append(LoraLinear(Kernel(w, b, dtype, prepack, device), None if lora.empty else lora))
                self.layers.append(Block(attn_norm=layer.input_layernorm.weight.float().to(device).clone(),
                                         qkv=lins[0], o=lins[1],
                                         mlp_norm=layer.post_attention_layernorm.weight.float().to(device).clone(),
                                         gate_up=lins[2], down=lins[3]))
            self.embed = inner.embed_tokens.weight.float().to(device).clone()
            self.norm = inner.norm.weight.float().to(device).clone()
            head = hf_model.lm_head
            self.head = Kernel(head.weight.float(), getattr(head, "bias", None), dtype, prepack, device)
            self._rotary = inner.rotary_emb
            self.cos = self.sin = torch.empty(0, self.head_dim, device=device)
            self._ensure_rope(min(self.window, 4096))
        self.vocab = self.head.out_features
        # decode attention and gathered LoRA: the compiled kernels (extes.models.cpu_kernels) on the CPU where
        # numba is there, else torch's batched matmuls (`_decode_attention`, masked LoRA); compiled=False
        # forces the latter
        self.attention_kernel = None
        if compiled and self.device.type == "cpu":
            kernels = compiled_kernels()
            if kernels is not None:
                self.attention_kernel = kernels.attention
                for block in self.layers:
                    for lin in block.linears:
                        if lin.lora is not None:
                            lin.lora.kernel = kernels.lora_delta

    @property
    def attention_with(self) -> str:
        return "numba" if self.attention_kernel is not None else "torch"

    @property
    def packed_with(self) -> str:
        return self.head.packed_with

    def kv_bytes_per_token(self) -> int:
        return self.n_layers * 2 * self.n_kv * self.head_dim * 4

    def _ensure_rope(self, n: int) -> None:
        if n <= self.cos.shape[0]:
            return
        n = min(max(n, 2 * self.cos.shape[0]), max(n, self.window))
        pos = torch.arange(n, dtype=torch.long)[None]
        probe = torch.zeros(1, n, self.head_dim)
        with torch.no_grad():
            cos, sin = self._rotary(probe, pos)
        self.cos = cos[0].float().to(self.device).contiguous()
        self.sin = sin[0].float().to(self.device).contiguous()

    def new_kv(self, rows: int, capacity: int, zeroed: bool = True) -> list[torch.Tensor]:
        """A KV buffer per layer: (2, rows, n_kv, capacity, head_dim), fp32: [0] keys, [1] values.
        Keys first, rows next, so that the keys of rows 0..B-1 form one strided batch of (S, D) matrices.

        zeroed=False leaves the memory as it was (about 6 ms less for a 900-token row on the 2-core
        machine). Only for a buffer one row fills in order from position 0 (a prefill): `forward` reads
        positions 0 .. start+T-1, all written before. A batch buffer must be zeros where decode attention
        is torch's batched matmul: it reads every row up to the longest, and masked garbage (NaN, inf) would
        still poison the sums; the compiled kernel reads each row only up to its own length."""
        make = torch.zeros if zeroed else torch.empty
        return [make(2, rows, self.n_kv, capacity, self.head_dim, device=self.device) for _ in range(self.n_layers)]

    def forward(self, ids: torch.Tensor, starts: torch.Tensor, kv: list[torch.Tensor],
                row_adapter: torch.Tensor | None, all_logits: bool = False) -> torch.Tensor:
        """Run `ids` (B, T) whose row b sits at positions starts[b] .. starts[b]+T-1 of its sequence, with
        the earlier positions' keys/values in kv[layer][b] (B rows of the buffers). Writes the new keys and
        values in place and returns the last position's logits (B, vocab), fp32.

        row_adapter: (B,) adapter index per row (-1 = base), or None when no row has an adapter.
        all_logits: return (B, T, vocab), every position's logits (teacher-forced comparisons).
        """
        b_sz, t = ids.shape
        h_q, h_kv, d = self.n_heads, self.n_kv, self.head_dim
        starts_l = starts.tolist()
        s_len = max(starts_l) + t
        self._ensure_rope(s_len)
        dev = self.device
        pos = starts[:, None] + torch.arange(t, device=dev)[None, :]  # (B, T)
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # (B, 1, T, D)
        cols = torch.arange(s_len, device=dev)
        mask = cols[None, None, :] <= pos[:, :, None]  # (B, T, S): causal, and only the row's own columns
        full = bool(mask.all())
        attn_mask = None if full else mask[:, None]
        # decode (one new token per row): an additive mask (B, 1, 1, S), 0 on the row's own columns
        kernel = self.attention_kernel if t == 1 and kv[0][0].is_contiguous() else None
        lengths = starts + 1 if kernel is not None else None
        neg_mask = None if full or t != 1 or kernel is not None else torch.zeros(mask.shape, device=dev).masked_fill_(
            ~mask, float("-inf"))[:, None, :, :]
        ra = None if row_adapter is None else (row_adapter if t == 1 else row_adapter.repeat_interleave(t))
        masks: dict = {}
        x = self.embed[ids]  # (B, T, H) fp32
        half = d // 2
        rows = torch.arange(b_sz, device=dev)
        for li, block in enumerate(self.layers):
            h = _rms(x, block.attn_norm, self.eps).reshape(b_sz * t, -1)
            qkv = block.qkv(h, ra, masks).reshape(b_sz, t, -1)
            # rotary embedding on the query and key heads together (one set of ops for both)
            qk = qkv[..., :(h_q + h_kv) * d].reshape(b_sz, t, h_q + h_kv, d).transpose(1, 2)
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), -1) * sin
            q, k = qk[:, :h_q], qk[:, h_q:]
            v = qkv[..., (h_q + h_kv) * d:].reshape(b_sz, t, h_kv, d).transpose(1, 2)
            buf = kv[li]
            _write_kv(buf, k, v, starts, starts_l, rows)
            keys, values = buf[0, :b_sz, :, :s_len], buf[1, :b_sz, :, :s_len]
            if kernel is not None:  # each row read up to its own length, from the whole buffer
                o = decode_attention(kernel, q, buf[0, :b_sz], buf[1, :b_sz], lengths, d ** -0.5)
            elif t == 1:
                o = _decode_attention(q, keys, values, neg_mask, d ** -0.5)
            else:
                o = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask,
                                                   is_causal=full and t > 1 and s_len == t,
                                                   scale=d ** -0.5, enable_gqa=h_kv != h_q)
            o = o.transpose(1, 2).reshape(b_sz * t, h_q * d)
            x = x + block.o(o, ra, masks).reshape(b_sz, t, -1)
            h = _rms(x, block.mlp_norm, self.eps).reshape(b_sz * t, -1)
            gu = block.gate_up(h, ra, masks)
            inter = gu.shape[-1] // 2
            x = x + block.down(F.silu(gu[:, :inter]) * gu[:, inter:], ra, masks).reshape(b_sz, t, -1)
        if all_logits:
            return self.head(_rms(x, self.norm, self.eps).reshape(b_sz * t, -1)).reshape(b_sz, t, -1)
        return self.head(_rms(x[:, -1], self.norm, self.eps))


def _write_kv(buf: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: torch.Tensor, starts_l: list[int],
              rows: torch.Tensor) -> None:
    """Write the new keys/values k, v (B, Hkv, T, D) of row b at positions starts[b] .. starts[b]+T-1."""
    b_sz, t = k.shape[0], k.shape[2]
    if b_sz == 1:
        s0 = starts_l[0]
        buf[0, 0, :, s0:s0 + t] = k[0]
        buf[1, 0, :, s0:s0 + t] = v[0]
    elif t == 1:
        buf[0][rows, :, starts] = k[:, :, 0]
        buf[1][rows, :, starts] = v[:, :, 0]
    else:
        for b, s0 in enumerate(starts_l):
            buf[0, b, :, s0:s0 + t] = k[b]
            buf[1, b, :, s0:s0 + t] = v[b]


def _decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, neg_mask: torch.Tensor | None,
                      scale: float) -> torch.Tensor:
    """Attention of one new query per row, grouped-query aware, as two batched matmuls that read each
    row's keys and values once, where they lie in the preallocated buffer (no copy, no repeat).

    q: (B, Hq, 1, D); keys/values: (B, Hkv, S, D) views; neg_mask: (B, 1, 1, S) additive (0 / -inf) or None.
    Returns (B, Hq, 1, D). Equal to scaled_dot_product_attention (fp32, up to rounding); on the 2-core
    development machine CPU's SDPA kernel took about three times as long for this shape (32 rows x 200
    positions), because it is built for many queries per row."""
    b, h_q, _, d = q.shape
    h_kv = keys.shape[1]
    qg = q.reshape(b, h_kv, h_q // h_kv, d)  # query head h uses kv head h // group, as transformers' repeat_kv
    scores = torch.matmul(qg, keys.transpose(-1, -2))  # (B, Hkv, G, S)
    scores.mul_(scale)
    if neg_mask is not None:
        scores.add_(neg_mask)
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, values).reshape(b, h_q, 1, d)


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as transformers' LlamaRMSNorm computes it in fp32 (`w * (x * rsqrt(mean(x^2) + eps))`), as
    one call to torch (F.rms_norm) instead of six ops."""
    return F.rms_norm(x, (x.shape[-1],), w, eps)
