"""Gemma 4 (text decoder; also the text part of multimodal `gemma4` checkpoints), as
transformers' models/gemma4:

- layer types: sliding (`head_dim`, `num_key_value_heads`, window `sliding_window`, `default`
  RoPE base 10000) and full (`global_head_dim`; `num_global_key_value_heads` when
  `attention_k_eq_v`; `proportional` RoPE: `partial_rotary_factor` of the frequencies over the
  *full* head dim, rotate-half pairs across the whole head, the rest pass through); the last
  layer is always full;
- attention scale 1.0; q/k RMSNorm and a scale-less RMSNorm on V; norm weights used as stored
  (no 1 + w); sandwich norms; GeGLU (tanh); each layer's output stream times `layer_scalar`;
  final logit soft-capping;
- per-layer embeddings (PLE, `hidden_size_per_layer_input` > 0): a (`vocab_size_per_layer_input`,
  layers x P) table plus a projection of the scaled token embedding, normed, summed, / sqrt 2;
  each layer gates it with its own stream (gate, GELU, multiply, projection, post-norm,
  residual);
- KV sharing: the last `num_kv_shared_layers` layers read the cache of the last non-shared
  layer of their type and store nothing (their MLP is double-wide with `use_double_wide_mlp`);
- K = V on full layers with `attention_k_eq_v`: no v_proj, V = v_norm(k_proj(x));
- mixture of experts (`enable_moe_block`, the 26B-A4B shape): a router on the post-attention
  stream picks `top_k_experts` of `num_experts` GeGLU experts, beside the dense MLP.

GGUF `gemma4` as llama.cpp's converter writes it: per-layer head_count_kv and
feed_forward_length arrays, `attention.sliding_window_pattern` per layer, key_length (full)
and key_length_swa, a `rope_freqs` tensor whose factors mark the proportional rotary pairs
(1) and the pass-through ones (1e30), experts as 3-D tensors. KV sharing follows transformers:
a shared layer reads the last non-shared layer of its own type (llama.cpp assumes the last
non-shared layer is a full-attention one; the two agree on the released shapes)."""
import copy
import math

from edgerope.archs.base import GGUF_NAMES, Arch, GGUFArch, LLAMA_NAMES

_L = "model.layers.{i}."


def _layers(cfg, n_layers, window):
    types = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n_layers)]
    return types, window


def fix_layer_types(types):
    """Gemma4TextConfig forces the last layer to full attention."""
    types = list(types)
    if types and types[-1] != "full_attention":
        types[-1] = "full_attention"
    return types


def _per_layer_config(cfg) -> dict[int, dict] | None:
    """transformers' saved form: {"05": {"head_dim": .., "num_key_value_heads": ..}, ...}
    (zero-padded layer indices); hub configs carry global_head_dim instead."""
    plc = cfg.get("per_layer_config")
    if plc is None:
        return None
    if not isinstance(plc, dict):
        raise ValueError(f"'per_layer_config' must be an object, found {plc!r}")
    out = {}
    for k, v in plc.items():
        try:
            out[int(k)] = v if isinstance(v, dict) else {}
        except (TypeError, ValueError):
            continue  # a per-type view ("full_attention"): the indexed entries decide
    return out


def _layer_shape(cfg, types, i):
    """(head_dim, key-value heads) of layer i."""
    hd, kv = cfg["head_dim"], cfg["num_key_value_heads"]
    plc = _per_layer_config(cfg)
    if plc is not None:
        entry = plc.get(i, {})
        return entry.get("head_dim") or hd, entry.get("num_key_value_heads") or kv
    if types[i] == "full_attention":
        hd = cfg.get("global_head_dim") or 512
        if cfg.get("attention_k_eq_v") and cfg.get("num_global_key_value_heads") is not None:
            kv = cfg["num_global_key_value_heads"]
    return hd, kv


def rope_head_dim(cfg, name, per_layer, head_dim):
    if name not in per_layer:
        return head_dim
    cfg = {"head_dim": head_dim, "num_key_value_heads": 1, **cfg}
    return _layer_shape(cfg, per_layer, per_layer.index(name))[0]


def _rope_params(cfg):  # no legacy form; these are Gemma4TextConfig's defaults
    params = copy.deepcopy(cfg.get("rope_parameters")) or {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                           "rope_theta": 1_000_000.0}}
    for p in params.values():
        if p is not None and "rope_theta" not in p:
            raise ValueError("gemma4_text rope_parameters entries need 'rope_theta'")
    return params, None, None


