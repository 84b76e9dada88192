"""Windowed perplexity, as llama.cpp's llama-perplexity computes it.

The token stream is cut into windows of `n_ctx` tokens; each window is evaluated from an
empty cache (its first token replaced by BOS when the model adds one), and only the second
half of each window is scored, so every scored token has at least n_ctx/2 tokens of context.
PPL = exp(mean negative log-likelihood); the ± is the standard error carried through exp.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from edgerope.errors import EdgeropeError


@dataclass
class PerplexityResult:
    ppl: float
    ppl_stderr: float
    nll: float
    n_scored: int
    n_chunks: int
    seconds: float


def _log_softmax_at(logits: np.ndarray, targets: np.ndarray, rows: int = 16) -> np.ndarray:
    """log p(target) per row; float64 sums, a few rows at a time (vocabularies are large)."""
    out = np.empty(len(targets))
    for r in range(0, len(targets), rows):
        x = logits[r:r + rows].astype(np.float64)
        m = x.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
        out[r:r + rows] = x[np.arange(len(x)), targets[r:r + rows]] - lse
    return out


def perplexity(model, text_or_ids, n_ctx: int = 512, n_batch: int = 512,
               max_chunks: int | None = None, progress: bool = True) -> PerplexityResult:
    if n_ctx < 8:
        raise EdgeropeError(f"context size must be at least 8 for perplexity, got {n_ctx}")
    tok = model.tokenizer
    if isinstance(text_or_ids, str):
        if tok is None:
            raise EdgeropeError("this model has no tokenizer: pass token ids")
        ids = tok.encode(text_or_ids, add_bos=True)
    else:
        ids = [int(t) for t in text_or_ids]
    bos = tok.bos_id if tok is not None and tok.add_bos_default else None
    n_chunks = len(ids) // n_ctx
    if max_chunks is not None:
        n_chunks = min(n_chunks, max_chunks)
    if n_chunks == 0:
        raise EdgeropeError(f"need at least {n_ctx} tokens for one window of -c {n_ctx}, the "
                            f"text has {len(ids)}")
    first = n_ctx // 2
    sess = model.new_session(n_ctx=n_ctx, n_batch=n_batch)
    nll = []
    t0 = time.perf_counter()
    bar = None
    if progress:
        from edgerope.runtime import progress as progress_bar
        bar = progress_bar(total=n_chunks, desc="perplexity", unit="chunk", leave=False)
    try:
        for c in range(n_chunks):
            window = np.array(ids[c * n_ctx:(c + 1) * n_ctx], dtype=np.int64)
            if bos is not None:
                window[0] = bos
            sess.reset()
            logits = sess.eval(window, logits_from=first)  # only the scored half
            nll.append(-_log_softmax_at(logits[:-1], window[first + 1:]))
            if bar is not None:
                run = np.concatenate(nll)
                bar.set_postfix(ppl=f"{math.exp(run.mean()):.4f}")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    all_nll = np.concatenate(nll)
    mean = float(all_nll.mean())
    stderr = float(all_nll.std(ddof=1) / math.sqrt(len(all_nll))) if len(all_nll) > 1 else 0.0
    ppl = math.exp(mean)
    return PerplexityResult(ppl=ppl, ppl_stderr=ppl * stderr, nll=mean, n_scored=len(all_nll),
                            n_chunks=n_chunks, seconds=time.perf_counter() - t0)
