"""The weights of a model as the engine holds them: norms, per-layer matrices (`Linear`, any
format of edgerope.formats), Gemma 4's experts and per-layer inputs. Loaders
(edgerope.io) build these; the forward pass (edgerope.engine.model) reads them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgerope.formats.linear import Linear

EMBED_DTYPE = {"int4": "int8"}  # weight dtype -> dtype of the embedding and output matrices


@dataclass
class Norm:
    """A normalization: kind "rms" | "rms1p" | "layer"; weight/bias (G, n) with G = 1, or one
    row per head for per-head norms."""
    kind: str
    weight: np.ndarray
    bias: np.ndarray
    eps: float


@dataclass
class LayerWeights:
    attn_norm: Norm | None  # None: no norm before attention (OLMo 2)
    wqkv: Linear            # rows: [q (Hq*D) | k (Hkv*D) | v (Hkv*D)]; K = V layers: [q | k];
    wo: Linear              # KV-sharing layers: q only
    w_in: Linear            # gated: [gate (I) | up (I)]; plain: fc1 (I)
    w_down: Linear
    ffn_norm: Norm | None = None
    q_norm: Norm | None = None
    k_norm: Norm | None = None
    post_attn_norm: Norm | None = None
    post_ffn_norm: Norm | None = None
    layer_scalar: float = 1.0  # Gemma 4: the layer's output stream is multiplied by it
    # Gemma 4 per-layer input branch: gate (P, H), projection (H, P), post-norm
    ple_gate: Linear | None = None
    ple_out: Linear | None = None
    ple_post_norm: Norm | None = None
    moe: "MoEWeights | None" = None


@dataclass
class MoEWeights:
    """Gemma 4's experts beside the dense MLP: router (E, H) on the scale-less-normed stream
    times `router_scale` (H) and H^-1/2; chosen weights times `expert_scale` (E); expert e is a
    GeGLU with `w_in[e]` ([gate | up], 2I x H) and `w_down[e]` (H x I)."""
    router: Linear
    router_scale: np.ndarray
    expert_scale: np.ndarray
    w_in: list[Linear]
    w_down: list[Linear]
    post_norm_1: Norm       # on the dense MLP's output
    pre_norm_2: Norm        # on the experts' input
    post_norm_2: Norm       # on the experts' output

    @property
    def router_in_scale(self) -> np.ndarray:
        """router_scale * H^-1/2, the router input's scale (computed once)."""
        s = self.__dict__.get("_in_scale")
        if s is None:
            s = self.__dict__["_in_scale"] = (self.router_scale
                                              * np.float32(len(self.router_scale) ** -0.5))
        return s


@dataclass
class PLEWeights:
    """Gemma 4 per-layer inputs: `embed` (vocab_per_layer, layers x P) looked up and scaled by
    sqrt(P), `proj` (layers x P, H) of the scaled token embedding times H^-1/2, `norm` (P)."""
    embed: Linear
    proj: Linear
    norm: Norm


@dataclass
class ModelWeights:
    embed: Linear           # (vocab, hidden); its rows are looked up
    layers: list[LayerWeights]
    out_norm: Norm
    lm_head: Linear         # may be the same object as `embed` (tied)
    ple: PLEWeights | None = None

    @property
    def nbytes(self) -> int:
        seen, total = set(), 0
        for lin in self.linears():
            if id(lin) not in seen:
                seen.add(id(lin))
                total += lin.nbytes
        return total

    def bytes_per_token(self, experts_used: int | None = None) -> int:
        """Weight bytes one decoded token reads: every matrix once, but of a looked-up table
        (the token embedding, Gemma 4's per-layer embeddings) one row -- a tied output head
        reads the whole table as the head -- and of each layer's experts `experts_used` of
        them (default: the router's top-k), at their average size."""
        lookups = {id(self.embed)} - {id(self.lm_head)}
        if self.ple is not None:
            lookups.add(id(self.ple.embed))
        moe = {id(e) for lw in self.layers if lw.moe is not None
               for e in (*lw.moe.w_in, *lw.moe.w_down)}
        seen, total = set(), 0
        for lin in self.linears():
            if id(lin) in seen or id(lin) in moe:
                continue
            seen.add(id(lin))
            total += lin.nbytes // lin.out_features if id(lin) in lookups else lin.nbytes
        for lw in self.layers:
            if lw.moe is not None:
                experts = len(lw.moe.w_in)
                used = experts if experts_used is None else min(experts_used, experts)
                size = sum(e.nbytes for e in (*lw.moe.w_in, *lw.moe.w_down))
                total += size * used // experts
        return total

    def linears(self):
        """Every weight matrix (the parts of a formats.Stack one by one)."""
        for lin in self._matrices():
            yield from getattr(lin, "parts", (lin,))

    def formats(self) -> dict:
        """Bytes held in each matrix format, largest first ({"int8": ..., "q4_k": ...})."""
        seen, out = set(), {}
        for lin in self.linears():
            if id(lin) not in seen:
                seen.add(id(lin))
                out[lin.dtype] = out.get(lin.dtype, 0) + lin.nbytes
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def _matrices(self):
        yield self.embed
        yield self.lm_head
        if self.ple is not None:
            yield from (self.ple.embed, self.ple.proj)
        for lw in self.layers:
            yield from (lw.wqkv, lw.wo, lw.w_in, lw.w_down)
            if lw.ple_gate is not None:
                yield from (lw.ple_gate, lw.ple_out)
            if lw.moe is not None:
                yield lw.moe.router
                yield from lw.moe.w_in
                yield from lw.moe.w_down
