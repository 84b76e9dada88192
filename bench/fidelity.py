"""How close edgerope's logits are to llama.cpp's on the same file, and both to a float32
reference (transformers on the same GGUF weights), on held-out text.

For each real model (Gemma 3 270M Q4_K_M, SmolLM2 135M Q4_1, as installed): the first 640
tokens of Python's own documentation prose (as tests/test_real_models.py), then

- llama.cpp (llama-cpp-python, float32 KV cache) on the file as shipped and on its own Q8_0
  requantization (bench/compare.py's copy);
- edgerope `--dtype auto` on the file as shipped (its own block types) and int8 on the Q8_0
  copy;
- transformers float32 of the same GGUF weights.

Prints per pair: top-1 agreement, mean KL(first || second), perplexity ratio.

    python bench/fidelity.py [-m gemma3-270m] [--no-hf]

`--texts N` instead measures how each engine's int8 (and as-shipped) logits fall short of the
float32 reference on N separate texts (`--tokens` each, from the start of N other documentation
topics: the ones above excluded), and whether edgerope or llama.cpp is the more faithful with
paired statistics: per token KL(reference || engine), the engine's negative log-likelihood of
the next token and top-1 agreement, then the differences edgerope - llama.cpp, with 95%
confidence intervals from a bootstrap over the texts (tokens of one text are not independent):
top-1 (higher is better), mean KL (lower), ppl ratio quotient = exp(mean NLL difference)
(lower). A difference whose interval holds 0 is within the texts' sampling noise.

    python bench/fidelity.py --texts 16 --tokens 384 [-m gemma3-270m]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

# this folder is no package: its kernels.py must not pass for the `kernels` package that
# transformers probes for (python puts a script's folder first on sys.path)
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


_PROSE = ("if", "while", "for", "try", "with", "function", "class", "import")


def prose() -> str:
    import pydoc_data.topics as t
    return "\n\n".join(t.topics[k] for k in _PROSE)


def texts(n: int, min_chars: int = 3000) -> list[str]:
    """n held-out texts: documentation topics of at least min_chars, in name order, other
    than those prose() joins."""
    import pydoc_data.topics as t
    out = [t.topics[k] for k in sorted(t.topics)
           if k not in _PROSE and len(t.topics[k]) >= min_chars][:n]
    if len(out) < n:
        sys.exit(f"--texts: only {len(out)} topics of {min_chars}+ characters")
    return out


def per_token(ref, got, ids) -> np.ndarray:
    """(4, T - 1): per next-token position KL(ref || got), got's NLL of the target,
    whether the two argmaxes agree, and ref's NLL of the target."""
    lr, lo = log_softmax(ref[:-1]), log_softmax(got[:-1])
    tgt = np.arange(len(ids) - 1), np.array(ids[1:])
    return np.stack([(np.exp(lr) * (lr - lo)).sum(1), -lo[tgt],
                     (ref[:-1].argmax(1) == got[:-1].argmax(1)).astype(np.float64),
                     -lr[tgt]])


def paired(ours: list, theirs: list, rounds: int = 2000, seed: int = 0) -> dict:
    """Per-text (4, n) arrays (per_token) of two engines on the same texts -> the
    differences ours - theirs of top-1, mean KL and the ppl-ratio quotient, each with a
    95% bootstrap interval (texts resampled with replacement, tokens pooled)."""
    def stats(idx):
        a = np.concatenate([ours[i] for i in idx], axis=1)
        b = np.concatenate([theirs[i] for i in idx], axis=1)
        d = a - b
        return np.array([d[2].mean(), d[0].mean(), np.exp(d[1].mean())])
    rng = np.random.default_rng(seed)
    n = len(ours)
    point = stats(range(n))
    boots = np.array([stats(rng.integers(0, n, n)) for _ in range(rounds)])
    lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
    return {name: [round(float(v), 5) for v in (point[i], lo[i], hi[i])]
            for i, name in enumerate(("top1_diff", "kl_diff", "ppl_quotient"))}


def summary(rows: list) -> dict:
    """Pooled top-1, mean KL and ppl ratio (to the reference's) of one engine over all
    texts."""
    a = np.concatenate(rows, axis=1)
    return dict(top1=round(float(a[2].mean()), 4), kl=round(float(a[0].mean()), 5),
                ppl_ratio=round(float(np.exp((a[1] - a[3]).mean())), 4))


def log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def compare(ref, got, ids) -> dict:
    """top-1 agreement, mean KL(ref || got), ppl(got) / ppl(ref) on next-token targets."""
    lr, lo = log_softmax(ref), log_softmax(got)
    tgt = np.arange(len(ids) - 1), np.array(ids[1:])
    return dict(top1=round(float((ref.argmax(1) == got.argmax(1)).mean()), 4),
                kl=round(float((np.exp(lr) * (lr - lo)).sum(1).mean()), 5),
                ppl_ratio=round(float(np.exp(-lo[:-1][tgt].mean() + lr[:-1][tgt].mean())), 4))


