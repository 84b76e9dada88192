"""GPT-NeoX / Pythia: LayerNorm, parallel residual (or sequential with
use_parallel_residual=false), plain GELU MLP with biases, fused QKV laid out per head, partial
RoPE on a prefix of `rotary_pct` (0.25) of each head with base `rotary_emb_base`."""
import copy

from edgerope.archs.base import GGUF_NAMES, Arch, GGUFArch

_N = "gpt_neox.layers.{i}."


def _adjust(cfg, flags):
    flags["residual"] = "parallel" if cfg.get("use_parallel_residual") else "sequential"


def _rope_params(cfg):  # GPTNeoXConfig reads only its own legacy names
    params = copy.deepcopy(cfg.get("rope_scaling") or cfg.get("rope_parameters")) or {}
    return params, cfg.get("rotary_emb_base", 10_000.0), cfg.get("rotary_pct", 0.25)


def _gguf(meta, raw):
    raw.update(model_type="gpt_neox", hidden_act="gelu", rotary_pct=meta.rot / meta.head_dim,
               rotary_emb_base=meta.rope["rope_theta"], rope_parameters=meta.partial_rope(),
               use_parallel_residual=meta.flag("use_parallel_residual", True),
               attention_bias=True)


_G = "blk.{i}."
ARCHS = (
    Arch("gpt_neox", norm="layer", residual="parallel", mlp="plain", fused_qkv="per_head",
         mlp_bias=True, partial_rotary=0.25, max_positions=2048,
         hf_names={"embed": "gpt_neox.embed_in", "out_norm": "gpt_neox.final_layer_norm",
                   "lm_head": "embed_out", "attn_norm": _N + "input_layernorm",
                   "ffn_norm": _N + "post_attention_layernorm",
                   "wqkv": _N + "attention.query_key_value", "wo": _N + "attention.dense",
                   "w_fc1": _N + "mlp.dense_h_to_4h", "w_fc2": _N + "mlp.dense_4h_to_h"},
         defaults=dict(hidden_act="gelu", layer_norm_eps=1e-5, tie_word_embeddings=False,
                       attention_bias=True, use_parallel_residual=True,
                       max_position_embeddings=2048),
         adjust=_adjust, rope_params=_rope_params,
         gguf=GGUFArch("gptneox", _gguf, names={**GGUF_NAMES, "wqkv": _G + "attn_qkv",
                                                "w_fc1": _G + "ffn_up", "w_fc2": _G + "ffn_down"})),
)
