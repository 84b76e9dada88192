"""Falcon, in each layout its checkpoints use: the 7B form (multi-query attention, one input
LayerNorm shared by attention and MLP in a parallel residual, fused QKV [q | k | v]), the
40B/180B form (`new_decoder_architecture`: grouped KV heads with the fused QKV laid out per
group [its queries, k, v], separate `ln_attn` / `ln_mlp`), and the older forms (per-head
[q, k, v] fused QKV; sequential residual without `parallel_attn`); biases with `bias`;
plain GELU MLP; whole-head RoPE. Configs asking for ALiBi instead of RoPE are refused."""
from edgerope.errors import ConfigError
from edgerope.archs.base import GGUF_NAMES, Arch, GGUFArch

_H = "transformer.h.{i}."


def _prepare(cfg):
    if cfg.get("alibi"):
        raise ConfigError("Falcon with ALiBi position biases ('alibi': true) is not supported: "
                          "edgerope runs the RoPE variants")
    new, mq = cfg.get("new_decoder_architecture"), cfg.get("multi_query")
    kv = cfg.get("num_kv_heads") or cfg.get("num_attention_heads")
    cfg["num_key_value_heads"] = kv if (new or not mq) else 1
    if cfg.get("ffn_hidden_size") is None:
        cfg["ffn_hidden_size"] = 4 * cfg["hidden_size"]
    cfg["intermediate_size"] = cfg["ffn_hidden_size"]
    cfg["hidden_act"] = cfg.get("activation") or "gelu"
    cfg["attention_bias"] = cfg["mlp_bias"] = bool(cfg.get("bias"))


def _adjust(cfg, flags):
    new = bool(cfg.get("new_decoder_architecture"))
    flags["residual"] = "parallel" if new or cfg.get("parallel_attn") else "sequential"
    n_ln = cfg.get("num_ln_in_parallel_attn") or (2 if new else 1)
    flags["shared_norm"] = flags["residual"] == "parallel" and not (new and n_ln == 2)
    flags["fused_qkv"] = ("per_group" if new else "concat" if cfg.get("multi_query")
                          else "per_head")


def _gguf(meta, raw):
    kv = raw["num_key_value_heads"]
    new = meta.has("blk.0.attn_norm_2.weight")  # llama.cpp: the 40B form's second norm
    raw.update(model_type="falcon", activation="gelu", parallel_attn=True,
               new_decoder_architecture=new or kv > 1, multi_query=kv == 1,
               num_kv_heads=kv, num_ln_in_parallel_attn=2 if new else 1,
               ffn_hidden_size=raw["intermediate_size"], bias=meta.has("blk.0.attn_qkv.bias"),
               rope_parameters=meta.rope, alibi=False)


_G = "blk.{i}."
ARCHS = (
    Arch("falcon", norm="layer", mlp="plain", max_positions=2048,
         hf_names={"embed": "transformer.word_embeddings", "out_norm": "transformer.ln_f",
                   "lm_head": "lm_head",
                   # the first name the checkpoint has
                   "attn_norm": (_H + "ln_attn", _H + "input_layernorm"),
                   "ffn_norm": (_H + "ln_mlp", _H + "post_attention_layernorm"),
                   "wqkv": _H + "self_attention.query_key_value",
                   "wo": _H + "self_attention.dense",
                   "w_fc1": _H + "mlp.dense_h_to_4h", "w_fc2": _H + "mlp.dense_4h_to_h"},
         defaults=dict(layer_norm_epsilon=1e-5, tie_word_embeddings=True,
                       max_position_embeddings=2048, multi_query=True, parallel_attn=True,
                       new_decoder_architecture=False, bias=False, alibi=False,
                       activation="gelu"),
         prepare=_prepare, adjust=_adjust,
         # llama.cpp names the 40B form's ln_attn attn_norm_2 and its ln_mlp attn_norm
         gguf=GGUFArch("falcon", _gguf, names={**GGUF_NAMES, "wqkv": _G + "attn_qkv",
                                               "attn_norm": (_G + "attn_norm_2",
                                                             _G + "attn_norm"),
                                               "ffn_norm": _G + "attn_norm",
                                               "w_fc1": _G + "ffn_up", "w_fc2": _G + "ffn_down"})),
)