def llama_cpp_logits(path, ids):
    import llama_cpp
    llm = llama_cpp.Llama(path, n_ctx=len(ids) + 8, n_batch=512, n_ubatch=512,
                          logits_all=True, verbose=False, flash_attn=False, type_k=0,
                          type_v=0, n_threads=2)
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", action="append", help="registry name (repeatable)")
    ap.add_argument("-n", "--tokens", type=int, default=640)
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers reference")
    ap.add_argument("--texts", type=int, default=0,
                    help="N separate texts, paired statistics against the reference")
    args = ap.parse_args()
    import importlib.util

    import edgerope
    spec = importlib.util.spec_from_file_location(  # bench/ is no package (and holds a
        "compare", os.path.join(os.path.dirname(os.path.abspath(__file__)), "compare.py"))
    compare_py = importlib.util.module_from_spec(spec)  # kernels.py: not on sys.path)
    spec.loader.exec_module(compare_py)
    llama_cpp_copy = compare_py.llama_cpp_copy
    from edgerope.io.registry import locate
    if args.texts:
        for name in args.model or ["gemma3-270m", "smollm2-135m"]:
            _texts_run(name, locate(name), llama_cpp_copy(locate(name), "int8"), args)
        return
    for name in args.model or ["gemma3-270m", "smollm2-135m"]:
        src = locate(name)
        q8 = llama_cpp_copy(src, "int8")
        auto = edgerope.load(src, dtype="auto")
        ids = auto.tokenizer.encode(prose(), add_bos=True)[:args.tokens]
        logits = {"edgerope auto": auto.logits(ids)}
        del auto
        logits["edgerope int8 (Q8_0 copy)"] = edgerope.load(q8, dtype="int8").logits(ids)
        logits["llama.cpp file"] = llama_cpp_logits(src, ids)
        logits["llama.cpp Q8_0 copy"] = llama_cpp_logits(q8, ids)
        rows = [("edgerope auto vs llama.cpp, same file", "llama.cpp file", "edgerope auto"),
                ("edgerope int8 vs llama.cpp, same Q8_0 file", "llama.cpp Q8_0 copy",
                 "edgerope int8 (Q8_0 copy)")]
        if not args.no_hf:
            import torch
            import transformers
            d, f = os.path.split(src)
            ref = transformers.AutoModelForCausalLM.from_pretrained(
                d, gguf_file=f, dtype=torch.float32, attn_implementation="eager").eval()
            with torch.no_grad():
                logits["float32 reference"] = ref(torch.tensor([ids])).logits[0].float().numpy()
            rows += [(f"{k} vs float32 reference", "float32 reference", k)
                     for k in ("edgerope auto", "llama.cpp file", "edgerope int8 (Q8_0 copy)",
                               "llama.cpp Q8_0 copy")]
        for label, a, b in rows:
            print(json.dumps(dict(model=name, pair=label, tokens=len(ids),
                                  **compare(logits[a], logits[b], ids))))


def _texts_run(name, src, q8, args):
    """--texts: per-token statistics of four engines against the float32 reference on each
    text, then pooled figures and paired edgerope - llama.cpp differences."""
    import llama_cpp
    import torch
    import transformers

    import edgerope
    d, f = os.path.split(src)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        d, gguf_file=f, dtype=torch.float32, attn_implementation="eager").eval()
    engines = {"edgerope int8 (Q8_0 copy)": edgerope.load(q8, dtype="int8"),
               "edgerope auto": edgerope.load(src, dtype="auto")}
    tok = engines["edgerope auto"].tokenizer
    lcpp = {label: llama_cpp.Llama(path, n_ctx=args.tokens + 8, n_batch=512, n_ubatch=512,
                                   logits_all=True, verbose=False, flash_attn=False,
                                   type_k=0, type_v=0, n_threads=2)
            for label, path in (("llama.cpp Q8_0 copy", q8), ("llama.cpp file", src))}
    stats = {k: [] for k in (*engines, *lcpp)}
    for text in texts(args.texts):
        ids = tok.encode(text, add_bos=True)[:args.tokens]
        with torch.no_grad():
            r = ref(torch.tensor([ids])).logits[0].float().numpy()
        for label, m in engines.items():
            stats[label].append(per_token(r, m.logits(ids), ids))
        for label, llm in lcpp.items():
            llm.reset()
            llm.eval(ids)
            got = np.array(llm.scores[:len(ids)], dtype=np.float32)
            stats[label].append(per_token(r, got, ids))
    for label, rows in stats.items():
        print(json.dumps(dict(model=name, engine=label, texts=len(rows),
                              tokens=sum(a.shape[1] for a in rows), **summary(rows))))
    for ours, theirs in (("edgerope int8 (Q8_0 copy)", "llama.cpp Q8_0 copy"),
                         ("edgerope auto", "llama.cpp file")):
        print(json.dumps(dict(model=name, pair=f"{ours} - {theirs}",
                              **paired(stats[ours], stats[theirs]))))


if __name__ == "__main__":
    main()
