"""GPT-J: one LayerNorm shared by attention and MLP in a parallel residual, plain GELU MLP,
RoPE with base 10000 on the first `rotary_dim` (64) channels of each head, interleaved pairs
(channel 2i with 2i+1); no rope config at all."""
from edgerope.archs.base import Arch

_H = "transformer.h.{i}."


def _rope_params(cfg):
    return {"rope_type": "default", "rope_theta": 10000.0}, None, None


def _rotary_dim(cfg, head_dim):
    r = cfg.get("rotary_dim", 64)  # GPTJConfig's default; null = the whole head
    return (head_dim if r is None else int(r)), f"rotary_dim={r}"


ARCHS = (
    Arch("gptj", norm="layer", residual="parallel", shared_norm=True, mlp="plain",
         qkv_bias=False, o_bias=False, mlp_bias=True, lm_head_bias=True, max_positions=2048,
         rope_pairing="interleaved",
         hf_names={"embed": "transformer.wte", "out_norm": "transformer.ln_f",
                   "lm_head": "lm_head", "attn_norm": _H + "ln_1", "wq": _H + "attn.q_proj",
                   "wk": _H + "attn.k_proj", "wv": _H + "attn.v_proj",
                   "wo": _H + "attn.out_proj", "w_fc1": _H + "mlp.fc_in",
                   "w_fc2": _H + "mlp.fc_out"},
         defaults=dict(activation_function="gelu_new", layer_norm_epsilon=1e-5,
                       tie_word_embeddings=False, n_positions=2048, rotary_dim=64),
         rope_params=_rope_params, rotary_dim=_rotary_dim),
)
