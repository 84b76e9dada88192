"""Rotary position embeddings: which channels rotate, how they pair, and at what frequencies.

Owns
- `RopeSpec`: a frozen, hashable description of one layer type's RoPE -- the rotating channel
  pairs (`pairs()`), the scaled frequency table (`inv_freq()`), `attention_factor`, and the
  float32 cos/sin tables the kernels consume (`cos_sin`, `table`, `shift`).
- `rope_specs_from_config`: a raw config.json dict -> {layer type name: RopeSpec}, accepting the
  current `rope_parameters` (flat or nested per layer type) and the legacy keys, with the
  defaults and standardisation of transformers 5.x config classes (mirrored, not imported).

Numerics. transformers computes `inv_freq` in float32, rounding after every torch op. The
`_inv_*` functions repeat those ops in the same order in float32 (torch's `number / tensor` is
`reciprocal(tensor) * number`; `base ** t` rounds `base` to float32 first), so `inv_freq()`
returns transformers' buffer values as float64 -- bit for bit, except where torch's vectorised
float32 pow (not correctly rounded) is off by an ulp, which later ops can make two. Angles
`position * inv_freq` and cos/sin are then evaluated in float64 and cast once; transformers
rounds the angle to float32, an error of ~position * 2^-24 rad that we do not reproduce.

Deliberately ignores: applying the rotation (the kernels own that), multimodal RoPE (mrope,
axial), transformers' statefulness (its dynamic module keeps the largest frequencies seen so far;
callers pass the sequence length they want instead).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope", "proportional")
PAIRINGS = ("half", "interleaved")

_F32 = np.float32


# ---------------------------------------------------------------------------------------------
# float32 arithmetic as torch does it
# ---------------------------------------------------------------------------------------------

def _exponents(n_freq: int, dim: int) -> np.ndarray:
    """torch.arange(0, 2 * n_freq, 2).float() / dim: the exponents 2i/dim in float32."""
    return np.arange(0, 2 * n_freq, 2, dtype=_F32) / _F32(dim)


def _pow(base, exps: np.ndarray) -> np.ndarray:
    """`base ** exps` in float32. torch rounds a Python `base` to float32 but keeps a Python
    exponent in double; evaluating in float64 and rounding once agrees with torch to within one
    ulp (numpy's float32 power differs more often)."""
    return np.power(np.float64(_F32(base)), np.asarray(exps, np.float64)).astype(_F32)


def _rdiv(num, x: np.ndarray) -> np.ndarray:
    """torch's `python_number / tensor`, which is reciprocal(tensor) * number (two roundings)."""
    return (_F32(1.0) / x) * _F32(num)


def _base_inv_freq(theta, n_freq: int, dim: int) -> np.ndarray:
    """1 / theta^(2i/dim), i < n_freq, float32."""
    return _rdiv(1.0, _pow(theta, _exponents(n_freq, dim)))


# ---------------------------------------------------------------------------------------------
# one function per variant (transformers' `_compute_*_parameters`); all return float32
# ---------------------------------------------------------------------------------------------

def _inv_default(s: "RopeSpec", seq_len):
    return _base_inv_freq(s.theta, s.rotary_dim // 2, s.rotary_dim)


def _inv_linear(s: "RopeSpec", seq_len):
    return _inv_default(s, None) / _F32(s.factor)


def _inv_dynamic(s: "RopeSpec", seq_len):
    """NTK: theta' = theta * (factor*L/mpe - (factor-1))^(R/(R-2)) once L > mpe.
    transformers evaluates this from the position tensor, i.e. in float32."""
    if seq_len is None or seq_len <= s.max_position_embeddings:
        return _inv_default(s, None)
    r = s.rotary_dim
    x = _F32(s.factor) * _F32(seq_len)
    x = x / _F32(s.max_position_embeddings)
    x = x - _F32(s.factor - 1)
    x = _pow(x, r / (r - 2))  # torch keeps a Python exponent in double precision
    theta = _F32(s.theta) * x
    return _base_inv_freq(theta, r // 2, r)


def _yarn_correction_range(s: "RopeSpec"):
    """Channel range [low, high] over which YaRN blends interpolation into extrapolation."""
    def corr_dim(n_rot):
        return (s.rotary_dim * math.log(s.original_max_position_embeddings / (n_rot * 2 * math.pi))
                / (2 * math.log(s.theta)))
    low, high = corr_dim(s.beta_fast), corr_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, s.rotary_dim - 1)


def _inv_yarn(s: "RopeSpec", seq_len):
    r = s.rotary_dim
    pos_freqs = _pow(s.theta, _exponents(r // 2, r))
    inv_extrapolation = _rdiv(1.0, pos_freqs)
    inv_interpolation = _rdiv(1.0, _F32(s.factor) * pos_freqs)
    low, high = _yarn_correction_range(s)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp
    ramp = (np.arange(r // 2, dtype=_F32) - _F32(low)) / _F32(high - low)
    ramp = np.clip(ramp, _F32(0), _F32(1))
    extrapolation_factor = _F32(1) - ramp
    return (inv_interpolation * (_F32(1) - extrapolation_factor)
            + inv_extrapolation * extrapolation_factor)


def _inv_llama3(s: "RopeSpec", seq_len):
    inv = _inv_default(s, None)
    ompe = s.original_max_position_embeddings
    low_freq_wavelen = _F32(ompe / s.low_freq_factor)
    high_freq_wavelen = _F32(ompe / s.high_freq_factor)
    wavelen = _rdiv(2 * math.pi, inv)
    inv_llama = np.where(wavelen > low_freq_wavelen, inv / _F32(s.factor), inv)
    smooth = ((_rdiv(ompe, wavelen) - _F32(s.low_freq_factor))
              / _F32(s.high_freq_factor - s.low_freq_factor))
    smoothed = (_F32(1) - smooth) * inv_llama / _F32(s.factor) + smooth * inv_llama
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, inv_llama).astype(_F32)


def _inv_longrope(s: "RopeSpec", seq_len):
    """Per-frequency divisors: long_factor once the sequence outgrows the pretraining length."""
    long = seq_len is not None and seq_len > s.original_max_position_embeddings
    ext = np.asarray(s.long_factor if long else s.short_factor, dtype=_F32)
    r = s.rotary_dim
    return _rdiv(1.0, ext * _pow(s.theta, _exponents(r // 2, r)))


def _inv_proportional(s: "RopeSpec", seq_len):
    """Gemma 4: the first A frequencies of a D-dim table (exponent over D); the other D/2 - A
    are exactly 0 in transformers and are left out of the pairs."""
    return _base_inv_freq(s.theta, s.npairs, s.head_dim) / _F32(s.factor)


_INV_FREQ = {
    "default": _inv_default, "linear": _inv_linear, "dynamic": _inv_dynamic, "yarn": _inv_yarn,
    "llama3": _inv_llama3, "longrope": _inv_longrope, "proportional": _inv_proportional,
}

_REQUIRED = {  # fields each variant cannot do without (after defaults are resolved)
    "linear": ("factor",),
    "dynamic": ("factor", "max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
    "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
    "longrope": ("factor", "original_max_position_embeddings", "short_factor", "long_factor"),
}


def _yarn_mscale(scale, mscale=1):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


# ---------------------------------------------------------------------------------------------
# RopeSpec
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RopeSpec:
    """RoPE of one layer type. Construction resolves defaults (yarn/longrope `factor` from
    max/original positions, yarn betas, `attention_factor`), so equal maths gives equal specs.

    head_dim: D. rotary_dim: R, channels of the rotated prefix (D for proportional).
    pairing: "half" (rotate_half: i <-> i + R/2) or "interleaved" (GPT-J: 2i <-> 2i + 1).
    attention_factor: after construction, the float multiplying cos and sin (1.0 except
    yarn/longrope); pass None to let the variant choose as transformers does.
    partial_rotary_factor: proportional only (A = int(partial_rotary_factor * D // 2)).
    """
    head_dim: int
    rotary_dim: int
    theta: float
    pairing: str
    rope_type: str = "default"
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    max_position_embeddings: int | None = None
    attention_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    partial_rotary_factor: float = 1.0

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"unsupported RoPE type {self.rope_type!r} (supported: {', '.join(ROPE_TYPES)})")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"unsupported RoPE pairing {self.pairing!r} (supported: {', '.join(PAIRINGS)})")
        d, r = int(self.head_dim), int(self.rotary_dim)
        if d <= 0 or r <= 0 or r > d or r % 2:
            raise ValueError(f"invalid rotary_dim {r} for head_dim {d}: need an even count in [2, head_dim]")
        put("head_dim", d)
        put("rotary_dim", r)
        put("theta", float(self.theta))
        put("truncate", bool(self.truncate))
        for name in ("short_factor", "long_factor"):
            if getattr(self, name) is not None:
                put(name, tuple(float(v) for v in getattr(self, name)))

        kind = self.rope_type
        if kind in ("yarn", "longrope") and self.factor is None:
            if self.max_position_embeddings and self.original_max_position_embeddings:
                put("factor", self.max_position_embeddings / self.original_max_position_embeddings)
        if kind == "proportional" and self.factor is None:
            put("factor", 1.0)
        if kind == "yarn":
            put("beta_fast", self.beta_fast or 32)
            put("beta_slow", self.beta_slow or 1)
        for name in _REQUIRED.get(kind, ()):
            if getattr(self, name) is None:
                raise ValueError(f"RoPE type {kind!r} needs {name!r}")
        if kind == "dynamic" and r <= 2:
            raise ValueError(f"RoPE type 'dynamic' needs rotary_dim > 2, got {r}")
        if kind == "longrope":
            for name in ("short_factor", "long_factor"):
                if len(getattr(self, name)) != r // 2:
                    raise ValueError(f"longrope {name} has {len(getattr(self, name))} entries, "
                                     f"expected rotary_dim/2 = {r // 2}")
        if kind == "proportional":
            if self.pairing != "half" or r != d or d % 2:
                raise ValueError("proportional RoPE rotates halves of the whole head: needs pairing 'half', "
                                 f"even head_dim, rotary_dim == head_dim (got {self.pairing!r}, {d}, {r})")
            n = int(self.partial_rotary_factor * d // 2)
            if not 0 <= n <= d // 2:
                raise ValueError(f"invalid partial_rotary_factor {self.partial_rotary_factor} "
                                 f"for proportional RoPE with head_dim {d}")
        put("attention_factor", float(self._resolve_attention_factor()))

    def _resolve_attention_factor(self):
        af, f = self.attention_factor, self.factor
        if self.rope_type == "yarn":
            if af is not None:
                return af
            if self.mscale and self.mscale_all_dim:
                return _yarn_mscale(f, self.mscale) / _yarn_mscale(f, self.mscale_all_dim)
            return _yarn_mscale(f)
        if self.rope_type == "longrope":
            if af is not None:
                return af
            if f <= 1.0:
                return 1.0
            return math.sqrt(1 + math.log(f) / math.log(self.original_max_position_embeddings))
        return 1.0  # the other variants ignore a configured attention_factor, as transformers does

    @property
    def npairs(self) -> int:
        if self.rope_type == "proportional":
            return int(self.partial_rotary_factor * self.head_dim // 2)
        return self.rotary_dim // 2

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(ia, ib) int64 channel indices of the rotating pairs; pair j uses inv_freq()[j].
        Channels in neither array pass through untouched."""
        n = self.npairs
        if self.rope_type == "proportional":
            ia = np.arange(n, dtype=np.int64)
            return ia, ia + self.head_dim // 2
        if self.pairing == "half":
            ia = np.arange(n, dtype=np.int64)
            return ia, ia + self.rotary_dim // 2
        ia = np.arange(0, 2 * n, 2, dtype=np.int64)
        return ia, ia + 1

    def inv_freq(self, seq_len: int | None = None) -> np.ndarray:
        """float64 (npairs,) scaled frequencies. `seq_len` matters for dynamic and longrope only:
        pass max position + 1 of the forward pass (transformers' rule); None means no growth
        (dynamic: original frequencies; longrope: short_factor)."""
        return _INV_FREQ[self.rope_type](self, seq_len).astype(np.float64)

    def cos_sin(self, positions, seq_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """float32 (len(positions), npairs) cos and sin, both times attention_factor."""
        pos = np.asarray(positions, dtype=np.float64).reshape(-1)
        angles = pos[:, None] * self.inv_freq(seq_len)[None, :]
        af = self.attention_factor
        return (np.cos(angles) * af).astype(np.float32), (np.sin(angles) * af).astype(np.float32)

    def table(self, n_pos: int, seq_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """cos_sin for positions 0 .. n_pos-1."""
        return self.cos_sin(np.arange(n_pos), seq_len)

    def shift(self, delta, seq_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """float32 (npairs,) cos/sin of a pure rotation by `delta` positions (re-rotating cached
        keys: R(p) R(delta) = R(p + delta)); no attention_factor, which the keys already carry."""
        angles = float(delta) * self.inv_freq(seq_len)
        return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# config.json -> specs
# ---------------------------------------------------------------------------------------------

_OMPE = "original_max_position_embeddings"


def _arch(model_type):
    from edgerope import archs
    a = archs.find(model_type)
    if a is None:
        raise ValueError(f"unsupported model_type {model_type!r} for RoPE "
                         f"(supported: {', '.join(archs.model_types(runnable_only=False))})")
    return a


def rope_specs_from_config(cfg: dict, model_type: str, head_dim: int,
                           layer_types: list[str] | None = None,
                           head_dims: dict[str, int] | None = None) -> dict[str, RopeSpec]:
    """One RopeSpec per layer type present, e.g. {"full_attention": spec} for uniform models or
    {"sliding_attention": ..., "full_attention": ...} for Gemma. `cfg` is the config.json dict
    (for gemma3/gemma4 the outer dict or its text_config); `head_dim` is the attention head
    size; `head_dims` overrides it per layer type (Gemma 4 full layers default to the config's
    global_head_dim). `layer_types` defaults to cfg["layer_types"] or the model's default
    pattern. Layer types whose rope parameters are null (NoPE) are left out."""
    arch = _arch(model_type)
    if model_type in arch.wrappers:
        cfg = cfg.get("text_config") or cfg
    mpe = (cfg.get("max_position_embeddings") or arch.defaults.get("n_positions")
           and cfg.get("n_positions") or arch.max_positions)
    per_layer = _layer_types(cfg, arch, layer_types)
    names = list(dict.fromkeys(per_layer))
    params, nested = _rope_parameters(cfg, arch, names, mpe)

    specs = {}
    for name in names:
        p = params.get(name) if nested else params
        if nested and name not in params:
            raise ValueError(f"rope_parameters has no entry for layer type {name!r}")
        if p is None:
            continue
        d = (head_dims or {}).get(name) or (
            arch.rope_head_dim(cfg, name, per_layer, head_dim) if arch.rope_head_dim
            else head_dim)
        specs[name] = _spec(p, cfg, arch, d, mpe, nested)
    return specs


def _layer_types(cfg, arch, layer_types):
    """Per-layer type names, with the defaults the config classes build when none are given."""
    types = list(layer_types) if layer_types is not None else cfg.get("layer_types")
    if types is None and arch.layers is not None:
        full = {**arch.defaults, **cfg}
        types, _ = arch.layers(full, cfg.get("num_hidden_layers", arch.default_layers),
                               full.get("sliding_window"))
    types = list(types or []) or ["full_attention"]
    if arch.fix_layer_types is not None:
        types = arch.fix_layer_types(types)
    return types


def _rope_parameters(cfg, arch, names, mpe):
    """Standardised rope parameters: (flat dict, False) or ({layer type: dict | None}, True).
    Mirrors each config class's `convert_rope_params_to_dict` and `standardize_rope_params`."""
    if arch.rope_params is not None:
        params, theta, partial = arch.rope_params(cfg)
    else:
        params = copy.deepcopy(cfg.get("rope_scaling") or cfg.get("rope_parameters")) or {}
        theta = cfg.get("rope_theta", 10_000.0)
        partial = cfg.get("partial_rotary_factor", arch.partial_rotary)

    nested_keys = [k for k, v in params.items() if isinstance(v, dict) or (v is None and k in names)]
    for p in ([params[k] for k in nested_keys] if nested_keys else [params]):
        if p is None:
            continue
        if theta is not None:
            p.setdefault("rope_theta", theta)
        if partial is not None:
            p.setdefault("partial_rotary_factor", partial)
        p.setdefault("rope_type", p.get("type", "default"))
        if p["rope_type"] in ("llama3", "yarn", "longrope"):
            if not nested_keys and cfg.get(_OMPE) is not None:
                # transformers re-standardises at model init, when a top-level
                # original_max_position_embeddings (Phi-3 style) overrides the one in rope params
                p[_OMPE] = cfg[_OMPE]
            else:
                p.setdefault(_OMPE, mpe)
    return params, bool(nested_keys)


def _spec(p, cfg, arch, d, mpe, nested) -> RopeSpec:
    kind = p["rope_type"]
    if kind not in ROPE_TYPES:
        raise ValueError(f"unsupported RoPE type {kind!r} (supported: {', '.join(ROPE_TYPES)})")
    partial = p.get("partial_rotary_factor")
    partial = 1.0 if partial is None else partial
    if arch.rotary_dim is not None:
        r, source = arch.rotary_dim(cfg, d)
    else:
        source = f"partial_rotary_factor={partial}"
        # proportional spans the whole head; the llama family's default RoPE ignores the factor
        full = kind == "proportional" or (kind == "default" and arch.partial_rotary is None)
        r = d if full else int(d * partial)
    if r <= 0 or r > d or r % 2:
        raise ValueError(f"{source} gives {r} rotary channels for head_dim {d}; "
                         "need an even count in [2, head_dim]")
    if r != d and arch.partial_rotary is None and arch.rotary_dim is None:
        raise ValueError(f"{arch.model_type} rotates whole heads, but {source} with RoPE type {kind!r} "
                         f"gives {r} of {d} channels (transformers fails on this config too)")
    return RopeSpec(
        head_dim=d, rotary_dim=r, theta=p["rope_theta"],
        pairing=arch.rope_pairing,
        rope_type=kind,
        factor=p.get("factor"),
        original_max_position_embeddings=p.get(_OMPE),
        max_position_embeddings=mpe,
        attention_factor=p.get("attention_factor"),
        beta_fast=p.get("beta_fast"), beta_slow=p.get("beta_slow"),
        mscale=p.get("mscale"), mscale_all_dim=p.get("mscale_all_dim"),
        # transformers reads `truncate` from the top-level rope_parameters, so nested configs
        # always truncate
        truncate=True if nested else p.get("truncate", True),
        short_factor=p.get("short_factor"), long_factor=p.get("long_factor"),
        low_freq_factor=p.get("low_freq_factor"), high_freq_factor=p.get("high_freq_factor"),
        partial_rotary_factor=partial if kind == "proportional" else 1.0,
    )
