"""Persimmon: LayerNorm, plain squared-ReLU MLP, fused QKV per head with biases, q/k
LayerNorms, partial RoPE on a prefix of 0.5 of each head."""
from edgerope.archs.base import Arch

_L = "model.layers.{i}."


def _adjust(cfg, flags):
    flags["qk_norm"] = "layer" if cfg.get("qk_layernorm") else None


ARCHS = (
    Arch("persimmon", norm="layer", mlp="plain", qk_norm="layer", fused_qkv="per_head",
         qkv_bias=True, o_bias=True, mlp_bias=True, partial_rotary=0.5, max_positions=16384,
         hf_names={"embed": "model.embed_tokens", "out_norm": "model.final_layernorm",
                   "lm_head": "lm_head", "attn_norm": _L + "input_layernorm",
                   "ffn_norm": _L + "post_attention_layernorm",
                   "wqkv": _L + "self_attn.query_key_value", "wo": _L + "self_attn.dense",
                   "q_norm": _L + "self_attn.q_layernorm", "k_norm": _L + "self_attn.k_layernorm",
                   "w_fc1": _L + "mlp.dense_h_to_4h", "w_fc2": _L + "mlp.dense_4h_to_h"},
         defaults=dict(hidden_act="relu2", layer_norm_eps=1e-5, tie_word_embeddings=False,
                       qk_layernorm=True, max_position_embeddings=16384),
         adjust=_adjust),
)
