"""What a loaded model is: architecture, size, RoPE, quantization, memory at a context.

Owns the numbers `edgerope info` prints; everything is computed from the loaded Model.
"""
from __future__ import annotations

import os

from .cache import DEFAULT_KV_TYPE, KV_TYPES, kv_bytes


_MB = 1024 * 1024


def parameter_count(model) -> int:
    W, seen, n = model.weights, set(), 0
    for lin in W.linears():
        if id(lin) not in seen:
            seen.add(id(lin))
            n += lin.out_features * lin.in_features + (0 if lin.bias is None else lin.out_features)
    norms = [W.out_norm] + [getattr(lw, k) for lw in W.layers for k in
                            ("attn_norm", "ffn_norm", "q_norm", "k_norm", "post_attn_norm",
                             "post_ffn_norm")]
    return n + sum(x.weight.size for x in norms if x is not None)


def activation_bytes(cfg, n_ctx: int, n_batch: int = 512) -> int:
    """Float32 buffers of a session (edgerope.model._Buffers), int8 activation copies, the
    attention scratch and the last-token logits."""
    B = min(n_batch, n_ctx)
    inner = cfg.intermediate_size * (2 if cfg.mlp == "gated" else 1)
    per_row = (4 * cfg.hidden_size + 3 * cfg.q_dim + 4 * cfg.kv_dim + inner
               + cfg.intermediate_size)
    quantized = B * (cfg.hidden_size + cfg.q_dim + cfg.intermediate_size) * 5 // 4
    return 4 * (B * per_row + cfg.vocab_size + 16 * (n_ctx + B)) + quantized


def memory_estimate(model, n_ctx: int, n_batch: int = 512, kv_type: str = DEFAULT_KV_TYPE,
                    n_keep: int = 4) -> dict:
    w = model.weights.nbytes
    kv = kv_bytes(model.config, n_ctx, kv_type, n_keep)
    act = activation_bytes(model.config, n_ctx, n_batch)
    return {"weights": w, "kv_cache": kv, "activations": act, "total": w + kv + act}


def file_size(path) -> int:
    if path is None or not os.path.exists(path):
        return 0
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def describe(model, n_ctx: int = 4096, kv_type: str = DEFAULT_KV_TYPE) -> list[tuple[str, str]]:
    """(label, value) rows for `edgerope info`."""
    cfg = model.config
    rows = [("path", str(model.path)), ("architecture", cfg.model_type),
            ("parameters", f"{parameter_count(model) / 1e6:.1f} M"),
            ("file size", f"{file_size(model.path) / _MB:.1f} MiB"),
            ("weights in memory", f"{model.dtype}, {model.weights.nbytes / _MB:.1f} MiB"
             + (" (int8 blocks of 32, one float16 scale each: 8.5 bits a weight)"
                if model.dtype == "int8" else "")),
            ("layers", str(cfg.num_hidden_layers)), ("hidden size", str(cfg.hidden_size)),
            ("attention heads", f"{cfg.num_attention_heads} query / {cfg.num_key_value_heads} "
                                f"key-value (GQA {cfg.gqa_ratio}:1), head dim {cfg.head_dim}"),
            ("vocabulary", str(cfg.vocab_size)),
            ("context (trained)", str(cfg.max_position_embeddings))]
    if cfg.sliding_window:
        n_sw = sum(t == "sliding_attention" for t in cfg.layer_types)
        rows.append(("sliding window", f"{cfg.sliding_window} on {n_sw} of "
                                       f"{cfg.num_hidden_layers} layers"))
    for lt in sorted(set(cfg.layer_types)):
        s = cfg.rope[lt]
        ia, _ = s.pairs()
        scaling = s.rope_type + (f" x{s.factor:g}" if s.factor else "")
        rows.append((f"RoPE ({lt.replace('_attention', '')})",
                     f"{2 * len(ia)} of {s.head_dim} channels rotate, {s.pairing} pairing, "
                     f"theta {s.theta:g}, {scaling}"
                     + (f", attention factor {s.attention_factor:.4g}"
                        if s.attention_factor != 1.0 else "")))
    mem = memory_estimate(model, n_ctx, kv_type=kv_type)
    rows.append((f"RAM at context {n_ctx}",
                 f"{mem['total'] / _MB:.1f} MiB (weights {mem['weights'] / _MB:.1f} + KV cache "
                 f"{kv_type} {mem['kv_cache'] / _MB:.1f} + buffers "
                 f"{mem['activations'] / _MB:.1f})"))
    rows.append((f"KV cache at context {n_ctx}",
                 ", ".join(f"{t} {kv_bytes(cfg, n_ctx, t, 4) / _MB:.1f} MiB" for t in KV_TYPES)
                 + " (4 sinks)"))
    if model.tokenizer is not None:
        rows.append(("tokenizer", type(model.tokenizer).__name__))
    return rows
