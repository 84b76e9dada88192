"""llama.cpp's own logits on the GGUF fixtures (tests/gguf_fixtures.py), for
tests/test_gguf_archs.py: run in the converter's venv with llama-cpp-python 0.3.36 installed
(`.ci/run` builds it once from the same sdist and keeps the wheel):

    python tests/llama_cpp_logits.py FIXTURES

For each OUT/<case>.gguf of the manifest: the logits of every position for the same 24 token
ids the tests use (float32 KV cache, flash attention off, one batch), into
FIXTURES/<case>.llama_cpp.npy; cases llama.cpp cannot load are listed in
FIXTURES/llama_cpp.json with its message.
"""
import json
import os
import sys

import numpy as np


def token_ids(vocab: int) -> list[int]:
    return np.random.default_rng(1).integers(0, vocab, 24).tolist()


def one(root, name):
    """One file, in a process of its own: llama.cpp aborts on some files."""
    import llama_cpp
    llm = llama_cpp.Llama(os.path.join(root, name + ".gguf"), n_ctx=64, n_batch=64,
                          n_ubatch=64, logits_all=True, verbose=False, flash_attn=False,
                          type_k=0, type_v=0, n_threads=2)
    ids = token_ids(llm.n_vocab())
    llm.reset()
    llm.eval(ids)
    np.save(os.path.join(root, name + ".llama_cpp.npy"),
            np.array(llm.scores[:len(ids)], dtype=np.float32))


def main(root):
    import subprocess

    import llama_cpp
    with open(os.path.join(root, "manifest.json")) as f:
        manifest = json.load(f)
    failed = {}
    for name in manifest:
        r = subprocess.run([sys.executable, __file__, root, name], capture_output=True,
                           text=True)
        if r.returncode:
            lines = [ln for ln in r.stderr.splitlines() if "GGML_ASSERT" in ln or "Error" in ln]
            failed[name] = (lines or r.stderr.strip().splitlines() or ["?"])[-1][-300:]
        print(f"{name}: {'failed: ' + failed[name] if name in failed else 'ok'}",
              file=sys.stderr)
    with open(os.path.join(root, "llama_cpp.json"), "w") as f:
        json.dump({"version": llama_cpp.__version__, "failed": failed}, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) == 3:
        one(sys.argv[1], sys.argv[2])
    else:
        main(sys.argv[1])
