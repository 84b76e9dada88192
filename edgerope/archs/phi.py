"""Phi-1/1.5/2: LayerNorm shared by attention and MLP in a parallel residual, plain GELU MLP,
biases everywhere (lm_head too), partial RoPE on a prefix of 0.5 of each head, optional q/k
LayerNorms."""
from edgerope.archs.base import GGUF_NAMES, Arch, GGUFArch

_L = "model.layers.{i}."


def _adjust(cfg, flags):
    flags["qk_norm"] = "layer" if cfg.get("qk_layernorm") else None


def _gguf(meta, raw):
    if meta.has("blk.0.attn_q_norm.weight"):
        raise ValueError("q/k LayerNorms in a phi2 file are not supported")
    raw.update(model_type="phi", hidden_act="gelu_new", qk_layernorm=False,
               rope_parameters=meta.partial_rope())


_G = "blk.{i}."
ARCHS = (
    Arch("phi", norm="layer", residual="parallel", shared_norm=True, mlp="plain",
         qkv_bias=True, o_bias=True, mlp_bias=True, lm_head_bias=True, partial_rotary=0.5,
         max_positions=2048,
         hf_names={"embed": "model.embed_tokens", "out_norm": "model.final_layernorm",
                   "lm_head": "lm_head", "attn_norm": _L + "input_layernorm",
                   "wq": _L + "self_attn.q_proj", "wk": _L + "self_attn.k_proj",
                   "wv": _L + "self_attn.v_proj", "wo": _L + "self_attn.dense",
                   "q_norm": _L + "self_attn.q_layernorm", "k_norm": _L + "self_attn.k_layernorm",
                   "w_fc1": _L + "mlp.fc1", "w_fc2": _L + "mlp.fc2"},
         defaults=dict(hidden_act="gelu_new", layer_norm_eps=1e-5, tie_word_embeddings=False,
                       qk_layernorm=False, max_position_embeddings=2048),
         adjust=_adjust,
         gguf=GGUFArch("phi2", _gguf, names={**GGUF_NAMES, "w_fc1": _G + "ffn_up",
                                             "w_fc2": _G + "ffn_down"})),
)