def _positive(cfg, key):
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"'{key}' must be a positive integer, found {v!r}")
    return v


def _geometry(cfg, types, head_dims):
    from edgerope.archs.config import MoESpec
    n = len(types)
    shapes = [_layer_shape(cfg, types, i) for i in range(n)]
    for i, (hd, _) in enumerate(shapes):
        want = head_dims.get(types[i])
        if want is not None and want != hd:
            raise ValueError(f"layer {i}: head_dim {hd} differs from the {types[i]} RoPE "
                             f"head size {want}")
    shared = cfg.get("num_kv_shared_layers") or 0
    if not 0 <= shared < n:
        raise ValueError(f"'num_kv_shared_layers' must be in [0, {n}), found {shared}")
    first = n - shared
    source = []
    for i, t in enumerate(types):
        if i < first:
            source.append(i)
            continue
        earlier = [j for j in range(first) if types[j] == t]
        if not earlier:
            raise ValueError(f"layer {i} ({t}) shares KV, but no earlier layer of that type "
                             f"stores any (num_kv_shared_layers={shared})")
        source.append(earlier[-1])
    inter = cfg["intermediate_size"]
    wide = bool(cfg.get("use_double_wide_mlp"))
    ple = cfg.get("hidden_size_per_layer_input") or 0
    moe = None
    if cfg.get("enable_moe_block"):
        moe = MoESpec(_positive(cfg, "num_experts"), _positive(cfg, "top_k_experts"),
                      _positive(cfg, "moe_intermediate_size"))
        if moe.top_k > moe.num_experts:
            raise ValueError(f"'top_k_experts' ({moe.top_k}) exceeds 'num_experts' "
                             f"({moe.num_experts})")
    return dict(
        layer_head_dims=tuple(hd for hd, _ in shapes),
        layer_kv_heads=tuple(kv for _, kv in shapes),
        layer_ffn=tuple(2 * inter if wide and source[i] != i else inter for i in range(n)),
        kv_source=tuple(source),
        k_eq_v=tuple(bool(cfg.get("attention_k_eq_v")) and t == "full_attention" for t in types),
        v_norm=True, layer_scalar=True,
        ple_dim=int(ple), ple_vocab=int(cfg.get("vocab_size_per_layer_input") or 0) if ple else 0,
        moe=moe)


def _scales(cfg, hidden, head_dim):
    return 1.0, math.sqrt(hidden)


def _gguf(meta, raw):
    types = meta.layer_types(0)
    if "full_attention" not in types or "sliding_attention" not in types:
        raise ValueError(f"metadata key '{meta.arch}.attention.sliding_window_pattern' should "
                         "give both sliding and full layers")
    n, first_full = len(types), types.index("full_attention")
    hd_full, hd_swa = meta.need("attention.key_length"), meta.need("attention.key_length_swa")
    kv = meta.arrays.get("attention.head_count_kv") or [raw["num_key_value_heads"]] * n
    kv_swa, kv_full = kv[types.index("sliding_attention")], kv[first_full]
    k_eq_v = not meta.has(f"blk.{first_full}.attn_v.weight")
    if kv_full != kv_swa and not k_eq_v:
        raise ValueError("full layers with their own KV heads but a v projection: not a "
                         "Gemma 4 shape transformers builds")
    ff = meta.arrays.get("feed_forward_length") or [raw["intermediate_size"]] * n
    shared = meta.opt("attention.shared_kv_layers", 0, positive=False)
    if not meta.has("rope_freqs.weight"):
        raise ValueError("tensor 'rope_freqs.weight' (the full layers' rotary channels) is "
                         "missing")
    factors = meta.tensor("rope_freqs.weight")
    if len(factors) != hd_full // 2:
        raise ValueError(f"tensor 'rope_freqs.weight' has {len(factors)} values for a head of "
                         f"{hd_full}")
    rot_swa = meta.opt("rope.dimension_count_swa", hd_swa)
    sliding = {"rope_type": "default",
               "rope_theta": meta.opt("rope.freq_base_swa", 10000.0, float)}
    if rot_swa != hd_swa:
        sliding["partial_rotary_factor"] = rot_swa / hd_swa
    ple = meta.opt("embedding_length_per_layer_input", 0, positive=False)
    experts = meta.opt("expert_count", 0, positive=False)
    raw.update(
        model_type="gemma4_text", hidden_activation="gelu_pytorch_tanh", layer_types=types,
        head_dim=hd_swa, global_head_dim=hd_full, num_key_value_heads=kv_swa,
        num_global_key_value_heads=kv_full, attention_k_eq_v=k_eq_v,
        intermediate_size=ff[0], num_kv_shared_layers=shared,
        use_double_wide_mlp=any(ff[i] != ff[0] for i in range(n - shared, n)),
        hidden_size_per_layer_input=ple,
        vocab_size_per_layer_input=(meta.g.tensors["per_layer_token_embd.weight"].shape[0]
                                    if ple else 0),
        enable_moe_block=experts > 0, num_experts=experts or None,
        top_k_experts=meta.opt("expert_used_count") if experts else None,
        moe_intermediate_size=meta.opt("expert_feed_forward_length") if experts else None,
        sliding_window=meta.need("attention.sliding_window"),
        final_logit_softcapping=meta.opt("final_logit_softcapping", kind=float, positive=False),
        rope_parameters={"sliding_attention": sliding, "full_attention": {
            "rope_type": "proportional", "rope_theta": meta.rope["rope_theta"],
            "partial_rotary_factor": 2 * int((factors == 1.0).sum()) / hd_full}})


