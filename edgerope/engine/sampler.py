"""Choosing the next token from a logits vector, compatible with llama.cpp's default sampler chain.

Owns: `SamplingParams` (and their validation) and `Sampler`, which turns one float logits vector
(plus the token history) into one token id. The chain, in llama.cpp's default order:

  1. penalties: every distinct token among the last `repeat_last_n` of `history` (-1 = the
     whole history, 0 = off) has its logit divided by `repeat_penalty` if the logit is > 0,
     else multiplied by it (1.0 = off), then lowered by `frequency_penalty` times its count
     there and by `presence_penalty` once (OpenAI's penalties, 0.0 = off);
  2. temperature <= 0: greedy, argmax of the penalized logits (steps 3-7 skipped);
  3. top-k: keep the `top_k` largest logits (0 = off);
  4. top-p: softmax of the survivors at temperature 1, keep the smallest highest-probability
     prefix whose probability mass reaches `top_p` (1.0 = off);
  5. min-p: keep tokens whose logit >= max logit + log(`min_p`), i.e. probability >= min_p times
     the top probability (0.0 = off);
  6. temperature: divide the surviving logits by `temperature`;
  7. sample from their softmax with the sampler's own PCG64 generator.

Filters 3-5 see temperature-1 probabilities (as in llama.cpp), so temperature only reshapes the
distribution over the tokens they keep. Same seed + same sequence of logits -> same tokens.

Cost: O(vocab) per call (one argmax or argpartition), never a full sort of the vocabulary
unless top_k is off and the nucleus really spans most of it.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np
from edgerope.errors import ParameterError

__all__ = ["SamplingParams", "Sampler"]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def validate(self) -> None:
        """Raise ValueError (one-line message naming the option) for values llama.cpp rejects or
        that would make sampling ill-defined."""
        def number(name, value):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ParameterError(f"{name} must be a finite number, got {value!r}")

        def integer(name, value):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ParameterError(f"{name} must be an integer, got {value!r}")

        number("temperature", self.temperature)
        if self.temperature < 0:
            raise ParameterError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        integer("top_k", self.top_k)
        if self.top_k < 0:
            raise ParameterError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        number("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ParameterError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        number("min_p", self.min_p)
        if not 0.0 <= self.min_p <= 1.0:
            raise ParameterError(f"min_p must be in [0, 1] (0 = off), got {self.min_p}")
        number("repeat_penalty", self.repeat_penalty)
        if self.repeat_penalty <= 0:
            raise ParameterError(f"repeat_penalty must be > 0 (1 = off), got {self.repeat_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            number(name, getattr(self, name))
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ParameterError(f"{name} must be in [-2, 2] (0 = off), "
                                     f"got {getattr(self, name)}")
        integer("repeat_last_n", self.repeat_last_n)
        if self.repeat_last_n < -1:
            raise ParameterError(f"repeat_last_n must be >= -1 (-1 = whole history, 0 = off), "
                             f"got {self.repeat_last_n}")
        if self.seed is not None:
            integer("seed", self.seed)
            if not 0 <= self.seed < 2**64:
                raise ParameterError(f"seed must be in [0, 2**64) or None (random), got {self.seed}")

    @property
    def penalized(self) -> bool:
        return (self.repeat_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


class Sampler:
    """Stateful only through its random generator: exactly one uniform draw per call with
    temperature > 0 (greedy calls draw nothing), whatever the filters keep."""

    def __init__(self, params: SamplingParams | None = None):
        params = params if params is not None else SamplingParams()
        params.validate()
        self.params = params
        # The seed actually used, so a run started with seed=None can be reproduced.
        self.seed = int(params.seed) if params.seed is not None else secrets.randbits(63)
        self.rng = np.random.Generator(np.random.PCG64(self.seed))

    def __call__(self, logits: np.ndarray, history=()) -> int:
        p = self.params
        x = np.asarray(logits)
        if x.ndim != 1:
            x = x.reshape(-1)
        n = x.shape[0]
        if n == 0:
            raise ParameterError("cannot sample from an empty logits vector")

        if p.penalized and p.repeat_last_n != 0 and len(history):
            x = self._penalize(x, history)  # returns a copy: the caller's logits stay untouched

        if p.temperature <= 0:
            return int(np.argmax(x))
        if x.dtype != np.float32:
            x = x.astype(np.float32)

        u = self.rng.random()  # drawn unconditionally: the stream of draws never depends on filters
        top = float(x.max())
        if not math.isfinite(top):
            if top == math.inf:  # an infinitely likely token is certain
                return int(np.argmax(x))
            # NaN means the forward pass is broken; all -inf leaves nothing to sample
            raise ParameterError(f"cannot sample: logits max is {top} (NaN or all -inf)")
        # Candidates: `idx` (indices into x; None = every token) and their logits `vals`.
        k = p.top_k
        if 0 < k < n:
            idx = self._top_k(x, k, top)
            vals = x[idx]
        else:
            idx = None  # all tokens
            vals = x

        # min-p as a logit threshold. Applied before top-p here only to shrink what must be
        # sorted; the result equals llama.cpp's top-p-then-min-p because both keep a prefix of
        # the same ordering and top-p normalizes over the full candidate set (`total` below).
        if p.min_p > 0.0:
            sel = np.flatnonzero(vals >= np.float32(top + math.log(p.min_p)))
        else:
            sel = None
        if p.top_p < 1.0:
            w = np.exp(vals.astype(np.float64) - top)
            sel = self._nucleus(vals, w, float(w.sum()), sel, p.top_p)
        if sel is not None:
            vals = vals[sel]
            idx = sel if idx is None else idx[sel]

        if vals.shape[0] == 1:
            return int(idx[0]) if idx is not None else 0
        z = vals.astype(np.float64) / p.temperature
        probs = np.exp(z - z.max())
        cdf = np.cumsum(probs)
        j = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
        j = min(j, cdf.shape[0] - 1)  # u * total can round up to cdf[-1]
        return int(idx[j]) if idx is not None else j

    def _penalize(self, x, history):
        p = self.params
        h = np.asarray(history, dtype=np.int64).reshape(-1)
        if p.repeat_last_n > 0:
            h = h[-p.repeat_last_n:]
        toks, counts = np.unique(h, return_counts=True)
        ok = (toks >= 0) & (toks < x.shape[0])
        toks, counts = toks[ok], counts[ok]
        x = x.astype(np.promote_types(x.dtype, np.float32))  # a copy, float even for int logits
        v = x[toks]
        r = x.dtype.type(p.repeat_penalty)
        v = np.where(v > 0, v / r, v * r)
        if p.frequency_penalty or p.presence_penalty:
            v = v - (counts * p.frequency_penalty + p.presence_penalty).astype(x.dtype)
        x[toks] = v
        return x

    @staticmethod
    def _top_k(x, k, top):
        """Indices of the k largest logits (any order; ties broken arbitrarily but repeatably).

        A vectorized compare finds the few tokens near the maximum first, so argpartition runs
        on hundreds of values rather than the whole vocabulary; the k largest are always inside
        any upper set {x >= t} that holds at least k tokens.
        """
        n = x.shape[0]
        margin = 8.0
        while margin <= 64.0:
            near = np.flatnonzero(x >= np.float32(top - margin))
            if near.shape[0] >= k:
                if near.shape[0] > k:
                    near = near[np.argpartition(x[near], near.shape[0] - k)[near.shape[0] - k:]]
                return near
            margin *= 2.0
        return np.argpartition(x, n - k)[n - k:]

    @staticmethod
    def _nucleus(vals, w, total, sel, top_p):
        """Indices (into vals) kept by top-p, then min-p when `sel` (min-p survivors) is given.

        Only the head of the distribution is sorted: when no min-p set bounds it, grow an
        argpartition window until it holds at least `top_p` of the mass.
        """
        n = vals.shape[0]
        if sel is not None:
            head = sel
        else:
            m = min(n, 64)
            while True:
                head = np.argpartition(vals, n - m)[n - m:] if m < n else np.arange(n)
                if m == n or float(w[head].sum()) >= top_p * total:
                    break
                m = min(n, m * 8)
        order = head[np.argsort(-vals[head], kind="stable")]
        cum = np.cumsum(w[order]) / total
        # llama.cpp keeps tokens up to and including the first whose cumulative mass >= top_p.
        cut = int(np.searchsorted(cum, top_p, side="left"))
        return order[:cut + 1]
