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


def prose() -> str:
    import pydoc_data.topics as t
    return "\n\n".join(t.topics[k] for k in ("if", "while", "for", "try", "with", "function",
                                              "class", "import"))


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
    args = ap.parse_args()
    import importlib.util

    import edgerope
    spec = importlib.util.spec_from_file_location(  # bench/ is no package (and holds a
        "compare", os.path.join(os.path.dirname(os.path.abspath(__file__)), "compare.py"))
    compare_py = importlib.util.module_from_spec(spec)  # kernels.py: not on sys.path)
    spec.loader.exec_module(compare_py)
    llama_cpp_copy = compare_py.llama_cpp_copy
    from edgerope.io.registry import locate
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


if __name__ == "__main__":
    main()