_G = "blk.{i}."
_GGUF_NAMES = {
    **GGUF_NAMES, "post_attn_norm": _G + "post_attention_norm",
    "post_ffn_norm": _G + "post_ffw_norm", "layer_scalar": _G + "layer_output_scale.weight",
    "ple_embed": "per_layer_token_embd", "ple_proj": "per_layer_model_proj",
    "ple_norm": "per_layer_proj_norm", "ple_gate": _G + "inp_gate", "ple_out": _G + "proj",
    "ple_post_norm": _G + "post_norm", "router_proj": _G + "ffn_gate_inp",
    "router_scale": _G + "ffn_gate_inp.scale", "router_expert_scale": _G + "ffn_down_exps.scale",
    "experts_in": _G + "ffn_gate_up_exps.weight", "experts_down": _G + "ffn_down_exps.weight",
    "post_ffn_norm_1": _G + "post_ffw_norm_1", "pre_ffn_norm_2": _G + "pre_ffw_norm_2",
    "post_ffn_norm_2": _G + "post_ffw_norm_2"}


ARCHS = (
    Arch("gemma4_text", norm="rms", qk_norm="rms", sandwich=True,
         hf_names={**LLAMA_NAMES, "post_attn_norm": _L + "post_attention_layernorm",
                   "ffn_norm": _L + "pre_feedforward_layernorm",
                   "post_ffn_norm": _L + "post_feedforward_layernorm",
                   "layer_scalar": _L + "layer_scalar",
                   "ple_embed": "model.embed_tokens_per_layer",
                   "ple_proj": "model.per_layer_model_projection",
                   "ple_norm": "model.per_layer_projection_norm",
                   "ple_gate": _L + "per_layer_input_gate",
                   "ple_out": _L + "per_layer_projection",
                   "ple_post_norm": _L + "post_per_layer_input_norm",
                   "router_proj": _L + "router.proj",
                   "router_scale": _L + "router.scale",
                   "router_expert_scale": _L + "router.per_expert_scale",
                   "experts_in": _L + "experts.gate_up_proj",
                   "experts_down": _L + "experts.down_proj",
                   "post_ffn_norm_1": _L + "post_feedforward_layernorm_1",
                   "pre_ffn_norm_2": _L + "pre_feedforward_layernorm_2",
                   "post_ffn_norm_2": _L + "post_feedforward_layernorm_2"},
         max_positions=131072,
         defaults=dict(hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
                       tie_word_embeddings=True, attention_bias=False, head_dim=256,
                       num_key_value_heads=4, sliding_window=512, final_logit_softcapping=None,
                       max_position_embeddings=131072, hidden_size_per_layer_input=256,
                       vocab_size_per_layer_input=262144, attention_k_eq_v=False,
                       num_kv_shared_layers=0, enable_moe_block=False,
                       use_double_wide_mlp=False),
         wrappers=("gemma4",), chat_template="gemma4",
         layers=_layers, default_layers=30, scales=_scales, rope_params=_rope_params,
         rope_head_dim=rope_head_dim, fix_layer_types=fix_layer_types, geometry=_geometry,
         gguf=GGUFArch("gemma4", _gguf, names=_GGUF_NAMES, layer_arrays=True, rope_freqs=True)),
)
