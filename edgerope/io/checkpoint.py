"""Hugging Face checkpoint tensors -> edgerope weights.

Each architecture's literal map from internal names to checkpoint names is its `hf_names`
in edgerope.archs (".weight"/".bias" are appended). Loading fuses what one matmul can do (q|k|v, gate|up),
reorders per-head fused qkv layouts (GPT-NeoX, Persimmon) into [all q | all k | all v],
quantizes matmul weights to int8 blocks at load (or keeps float32), and keeps norms and biases
in float32. Tensors are read from memory maps one at a time.
"""
from __future__ import annotations

import os
import re
import warnings

import numpy as np

from edgerope import archs
from edgerope.archs.config import ModelConfig
from edgerope.errors import EdgeropeWarning, WeightsError
from edgerope.formats import MatrixSpec, pages
from edgerope.formats.q8 import ScaleRangeError
from edgerope.formats.linear import Linear, check_finite
from edgerope.io.safetensors import Checkpoint, to_float32
from edgerope.engine.weights import (EMBED_DTYPE, LayerWeights, ModelWeights, MoEWeights, Norm,
                                     PLEWeights)

# Where multimodal checkpoints (Gemma 3 / 4) put the text decoder's tensors: (start of the
# name, its replacement): "language_model.model.layers..." (older transformers) or
# "model.language_model.layers..." (transformers 5).
_PREFIXES = (("", ""), ("", "language_model."), ("model.", "model.language_model."))


