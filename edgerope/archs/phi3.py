"""Phi-3 / Phi-4-mini: Llama-shaped with fused projections (qkv_proj = [q | k | v],
gate_up_proj = [gate | up]), partial RoPE on a prefix of `partial_rotary_factor` of each head
(Phi-4-mini: 0.75; default 1.0) with longrope scaling, and a sliding window on every layer
when `sliding_window` is set."""
from edgerope.archs.base import GGUF_NAMES, Arch, GGUFArch, LLAMA_NAMES

_L = "model.layers.{i}."


def _layers(cfg, n_layers, window):
    return (["sliding_attention"] * n_layers if window is not None else None), window


def _gguf(meta, raw):
    rope = meta.partial_rope()
    if meta.has("rope_factors_long.weight") or meta.has("rope_factors_short.weight"):
        # longrope (Phi-3 128k, Phi-4-mini): the per-frequency factors as tensors
        if not (meta.has("rope_factors_long.weight") and meta.has("rope_factors_short.weight")):
            raise ValueError("a phi3 file needs both rope_factors_long and rope_factors_short")
        rope.update(rope_type="longrope",
                    long_factor=meta.tensor("rope_factors_long.weight").tolist(),
                    short_factor=meta.tensor("rope_factors_short.weight").tolist(),
                    original_max_position_embeddings=meta.need(
                        "rope.scaling.original_context_length"))
    window = meta.opt("attention.sliding_window", positive=False) or None
    raw.update(model_type="phi3", hidden_act="silu", sliding_window=window,
               rope_parameters=rope)


_G = "blk.{i}."
ARCHS = (
    Arch("phi3", norm="rms", fused_qkv="concat", partial_rotary=1.0, max_positions=4096,
         hf_names={**LLAMA_NAMES, "wqkv": _L + "self_attn.qkv_proj",
                   "w_gate_up": _L + "mlp.gate_up_proj"},
         defaults=dict(hidden_act="silu", rms_norm_eps=1e-5, tie_word_embeddings=False,
                       max_position_embeddings=4096, sliding_window=None,
                       attention_bias=False),
         layers=_layers,
         gguf=GGUFArch("phi3", _gguf, names={**GGUF_NAMES, "wqkv": _G + "attn_qkv",
                                             "w_gate_up": _G + "ffn_up"},
                       config_tensors=("rope_factors_long.weight",
                                       "rope_factors_short.weight"))),
)
