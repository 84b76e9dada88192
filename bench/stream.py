"""Unbounded streaming check: a long sampled generation through a small context with context
shift, then the continuation scored by a float32 reference.

    python bench/stream.py [-m gemma3-270m] [-c 512] [-n 20000] [--kv-type f32] [--seed 1]
                           [--repeat-penalty 1.1]

Prints, every 1,000 tokens: resident memory (VmRSS), tokens dropped by context shifts, decode
speed, and that every logit so far was finite. Then the generated tokens are scored by the
same model in float32 *without* streaming (fresh windows: each block of 256 tokens scored
after the 256 tokens before it): the perplexity of the tokens generated while the whole
history still fit ("in context") against the perplexity of each later 1,000-token segment.
Generation that degraded after the shifts would score far worse; a loop would score far
better (so the share of distinct tokens per segment is printed too). End-of-sequence tokens
are masked so the run never stops early.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from edgerope.apps.perplexity import _log_softmax_at
from edgerope.io.registry import load_any
from edgerope.engine.sampler import Sampler, SamplingParams

PROMPT = ("The old lighthouse keeper climbed the stairs every evening. He had kept the light "
          "for forty years, and in that time he had seen")


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def score(model, ids, start, block=256):
    """Negative log-likelihoods of ids[start:], each block scored after `block` tokens of fresh
    context (float32, no shifting), behind the BOS token as a real prompt would be (without
    it models like Gemma lose their attention sink and score far worse)."""
    nll = np.zeros(len(ids))
    bos = [ids[0]]
    for s in range(start, len(ids), block):
        lo = max(1, s - block)
        window = bos + ids[lo:min(len(ids), s + block)]
        sess = model.new_session(n_ctx=len(window), n_batch=512)
        first = s - lo  # row of window[:-1] predicting ids[s] (window[0] is the BOS)
        logits = sess.eval(window[:-1], logits_from=first)
        targets = np.asarray(window[first + 1:], np.int64)
        nll[s:s + len(targets)] = -_log_softmax_at(logits, targets)
    return nll


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("-n", "--n-predict", type=int, default=20000)
    ap.add_argument("--kv-type", default="f32")
    ap.add_argument("--keep", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--text", action="store_true",
                    help="teacher-forced instead: stream a long natural text (Python's own "
                         "documentation topics) through the context in chunks of 32 and "
                         "compare its perplexity per segment with the float32 reference")
    ap.add_argument("--repeat-penalty", type=float, default=1.1,
                    help="(small models at plain temperature sampling fall into loops, which "
                         "a reference scores as *easy*; a mild penalty keeps the text varied)")
    a = ap.parse_args()

    model = load_any(a.model)
    tok = model.tokenizer
    if a.text:
        return stream_text(model, a)
    sess = model.new_session(n_ctx=a.ctx_size, kv_type=a.kv_type, n_keep=a.keep,
                             context_shift=True)
    # generate's defaults otherwise: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05
    sampler = Sampler(SamplingParams(seed=a.seed, repeat_penalty=a.repeat_penalty))
    eos = np.asarray(sorted(tok.eos_ids), np.int64)
    prompt = tok.encode(PROMPT, add_bos=True)
    print(f"model {model.path} | ctx {a.ctx_size} | keep {a.keep} | kv {a.kv_type} | "
          f"{sess.cache.describe()}")
    print(f"{'tokens':>7} | {'RSS MiB':>8} | {'dropped':>8} | {'tok/s':>6} | finite")
    logits = sess.eval(prompt)
    buf = np.empty_like(logits)
    gen: list[int] = []
    finite, first_shift = True, None
    t0 = time.perf_counter()
    for i in range(a.n_predict):
        np.copyto(buf, logits)
        finite &= bool(np.isfinite(buf).all())
        buf[eos] = -np.inf
        t = sampler(buf, gen[-64:])
        gen.append(t)
        logits = sess.eval([t])
        if first_shift is None and sess.n_shifted:
            first_shift = i
        if (i + 1) % 1000 == 0:
            print(f"{i + 1:>7} | {rss_mib():>8.1f} | {sess.n_shifted:>8} | "
                  f"{1000 / (time.perf_counter() - t0):>6.1f} | {finite}", flush=True)
            t0 = time.perf_counter()

    ref = load_any(a.model, dtype="float32", tokenizer=False)
    ids = prompt + gen
    nll = score(ref, ids, len(prompt))
    n_in = len(prompt) + (first_shift if first_shift is not None else len(gen))
    in_ctx = math.exp(nll[len(prompt):n_in].mean())
    print(f"\nfloat32 reference perplexity; in context (generated tokens {len(prompt)}.."
          f"{n_in - 1}, before the first shift): {in_ctx:.2f}")
    print(f"{'segment':>13} | {'ppl':>7} | {'ratio':>5} | distinct")
    worst = 0.0
    for s in range(0, len(gen), 1000):
        seg = slice(len(prompt) + s, len(prompt) + min(len(gen), s + 1000))
        p = math.exp(nll[seg].mean())
        worst = max(worst, p / in_ctx)
        print(f"{s:>6}-{min(len(gen), s + 1000):<6} | {p:>7.2f} | {p / in_ctx:>5.2f} | "
              f"{len(set(ids[seg])) / len(ids[seg]):.2f}")
    print(f"worst segment / in-context: {worst:.2f} (target <= 2); all logits finite: {finite}")


def stream_text(model, a):
    """StreamingLLM's check: perplexity of a long text evaluated through the shifting cache,
    segment by segment, against fresh-window float32 scoring of the same tokens."""
    import pydoc_data.topics as topics
    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    ids = model.tokenizer.encode(text, add_bos=True)[:a.n_predict + 1]
    sess = model.new_session(n_ctx=a.ctx_size, kv_type=a.kv_type, n_keep=a.keep,
                             context_shift=True)
    nll = np.zeros(len(ids))
    t0 = time.perf_counter()
    for s in range(0, len(ids) - 1, 32):
        chunk = ids[s:min(len(ids) - 1, s + 32)]
        logits = sess.eval(chunk, all_logits=True)
        assert np.isfinite(logits).all(), f"non-finite logits at token {s}"
        nll[s + 1:s + 1 + len(chunk)] = -_log_softmax_at(
            logits, np.asarray(ids[s + 1:s + 1 + len(chunk)], np.int64))
    print(f"streamed {len(ids) - 1} tokens through ctx {a.ctx_size} (keep {a.keep}, kv "
          f"{a.kv_type}) in {time.perf_counter() - t0:.1f} s; {sess.n_shifted} dropped; "
          f"RSS {rss_mib():.1f} MiB")
    ref = load_any(a.model, dtype="float32", tokenizer=False)
    want = score(ref, ids, 1)
    print(f"{'segment':>13} | {'stream ppl':>10} | {'ref ppl':>7} | ratio")
    worst = 0.0
    for s in range(1, len(ids), 1000):
        seg = slice(s, min(len(ids), s + 1000))
        p, r = math.exp(nll[seg].mean()), math.exp(want[seg].mean())
        worst = max(worst, p / r) if s > a.ctx_size else worst
        print(f"{s - 1:>6}-{seg.stop - 1:<6} | {p:>10.2f} | {r:>7.2f} | {p / r:.3f}")
    print(f"worst streamed / reference after the first shift: {worst:.3f}")


if __name__ == "__main__":
    main()