class SafetensorsSource:
    """Tensors of a Hugging Face checkpoint, read from memory maps one at a time."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt, self.where = ckpt, ckpt.dir
        # the file to name in messages about the whole checkpoint (the directory if sharded)
        self.label = ckpt.files[0].path if len(ckpt.files) == 1 else ckpt.dir

    def __contains__(self, name):
        return name in self.ckpt

    def names(self):
        return self.ckpt.names()

    def shape(self, name):
        return tuple(self.ckpt.shape(name))

    def float32(self, name) -> np.ndarray:
        return np.array(self.ckpt.float32(name), dtype=np.float32, copy=True)

    def linear(self, name, dtype, bias, perm=None) -> Linear:
        """`perm`: output-row order to apply (row i of the result = stored row perm[i])."""
        sd = self.ckpt.dtype(name)
        raw = self.ckpt.raw(name)
        if perm is not None:
            raw, bias = raw[perm], (None if bias is None else bias[perm])
        return Linear.from_float(raw, dtype, bias, convert=lambda a: to_float32(a, sd))


class HeaderSource:
    """Another source read for its header only: tensor names and shapes. `linear` gives the
    MatrixSpec loading would build and `float32` a zero stand-in (pages never touched), so
    load_weights over it plans a model -- the tensors it uses, each matrix's shape and format,
    the bytes they take -- without reading a weight or loading a kernel (`edgerope info`)."""

    def __init__(self, src):
        self.src, self.where = src, src.where
        self.label = getattr(src, "label", src.where)
        self.config_tensors = getattr(src, "config_tensors", set())

    def __contains__(self, name):
        return name in self.src

    def names(self):
        return self.src.names()

    def shape(self, name):
        return tuple(self.src.shape(name))

    def float32(self, name) -> np.ndarray:
        return np.zeros(self.shape(name), np.float32)

    def linear(self, name, dtype, bias, perm=None) -> MatrixSpec:
        n, k = self.shape(name)
        fmt = self.src.format_of(name, dtype) if hasattr(self.src, "format_of") else dtype
        return MatrixSpec(n, k, fmt, bias is not None)

    @staticmethod
    def from_float(src, dtype, bias=None) -> MatrixSpec:
        return MatrixSpec(*src.shape, dtype, bias is not None)


def _concat(make):
    """q|k|v or gate|up as one matrix (Linear.concat, or MatrixSpec.concat when planning):
    `make()` builds the parts in ordinary memory, the concatenation copies them into weight
    memory (edgerope.formats.pages) -- dead parts would otherwise stay in its maps."""
    with pages.ordinary():
        parts = make()
    return type(parts[0]).concat(parts) if len(parts) > 1 else parts[0].in_weight_memory()


class _Reader:
    """Finds tensors by internal name in a source (safetensors, GGUF) and checks shapes."""

    def __init__(self, src, names: dict[str, str], prefixes=_PREFIXES):
        self.src, self.names = src, names
        self.used: set[str] = set()  # tensors read (the rest are reported as unused)
        self.layout = next((p for p in prefixes if names["embed"].startswith(p[0])
                            and self._apply(p, names["embed"]) + ".weight" in src), None)
        if self.layout is None:
            raise WeightsError(f"{src.where}: tensor '{names['embed']}.weight' not found "
                               f"(is this a checkpoint of the configured architecture?)")
        # a multimodal checkpoint: the text decoder's tensors start with this
        self.prefix = self.layout[1]

    @staticmethod
    def _apply(layout, name):
        old, new = layout
        return new + name[len(old):] if name.startswith(old) else name

    def name(self, key, i=None, h=None, suffix="weight"):
        names = self.names[key]
        for pattern in (names if isinstance(names, tuple) else (names,)):
            name = self._apply(self.layout, pattern.format(i=i, h=h))
            name = name if suffix is None else name + "." + suffix
            if name in self.src or pattern is names[-1] or isinstance(names, str):
                return name

    def has(self, key, i=None, suffix="weight", h=0):
        return key in self.names and self.name(key, i, h, suffix) in self.src

    def _check(self, name, shape):
        if name not in self.src:
            raise WeightsError(f"{self.src.where}: tensor '{name}' is missing")
        found = self.src.shape(name)
        if shape is not None and tuple(found) != tuple(shape):
            raise WeightsError(f"{self.src.where}: tensor '{name}' has shape {list(found)}, "
                               f"expected {list(shape)}")
        self.used.add(name)
        return name

    def array(self, key, shape, i=None, h=None, suffix="weight") -> np.ndarray:
        name = self._check(self.name(key, i, h, suffix), shape)
        a = self.src.float32(name)
        try:
            check_finite(a)
        except ScaleRangeError as e:
            raise WeightsError(f"{self.src.where}: tensor '{name}': {e}") from None
        return a

    def linear(self, key, shape, dtype, i=None, bias=False, perm=None) -> Linear:
        name = self._check(self.name(key, i), shape)
        b = self.array(key, (shape[0],), i, suffix="bias") if bias else None
        try:
            return self.src.linear(name, dtype, b, perm)
        except ScaleRangeError as e:
            raise WeightsError(f"{self.src.where}: tensor '{name}': {e}") from None


def per_head_qkv_order(n_heads: int, head_dim: int) -> np.ndarray:
    """Row order turning a fused qkv laid out per head as [h][q|k|v][D] into [q | k | v]."""
    return np.arange(3 * n_heads * head_dim).reshape(n_heads, 3, head_dim).swapaxes(0, 1).ravel()


def per_group_qkv_order(n_heads: int, n_kv: int, head_dim: int) -> np.ndarray:
    """Row order turning a fused qkv laid out per KV group as [g][q of its heads | k | v][D]
    into [q | k | v]."""
    r = n_heads // n_kv
    rows = np.arange((n_heads + 2 * n_kv) * head_dim).reshape(n_kv, r + 2, head_dim)
    return np.concatenate([rows[:, :r].reshape(-1), rows[:, r].reshape(-1),
                           rows[:, r + 1].reshape(-1)])


def _progress(n: int, desc: str):
    """range(n) with a progress bar on a terminal, shown only if it takes over a second."""
    from edgerope.runtime import progress
    return progress(range(n), desc=desc, unit="layer", delay=1.0, leave=False)




def load_weights(src, cfg: ModelConfig, dtype: str, names: dict[str, str] | None = None,
                 norm_plus_one_stored: bool = False, qkv_concat: bool = False) -> ModelWeights:
    """Read every tensor the configured architecture needs from `src` (a Checkpoint or a
    source with the SafetensorsSource interface). `norm_plus_one_stored`: the file holds
    Gemma's norm weights as 1 + w already (llama.cpp's GGUF conversion does that).
    `qkv_concat`: a fused qkv is stored as [all q | all k | all v] whatever the Hugging Face
    layout (per head: GPT-NeoX, Persimmon; per KV group: Falcon 40B) -- llama.cpp's files."""
    if isinstance(src, Checkpoint):
        src = SafetensorsSource(src)
    r = _Reader(src, names or archs.get(cfg.model_type).hf_names,
                _PREFIXES if names is None else (("", ""),))
    H, V, Hq = cfg.hidden_size, cfg.vocab_size, cfg.num_attention_heads

    def norm(key, n, i=None, kind=None, groups=1, per_head=False):
        kind = kind or cfg.norm
        if norm_plus_one_stored and kind == "rms1p":
            kind = "rms"
        if per_head:
            w = np.stack([r.array(key, (n,), i, h) for h in range(groups)])
            b = np.zeros_like(w)
        else:
            w = r.array(key, (n,), i)[None, :]
            has_b = kind == "layer" and r.has(key, i, "bias")
            b = r.array(key, (n,), i, suffix="bias")[None, :] if has_b else np.zeros_like(w)
        return Norm("layer" if kind.startswith("layer") else kind, w, b, cfg.norm_eps)

    edtype = EMBED_DTYPE.get(dtype, dtype)
    embed = r.linear("embed", (V, H), edtype)
    layers = []
    for i in _progress(cfg.num_hidden_layers, f"loading {os.path.basename(str(src.where))}"):
        D, Hkv, I = cfg.layer_head_dims[i], cfg.layer_kv_heads[i], cfg.layer_ffn[i]
        if cfg.fused_qkv == "per_head" and not qkv_concat:
            wqkv = r.linear("wqkv", (3 * Hq * D, H), dtype, i, cfg.qkv_bias,
                            perm=per_head_qkv_order(Hq, D))
        elif cfg.fused_qkv == "concat" or (cfg.fused_qkv and qkv_concat):
            # one matrix, rows [q | k | v] (Phi-3, Falcon 7B, any fused qkv of a GGUF file)
            wqkv = r.linear("wqkv", ((Hq + 2 * Hkv) * D, H), dtype, i, cfg.qkv_bias)
        elif cfg.fused_qkv == "per_group":  # Falcon 40B: per KV group [queries | k | v]
            wqkv = r.linear("wqkv", ((Hq + 2 * Hkv) * D, H), dtype, i, cfg.qkv_bias,
                            perm=per_group_qkv_order(Hq, Hkv, D))
        else:
            names = ["wq"]
            if cfg.stores_kv(i):
                names += ["wk"] if cfg.k_eq_v[i] else ["wk", "wv"]
            else:  # checkpoints may still hold the unused K/V of a KV-sharing layer
                r.used.update(r.name(k, i) for k in ("wk", "wv", "k_norm") if r.has(k, i))
            rows = {"wq": Hq * D, "wk": Hkv * D, "wv": Hkv * D}
            wqkv = _concat(lambda: [r.linear(n, (rows[n], H), dtype, i, cfg.qkv_bias)
                                    for n in names])
        if cfg.mlp == "gated":
            if "w_gate_up" in r.names:
                w_in = r.linear("w_gate_up", (2 * I, H), dtype, i, cfg.mlp_bias)
            else:
                w_in = _concat(lambda: [r.linear(n, (I, H), dtype, i, cfg.mlp_bias)
                                        for n in ("w_gate", "w_up")])
            w_down = r.linear("w_down", (H, I), dtype, i, cfg.mlp_bias)
        else:
            w_in = r.linear("w_fc1", (I, H), dtype, i, cfg.mlp_bias)
            w_down = r.linear("w_fc2", (H, I), dtype, i, cfg.mlp_bias)
        lw = LayerWeights(attn_norm=norm("attn_norm", H, i) if cfg.pre_norm else None,
                          wqkv=wqkv, wo=r.linear("wo", (H, Hq * D), dtype, i, cfg.o_bias),
                          w_in=w_in, w_down=w_down)
        if cfg.pre_norm and (cfg.residual == "sequential" or not cfg.shared_norm):
            lw.ffn_norm = norm("ffn_norm", H, i)
        if cfg.sandwich:
            lw.post_attn_norm = norm("post_attn_norm", H, i)
            lw.post_ffn_norm = norm("post_ffn_norm", H, i)
        if cfg.qk_norm == "rms_full":  # one norm over all heads' channels
            lw.q_norm = norm("q_norm", Hq * D, i, "rms")
            lw.k_norm = norm("k_norm", Hkv * D, i, "rms")
        elif cfg.qk_norm:
            per_head = cfg.qk_norm == "layer_per_head"
            lw.q_norm = norm("q_norm", D, i, cfg.qk_norm, Hq, per_head)
            if cfg.stores_kv(i):
                lw.k_norm = norm("k_norm", D, i, cfg.qk_norm, Hkv, per_head)
        if cfg.layer_scalar:
            lw.layer_scalar = float(r.array("layer_scalar", (1,), i, suffix=None)[0])
        if cfg.ple_dim:
            P = cfg.ple_dim
            lw.ple_gate = r.linear("ple_gate", (P, H), dtype, i)
            lw.ple_out = r.linear("ple_out", (H, P), dtype, i)
            lw.ple_post_norm = norm("ple_post_norm", H, i)
        if cfg.moe is not None:
            lw.moe = _moe_weights(r, cfg, i, dtype, norm)
        layers.append(lw)
    ple = None
    if cfg.ple_dim:
        LP = cfg.num_hidden_layers * cfg.ple_dim
        ple = PLEWeights(embed=r.linear("ple_embed", (cfg.ple_vocab, LP), edtype),
                         proj=r.linear("ple_proj", (LP, H), dtype),
                         norm=norm("ple_norm", cfg.ple_dim))
    out_norm = norm("out_norm", H)
    # Tied heads share the embedding's arrays (transformers ties them even when a file also
    # stores an lm_head tensor).
    lm_head = embed if cfg.tie_word_embeddings else r.linear("lm_head", (V, H), edtype,
                                                             bias=cfg.lm_head_bias)
    # tensors the config was read from (a GGUF rope_freqs) count as used
    unused = set(src.names()) - r.used - getattr(src, "config_tensors", set())
    if cfg.tie_word_embeddings:  # a stored copy of the tied head is harmless
        unused = {n for n in unused if not n.endswith(r.names["lm_head"] + ".weight")}
    where = getattr(src, "label", src.where)
    if r.prefix:  # a multimodal checkpoint: its other towers get one line of their own
        others = {n for n in unused if not n.startswith(r.prefix)}
        unused -= others
        if others:
            towers = sorted({".".join(n.split(".")[:2]) for n in others})
            warnings.warn(f"{where}: {len(others)} tensors of {', '.join(towers)} not used: "
                          f"edgerope runs the text decoder only", EdgeropeWarning, stacklevel=2)
    warn_unused(where, unused, cfg.model_type)
    return ModelWeights(embed=embed, layers=layers, out_norm=out_norm, lm_head=lm_head,
                        ple=ple)


