"""Host side of the emulated parity check: tiny transformers models and their logits.

Usage: python bench/arm64/make_refs.py OUT_DIR

Builds every tiny random model of tests/tiny_models.py (the oracle of tests/test_parity.py)
into OUT_DIR/models/NAME (a Hugging Face directory: config.json + safetensors) and stores
transformers' float32 logits on the host in OUT_DIR/refs.npz, so that check_parity.py can
compare edgerope against them inside the emulated aarch64 run without torch (PyPI's aarch64
torch cannot even be imported on a Cortex-A72, see README.md). The token ids are those of
test_parity.py.
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("EDGEROPE_SRC") or os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRC, "tests"))

from tiny_models import CASES, build, reference_logits  # noqa: E402

SEQ = 24


def ids(n=SEQ, vocab=128, seed=1):
    return np.random.default_rng(seed).integers(0, vocab, n)


def reference_decode(model, toks):
    """transformers decoding one token at a time through its own (sliding-window) cache."""
    import torch
    past, out = None, []
    with torch.no_grad():
        for t in toks:
            r = model(input_ids=torch.tensor([[int(t)]]), past_key_values=past, use_cache=True)
            past = r.past_key_values
            out.append(r.logits[0, -1].float().numpy())
    assert "Sliding" in type(past.layers[0]).__name__  # transformers really used a window
    return np.stack(out)


def main(out):
    import torch
    import transformers
    os.makedirs(os.path.join(out, "models"), exist_ok=True)
    arrays = {"ids": ids(), "ids_window": ids(n=30, seed=3), "ids_decode": ids(n=60, seed=5)}
    for name in sorted(CASES):
        model = build(name, os.path.join(out, "models", name))
        arrays[f"logits/{name}"] = reference_logits(model, arrays["ids"])
        if name == "gemma3":
            arrays["window/gemma3"] = reference_logits(model, arrays["ids_window"])
            arrays["decode/gemma3"] = reference_decode(model, arrays["ids_decode"])
    np.savez(os.path.join(out, "refs.npz"), **arrays)
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump({"cases": sorted(CASES), "torch": torch.__version__,
                   "transformers": transformers.__version__}, f, indent=1)
    print(f"{len(CASES)} tiny models and reference logits in {out} "
          f"(torch {torch.__version__}, transformers {transformers.__version__})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
