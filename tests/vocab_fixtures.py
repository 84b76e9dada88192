"""Tiny GGUF models with a real vocabulary of each kind llama.cpp writes: a SentencePiece-style
`llama` vocabulary (scores, byte tokens) and a byte-level BPE `gpt2` vocabulary (merges, a
pre-tokenizer name, ChatML specials), both with a chat template. Shared by the hostile-vocabulary
tests and the fuzzer."""
import numpy as np

from test_q8_formats import SHAPES, V, q8_0_blocks, write_gguf

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
          "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s", "r e", "a t", "e n",
          "Ġ w", "o r"]
BPE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BPE_TOKENS = BPE_SPECIALS + _byte_chars() + [m.replace(" ", "") for m in MERGES]
BPE_TYPES = [3, 3, 3] + [1] * (len(BPE_TOKENS) - 3)
assert len(BPE_TOKENS) == V and len(set(BPE_TOKENS)) == V


def set_key(w, key, value, vtype):
    """In a GGUFWriter: metadata `key` = value of GGUF type `vtype` (a name), or removed."""
    import gguf
    if value is None:
        w.kv_data[0].pop(key, None)
    else:
        sub = None
        if vtype == "ARRAY" and value and isinstance(value[0], str):
            sub = gguf.GGUFValueType.STRING
        w.kv_data[0][key] = gguf.gguf_writer.GGUFValue(
            value=value, type=getattr(gguf.GGUFValueType, vtype), sub_type=sub)


def bpe_vocab(w):
    """Turn write_gguf's SentencePiece vocabulary into a gpt2 one (SmolLM2-like)."""
    set_key(w, "tokenizer.ggml.model", "gpt2", "STRING")
    set_key(w, "tokenizer.ggml.pre", "smollm", "STRING")
    set_key(w, "tokenizer.ggml.tokens", BPE_TOKENS, "ARRAY")
    set_key(w, "tokenizer.ggml.merges", MERGES, "ARRAY")
    set_key(w, "tokenizer.ggml.scores", None, "")
    w.kv_data[0]["tokenizer.ggml.token_type"].value = BPE_TYPES
    set_key(w, "tokenizer.ggml.bos_token_id", 0, "UINT32")
    set_key(w, "tokenizer.ggml.eos_token_id", 2, "UINT32")


def with_template(w):
    set_key(w, "tokenizer.chat_template", CHATML, "STRING")


def write_vocab_gguf(path, kind="spm", edit=None, seed=0):
    """A one-layer llama GGUF with a `kind` ("spm" or "bpe") vocabulary and a ChatML template;
    `edit(writer)` runs last (to spoil a key)."""
    r = np.random.default_rng(seed)
    mats = {n: q8_0_blocks(r, *s) for n, s in SHAPES.items()}
    for blocks in mats.values():
        # ordinary scales: the format's extremes (65504) are test_q8_formats' subject, and
        # here they would make keys of 1e6 and more, past an f16 KV cache's range
        d = (r.standard_normal(blocks.shape[:2]) * 0.01).astype(np.float16)
        blocks[:, :, :2] = d.view(np.uint8).reshape(*blocks.shape[:2], 2)

    def apply(w):
        if kind == "bpe":
            bpe_vocab(w)
        with_template(w)
        if edit is not None:
            edit(w)
    return write_gguf(path, mats, edit=apply)