def _moe_weights(r, cfg, i, dtype, norm) -> MoEWeights:
    H, E, I = cfg.hidden_size, cfg.moe.num_experts, cfg.moe.intermediate_size
    w_in = r.array("experts_in", (E, 2 * I, H), i, suffix=None)
    w_down = r.array("experts_down", (E, H, I), i, suffix=None)
    try:
        from_float = getattr(r.src, "from_float", Linear.from_float)
        experts_in = [from_float(w_in[e], dtype) for e in range(E)]
        experts_down = [from_float(w_down[e], dtype) for e in range(E)]
    except ScaleRangeError as e:
        raise WeightsError(f"{r.src.where}: experts of layer {i}: {e}") from None
    del w_in, w_down
    # the router stays float32 (as llama.cpp keeps ffn_gate_inp): int8 rounding could change
    # which experts a token gets
    return MoEWeights(router=r.linear("router_proj", (E, H), "float32", i),
                      router_scale=r.array("router_scale", (H,), i, suffix=None),
                      expert_scale=r.array("router_expert_scale", (E,), i, suffix=None),
                      w_in=experts_in, w_down=experts_down,
                      post_norm_1=norm("post_ffn_norm_1", H, i),
                      pre_norm_2=norm("pre_ffn_norm_2", H, i),
                      post_norm_2=norm("post_ffn_norm_2", H, i))


# Tensors checkpoints carry that no model reads: buffers older transformers saved (rotary
# inv_freq tables, position_ids, GPT-2/GPT-J/GPT-NeoX causal-mask buffers `attn.bias`,
# `attn.masked_bias`); transformers ignores the same ones when it loads
# (`_keys_to_ignore_on_load_unexpected`, and the inv_freq / position_ids patterns of
# PreTrainedModel._adjust_missing_and_unexpected_keys).
_HARMLESS = re.compile(r"(rotary_emb\.(original_)?inv_freq|(^|\.)position_ids"
                       r"|\.attn\.(masked_)?bias|\.attention\.(masked_)?bias)$")


def warn_unused(where: str, names, arch: str, show: int = 3) -> None:
    """One EdgeropeWarning naming the file, how many tensors the architecture does not read
    and the first few names (known-harmless buffers are not counted)."""
    names = sorted(n for n in names if not _HARMLESS.search(n))
    if not names:
        return
    head = ", ".join(names[:show]) + (", ..." if len(names) > show else "")
    warnings.warn(f"{where}: {len(names)} tensor{'s' if len(names) > 1 else ''} not used by "
                  f"{arch}: {head}", EdgeropeWarning, stacklevel=3)
