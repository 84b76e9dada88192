"""llama.cpp's own tokenizer test vectors (tests/test-tokenizer-0.cpp's format): a vocabulary
`models/ggml-vocab-<name>.gguf`, inputs `.gguf.inp` separated by "\\n__ggml_vocab_test__\\n",
expected ids `.gguf.out` one line per input, tokenized without BOS and without parsing special
tokens. The files come from the llama-cpp-python 0.3.36 source distribution; `.ci/run` fetches
it and sets EDGEROPE_LLAMA_CPP to its vendor/llama.cpp (without it, these tests skip locally
and fail under CI)."""
import os

import pytest

from edgerope.io.gguf_file import GGUFFile
from edgerope.text.tokenizer import tokenizer_from_gguf

ROOT = os.environ.get("EDGEROPE_LLAMA_CPP")
# every decoder vocabulary the sdist ships (bert-bge is an encoder's WordPiece)
VOCABS = ["command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4", "gpt-2",
          "llama-bpe", "llama-spm", "mpt", "phi-3", "qwen2", "qwen35", "refact", "starcoder"]


def _models():
    if not ROOT or not os.path.isdir(os.path.join(ROOT, "models")):
        if os.environ.get("CI"):
            pytest.fail("EDGEROPE_LLAMA_CPP is not set: .ci/run fetches llama.cpp's vectors")
        pytest.skip("llama.cpp's tokenizer vectors are not here (EDGEROPE_LLAMA_CPP)")
    return os.path.join(ROOT, "models")


@pytest.mark.parametrize("name", VOCABS)
def test_llama_cpp_tokenizer_vectors(name):
    base = os.path.join(_models(), f"ggml-vocab-{name}.gguf")
    tok = tokenizer_from_gguf(GGUFFile(base))
    with open(base + ".inp", encoding="utf-8") as f:
        inputs = f.read().split("\n__ggml_vocab_test__\n")
    with open(base + ".out", encoding="utf-8") as f:
        outputs = f.read().split("\n")
    assert len(outputs) >= len(inputs) > 10
    for text, line in zip(inputs, outputs):
        want = [int(x) for x in line.split()]
        assert tok.encode(text, add_bos=False, special=False) == want, repr(text)
        assert tok.decode(want) == text, repr(text)
