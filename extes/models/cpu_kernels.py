"""Compiled CPU kernels for the fast forward (numba), each with the plain-torch path as its fallback.

Decode attention (one new query per row) is the one op of a batched CPU decode step that torch does badly:
its batched matmul packs every row's keys and values before multiplying them by three query vectors, and
it reads every row up to the longest row of the batch. Measured on the 2-core development machine, one
thread, 20 rows of 150-450 cached positions, 30 layers of SmolLM2-135M (attention alone): the torch
path 48 ms per step, this kernel 22-23 ms (`bench/generation.py` (5) times a whole decode step both
ways). The kernel reads each row's keys and values once, only up to the row's own length, and keeps the
scores of one head in a small scratch buffer.

Everything is fp32, as the torch path: scores, softmax (max-subtracted), the weighted sum of the values.
Results agree with torch's to rounding (fastmath lets the compiler reorder the sums; about 1e-7 here).

Gathered LoRA (each row adds its own adapter's low-rank delta) is the other: as masked matmuls over all
adapters' columns its ops are so small that torch's threading costs more than the arithmetic. With two
threads, three rows (one base, two LoRA arms) of a 30-layer decode step spent about 17 ms in them against
4 ms for one row. The kernel computes each row's delta from its own adapter's columns only, on one
thread; it is used up to LORA_KERNEL_MAX_ROWS rows, beyond which the matmuls are quicker.

`compiled_kernels()` returns both, or None with the reason logged once (numba not installed, compilation
failed, or EXTES_NO_NUMBA=1); the caller then keeps the torch paths.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict = {}


def _decode_attention_py(q, keys, values, lengths, scale, out):  # noqa: C901 - one loop nest, compiled
    """q, out: (B, Hkv, G, D); keys, values: (>=B, Hkv, capacity, D), C-contiguous fp32; lengths: (B,)
    int64, row b attends to positions 0 .. lengths[b]-1. Query head h*G+g uses kv head h."""
    n_rows, n_kv, group, dim = q.shape
    longest = 1
    for b in range(n_rows):
        longest = max(longest, lengths[b])
    s = np.empty((group, longest), np.float32)
    acc = np.empty((group, dim), np.float32)
    for b in range(n_rows):
        n = lengths[b]
        for h in range(n_kv):
            k = keys[b, h]
            v = values[b, h]
            qh = q[b, h]
            for p in range(n):
                for g in range(group):
                    a = np.float32(0.0)
                    for d in range(dim):
                        a += qh[g, d] * k[p, d]
                    s[g, p] = a * scale
            for g in range(group):
                m = s[g, 0]
                for p in range(1, n):
                    m = max(m, s[g, p])
                total = np.float32(0.0)
                for p in range(n):
                    e = np.exp(s[g, p] - m)
                    s[g, p] = e
                    total += e
                inv = np.float32(1.0) / total
                for p in range(n):
                    s[g, p] *= inv
            acc[:, :] = 0.0
            for p in range(n):
                for g in range(group):
                    w = s[g, p]
                    for d in range(dim):
                        acc[g, d] += w * v[p, d]
            for g in range(group):
                for d in range(dim):
                    out[b, h, g, d] = acc[g, d]


def _lora_delta_py(x, y, row_adapter, a, b, cols, out_lo, out_hi):
    """y[r] += (a[j] . x[r]) * b[j, out_lo[j]:out_hi[j]] for the columns j of row r's adapter.
    x: (N, in); y: (N, out), in place; row_adapter: (N,) int64, -1 = none; a: (R, in); b: (R, out);
    cols: (adapters + 1,) int64, adapter i owns columns cols[i] .. cols[i+1]-1; out_lo/out_hi: (R,)
    int64, the slice of the fused output a column writes (its projection's part)."""
    n_rows, k = x.shape
    for r in range(n_rows):
        ad = row_adapter[r]
        if ad < 0:
            continue
        for j in range(cols[ad], cols[ad + 1]):
            h = np.float32(0.0)
            for i in range(k):
                h += x[r, i] * a[j, i]
            for o in range(out_lo[j], out_hi[j]):
                y[r, o] += h * b[j, o]


def _compile():
    """Compile both kernels. numba keeps the machine code in __pycache__ (or a per-user directory) so an
    engine starts without recompiling; where it can write neither, they are compiled without the cache."""
    import numba

    try:
        return _build(numba, cache=True)
    except Exception as exc:  # e.g. no writable cache directory: compile again, uncached
        log.info("numba cannot cache the CPU kernels (%s: %s); compiling them uncached", type(exc).__name__, exc)
    return _build(numba, cache=False)


def _build(numba, cache: bool):
    jit = numba.njit(fastmath=True, nogil=True, cache=cache, boundscheck=False, error_model="numpy")
    decode_attention, lora_delta = jit(_decode_attention_py), jit(_lora_delta_py)
    # compile now for the signatures the engine uses (a first request should not wait for it)
    f4, i8 = np.zeros((1, 1, 1, 4), np.float32), np.ones(1, np.int64)
    decode_attention(f4, f4, f4, i8, np.float32(1.0), np.empty_like(f4))
    f2, z = np.zeros((1, 4), np.float32), np.zeros(1, np.int64)
    lora_delta(f2, f2.copy(), z, f2, f2, np.zeros(2, np.int64), z, z)
    return CompiledKernels(decode_attention, lora_delta)


@dataclass(frozen=True)
class CompiledKernels:
    attention: object  # decode_attention(q, keys, values, lengths, scale, out), see `decode_attention`
    lora_delta: object  # lora_delta(x, y, row_adapter, a, b, cols, out_lo, out_hi), see `lora_delta`


def compiled_kernels() -> CompiledKernels | None:
    """The compiled kernels, or None (reason logged once) where they cannot be had."""
    with _lock:
        if "kernels" not in _state:
            kernels, why = None, None
            if os.environ.get("EXTES_NO_NUMBA", "") not in ("", "0"):
                why = "EXTES_NO_NUMBA is set"
            else:
                try:
                    kernels = _compile()
                except Exception as exc:  # numba missing, or a numba/numpy/LLVM mismatch: keep torch's path
                    why = f"{type(exc).__name__}: {exc}"
            if why:
                log.info("compiled CPU kernels unavailable (%s); using torch's batched matmuls for decode "
                         "attention and LoRA", why)
            _state["kernels"] = kernels
        return _state["kernels"]


_pool = None
_pool_size = 0
_SPLIT_MIN_POSITIONS = 2048  # below this many positions in a call, one thread is quicker than handing out work


def _workers(n: int):
    global _pool, _pool_size
    from concurrent.futures import ThreadPoolExecutor

    with _lock:
        if _pool is None or _pool_size < n:
            old, _pool, _pool_size = _pool, ThreadPoolExecutor(n, thread_name_prefix="extes-attention"), n
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def _split(lengths: list[int], parts: int) -> list[int]:
    """Row boundaries of `parts` contiguous chunks with about equal numbers of positions."""
    total, bounds, acc = sum(lengths), [0], 0
    for i, n in enumerate(lengths):
        acc += n
        if len(bounds) < parts and acc >= total * len(bounds) / parts:
            bounds.append(i + 1)
    if bounds[-1] != len(lengths):
        bounds.append(len(lengths))
    return bounds


def decode_attention(kernel, q, keys, values, lengths, scale: float, threads: int | None = None):
    """Run the attention kernel on torch tensors. q: (B, Hq, 1, D); keys/values: the layer's buffers (>=B,
    Hkv, capacity, D), C-contiguous fp32 on the CPU; lengths: (B,) int64 positions per row. Returns
    (B, Hq, 1, D). With enough work the rows are split over `threads` (default: torch's intra-op count)
    in chunks of about equal numbers of positions, run at once (the kernel releases the GIL)."""
    b, h_q, _, d = q.shape
    h_kv = keys.shape[1]
    qg = q.reshape(b, h_kv, h_q // h_kv, d).contiguous()
    out = torch.empty_like(qg)
    args = (qg.numpy(), keys.numpy(), values.numpy(), lengths.numpy(), np.float32(scale), out.numpy())
    threads = torch.get_num_threads() if threads is None else threads
    n = lengths.tolist()
    if threads > 1 and b > 1 and sum(n) >= _SPLIT_MIN_POSITIONS:
        bounds = _split(n, min(threads, b))
        chunks = [tuple(x if i == 4 else x[lo:hi] for i, x in enumerate(args))  # all but the scale are per row
                  for lo, hi in zip(bounds, bounds[1:])]
        pending = [_workers(len(chunks) - 1).submit(kernel, *c) for c in chunks[1:]]
        kernel(*chunks[0])
        for f in pending:
            f.result()
    else:
        kernel(*args)
    return out.reshape(b, h_q, 1, d)


# Up to this many rows the compiled LoRA kernel is quicker than the masked matmuls (one thread, 576-wide
# projections: 3 rows 19 vs 29 us for q/k/v, 28 vs 42 us for gate/up); from about 20 rows on the matmuls
# are (20 rows: 62 vs 58 us, 165 vs 89 us), so larger batches and prefill chunks keep them.
LORA_KERNEL_MAX_ROWS = 8


def lora_delta(kernel, y, x, row_adapter, layout) -> None:
    """Add each row's own adapter delta to y (N, out) in place, on this thread. x: (N, in) fp32 CPU;
    row_adapter: (N,) int64 (-1 = none); layout: (a (R, in), b (R, out), cols, out_lo, out_hi), numpy."""
    kernel(x.contiguous().numpy(), y.numpy(), row_adapter.numpy(), *layout)
