"""Gemma 4 (text decoder). RoPE only so far: `default` (base 10000) on sliding layers and
`proportional` on full ones (partial_rotary_factor of the frequencies over the full head dim,
rotate-half pairs across the whole head, the rest pass through); full layers use
`global_head_dim`; the last layer is always full attention."""
import copy

from .base import Arch, LLAMA_NAMES


def _layers(cfg, n_layers, window):
    types = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n_layers)]
    return types, window


def fix_layer_types(types):
    """Gemma4TextConfig forces the last layer to full attention."""
    types = list(types)
    if types and types[-1] != "full_attention":
        types[-1] = "full_attention"
    return types


def rope_head_dim(cfg, name, per_layer, head_dim):
    """Full-attention layers use `global_head_dim` (default 512), or the head_dim of their
    entry in a saved `per_layer_config` (keyed by layer index), which replaces it."""
    if name != "full_attention":
        return head_dim
    if "per_layer_config" in cfg:
        overrides = cfg["per_layer_config"] or {}
        i = per_layer.index("full_attention")
        entry = overrides.get(str(i), overrides.get(i)) or {}
        return entry.get("head_dim") or head_dim
    return cfg.get("global_head_dim", 512) or head_dim


def _rope_params(cfg):  # no legacy form; these are Gemma4TextConfig's defaults
    params = copy.deepcopy(cfg.get("rope_parameters")) or {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                           "rope_theta": 1_000_000.0}}
    for p in params.values():
        if p is not None and "rope_theta" not in p:
            raise ValueError("gemma4_text rope_parameters entries need 'rope_theta'")
    return params, None, None


ARCHS = (
    Arch("gemma4_text", norm="rms", qk_norm="rms", sandwich=True, hf_names=LLAMA_NAMES,
         max_positions=131072, wrappers=("gemma4",), chat_template="gemma", runnable=False,
         layers=_layers, default_layers=30, rope_params=_rope_params, rope_head_dim=rope_head_dim,
         fix_layer_types=fix_layer_types),
)
