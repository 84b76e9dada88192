"""What a model is: architecture, size, RoPE, quantization, memory at a context.

Owns the rows `edgerope info` prints, computed from a Model or from the ModelPlan of its
headers (edgerope.io.loading.plan: the same config and weight shapes, nothing computed);
memory figures from edgerope.engine.memory.
"""
from __future__ import annotations

import os

from edgerope.engine.cache import DEFAULT_KV_TYPE, KV_TYPES, kv_bytes
from edgerope.engine.memory import estimate


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


def _format_note(model) -> str:
    """What the weights are held as: int8's layout, or the MiB in each of a file's types."""
    if model.dtype == "int8":
        return " (int8 blocks of 32, one float16 scale each: 8.5 bits a weight)"
    if model.dtype == "auto":
        return " (" + ", ".join(f"{k} {v / _MB:.1f}"
                                for k, v in model.weights.formats().items()) + ")"
    return ""


def file_size(path) -> int:
    if path is None or not os.path.exists(path):
        return 0
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _ranges(idx: list[int]) -> str:
    """[15, 16, 17, 20] -> "15-17, 20"."""
    out, start = [], None
    for k, i in enumerate(idx):
        if start is None:
            start = i
        if k + 1 == len(idx) or idx[k + 1] != i + 1:
            out.append(f"{start}-{i}" if i > start else f"{i}")
            start = None
    return ", ".join(out)


def describe(model, n_ctx: int | None = None,
             kv_type: str = DEFAULT_KV_TYPE) -> list[tuple[str, str]]:
    """(label, value) rows for `edgerope info`; n_ctx: the context of the memory figures
    (default: the model's default context)."""
    cfg = model.config
    n_ctx = n_ctx or model.default_ctx()
    rows = [("path", str(model.path)), ("architecture", cfg.model_type),
            ("parameters", f"{parameter_count(model) / 1e6:.1f} M"),
            ("file size", f"{file_size(model.path) / _MB:.1f} MiB"),
            ("weights in memory", f"{model.dtype}, {model.weights.nbytes / _MB:.1f} MiB"
             + _format_note(model)),
            ("layers", str(cfg.num_hidden_layers)), ("hidden size", str(cfg.hidden_size)),
            ("attention heads", f"{cfg.num_attention_heads} query / {cfg.num_key_value_heads} "
                                f"key-value (GQA {cfg.gqa_ratio}:1), head dim {cfg.head_dim}"
                                + (" (sliding layers)" if len(set(cfg.layer_head_dims)) > 1
                                   else "")),
            ("vocabulary", str(cfg.vocab_size)),
            ("context (trained)", str(cfg.max_position_embeddings))]
    if cfg.sliding_window:
        n_sw = sum(t == "sliding_attention" for t in cfg.layer_types)
        rows.append(("sliding window", f"{cfg.sliding_window} on {n_sw} of "
                                       f"{cfg.num_hidden_layers} layers"))
    if len(set(zip(cfg.layer_head_dims, cfg.layer_kv_heads))) > 1:
        for lt in sorted(set(cfg.layer_types)):
            idx = [i for i, t in enumerate(cfg.layer_types) if t == lt]
            shapes = sorted({(cfg.layer_head_dims[i], cfg.layer_kv_heads[i]) for i in idx})
            rows.append((f"attention ({lt.replace('_attention', '')})", "; ".join(
                f"head dim {d}, {kv} key-value heads" for d, kv in shapes)
                + f"{' (K = V)' if any(cfg.k_eq_v[i] for i in idx) else ''}, {len(idx)} layers"))
    shared = [i for i in range(cfg.num_hidden_layers) if not cfg.stores_kv(i)]
    if shared:
        sources = sorted({cfg.kv_source[i] for i in shared})
        rows.append(("KV sharing", f"layers {_ranges(shared)} read the KV cache of layer"
                     f"{'s' if len(sources) > 1 else ''} "
                     + ", ".join(f"{j} ({cfg.layer_types[j].replace('_attention', '')})"
                                 for j in sources)
                     + f"; the cache holds {cfg.num_hidden_layers - len(shared)} layers"))
    if len(set(cfg.layer_ffn)) > 1:
        rows.append(("feed-forward", ", ".join(f"{w} on {cfg.layer_ffn.count(w)} layers"
                                               for w in sorted(set(cfg.layer_ffn)))))
    if cfg.ple_dim:
        rows.append(("per-layer embeddings", f"{cfg.ple_dim} per layer, "
                                             f"{cfg.ple_vocab} rows"))
    if cfg.moe is not None:
        rows.append(("experts", f"{cfg.moe.top_k} of {cfg.moe.num_experts} per token, width "
                                f"{cfg.moe.intermediate_size}, beside the dense MLP"))
    for lt in sorted(set(cfg.layer_types)):
        s = cfg.rope[lt]
        ia, _ = s.pairs()
        scaling = s.rope_type + (f" x{s.factor:g}" if s.factor else "")
        rows.append((f"RoPE ({lt.replace('_attention', '')})",
                     f"{2 * len(ia)} of {s.head_dim} channels rotate, {s.pairing} pairing, "
                     f"theta {s.theta:g}, {scaling}"
                     + (f", attention factor {s.attention_factor:.4g}"
                        if s.attention_factor != 1.0 else "")))
    mem = estimate(model, n_ctx, kv_type=kv_type)
    rows.append((f"RAM needed at context {n_ctx}", mem.summary()))
    rows.append((f"KV cache at context {n_ctx}",
                 ", ".join(f"{t} {kv_bytes(cfg, n_ctx, t, 4) / _MB:.1f} MiB" for t in KV_TYPES)
                 + " (4 sinks)"))
    if model.tokenizer is not None:
        rows.append(("tokenizer", type(model.tokenizer).__name__))
    return rows
