"""StableLM (2): LayerNorm, gated SiLU MLP, partial RoPE on a prefix of 0.25 of each head,
optional q/k biases (`use_qkv_bias`), one LayerNorm per head on q and k (`qk_layernorm`), and
a parallel residual with the attention's normed input (`use_parallel_residual`)."""
from edgerope.archs.base import Arch, GGUFArch, LLAMA_NAMES

_L = "model.layers.{i}."


def _adjust(cfg, flags):
    flags["qk_norm"] = "layer_per_head" if cfg.get("qk_layernorm") else None
    flags["qkv_bias"] = bool(cfg.get("use_qkv_bias"))
    flags["residual"] = "parallel" if cfg.get("use_parallel_residual") else "sequential"


def _gguf(meta, raw):
    if meta.has("blk.0.attn_q_norm.weight"):
        raise ValueError("per-head q/k LayerNorms in a stablelm file are not supported")
    raw.update(model_type="stablelm", hidden_act="silu", qk_layernorm=False,
               use_qkv_bias=meta.has("blk.0.attn_q.bias"), rope_parameters=meta.partial_rope(),
               use_parallel_residual=meta.flag("use_parallel_residual", False))


ARCHS = (
    Arch("stablelm", norm="layer", shared_norm=True, o_bias=False, partial_rotary=0.25,
         max_positions=4096,
         hf_names={**LLAMA_NAMES, "q_norm": _L + "self_attn.q_layernorm.norms.{h}",
                   "k_norm": _L + "self_attn.k_layernorm.norms.{h}"},
         defaults=dict(hidden_act="silu", layer_norm_eps=1e-5, tie_word_embeddings=False,
                       use_qkv_bias=False, qk_layernorm=False, use_parallel_residual=False,
                       max_position_embeddings=4096),
         adjust=_adjust, gguf=GGUFArch("stablelm", _gguf)),
)
