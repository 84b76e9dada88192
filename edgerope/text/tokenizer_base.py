"""The `Tokenizer` interface every tokenizer implements, incremental (streaming)
detokenization (`StreamDecoder`), and the helpers the implementations share: llama.cpp's
special-token partition (`sorted_specials`, `split_special`), its end-of-generation texts
(`EOG_TEXTS`), the SentencePiece byte-piece pattern.

Owns: what a tokenizer offers its callers (chat, generation, `edgerope info`): `encode` with
`special=` (whether special-token text is parsed), `decode`, `token_text` (the piece text of an
id), `bos_id` / `eos_id` / `eos_ids` / `special_ids`, `bos_token` / `eos_token`, the chat
template it carries, and the guarantee that streamed text is final (never half a UTF-8
character, never a wrong leading space).

Special-token text follows llama.cpp (`tokenizer_st_partition`): user-defined tokens (Gemma's
whitespace runs, "<start_of_image>") are always split out of the text; control and unknown tokens
("<start_of_turn>", "<|im_end|>") only with `special=True`, as chat templates need. Longer token
texts are split out first; the pieces in between are encoded normally.

Does not own: any tokenizer library (edgerope.text.spm_tokenizer, edgerope.text.bpe_tokenizer),
reading files (edgerope.text.tokenizer, edgerope.text.gguf_vocab), rendering chat templates
(edgerope.text.template), deciding when to stop generating (callers check `eos_ids`).
"""
from __future__ import annotations

import json
import re
from typing import Iterable

__all__ = ["Tokenizer", "StreamDecoder", "EOG_TEXTS", "BYTE_PIECE", "first_line",
           "eog_ids_by_text", "sorted_specials", "split_special", "write_json"]

BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # SentencePiece byte-fallback piece text

# Control-token texts that end generation (llama.cpp's EOG list, src/llama-vocab.cpp).
EOG_TEXTS = frozenset({"<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|endoftext|>",
                       "<|end_of_text|>", "<EOT>", "<|return|>", "<|eom_id|>", "<turn|>"})


def first_line(e: BaseException) -> str:
    """A library's message, first line only ("Error while initializing BPE: ...")."""
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def eog_ids_by_text(text_to_id) -> list[int]:
    return [int(i) for t, i in text_to_id.items() if t in EOG_TEXTS and i is not None]


def sorted_specials(pairs) -> list[tuple[str, int]]:
    """(text, id) pairs in llama.cpp's partition order: longest UTF-8 text first."""
    return sorted({(t, int(i)) for t, i in pairs if t}, key=lambda p: (-len(p[0].encode()), p[1]))


def split_special(text: str, specials: list[tuple[str, int]]) -> list:
    """Split `text` into raw str pieces and special-token ids (ints), like llama.cpp: for each
    special token, longest first, every occurrence in every still-raw piece becomes its id."""
    frags: list = [text]
    for tok_text, tid in specials:
        if tok_text not in text:
            continue
        out: list = []
        for f in frags:
            if isinstance(f, int) or tok_text not in f:
                out.append(f)
                continue
            for k, part in enumerate(f.split(tok_text)):
                if k:
                    out.append(tid)
                if part:
                    out.append(part)
        frags = out
    return frags


class Tokenizer:
    """Interface every tokenizer implements (SentencePiece, byte-level BPE, Gemma 4).

    Subclasses set `vocab_size`, `add_bos_default`, `chat_template` (and its origin), call
    `_set_ids` for the special ids, and implement `encode`, `decode`, `token_text`, `save`;
    `stream` works for any subclass whose `decode` is prefix-stable (decoding more tokens only
    appends text once the tail is complete).
    """

    vocab_size: int
    bos_id: int | None = None
    eos_id: int | None = None  # the primary one (GGUF eos_token_id, tokenizer_config eos_token)
    eos_ids: frozenset[int] = frozenset()  # end of generation: eos, end-of-turn, eom, ...
    special_ids: frozenset[int] = frozenset()  # dropped by decode/stream (bos, eos, control)
    add_bos_default: bool = True
    chat_template: str | None = None
    chat_template_origin: str | None = None  # "file: key" the template came from, for errors

    def encode(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Token ids of `text`. special=False: control-token text ("<|im_start|>") is plain
        text; special=True: it becomes the control token (for rendered chat templates)."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def token_text(self, token_id: int) -> str:
        """The vocabulary entry of `token_id` as stored ("▁Paris", "ĠParis", "<|im_end|>")."""
        raise NotImplementedError

    def token_id(self, text: str) -> int | None:
        """The id whose vocabulary entry is exactly `text` (as `token_text` gives it), or None."""
        raise NotImplementedError

    def save(self, directory) -> None:
        """Write the tokenizer files so that `load_tokenizer(directory)` rebuilds it."""
        raise NotImplementedError

    def stream(self, prefix: Iterable[int] = ()) -> "StreamDecoder":
        """Incremental decoder. `prefix` = ids already shown (e.g. the prompt): context only, so
        that a generated "▁Paris" streams as " Paris" rather than as the start of a text."""
        return StreamDecoder(self, prefix)

    def is_incomplete(self, ids: list[int]) -> bool:
        """True if decoding `ids` may still change once more ids are appended (an unfinished
        multi-byte character at the end). Subclasses with exact byte knowledge override this."""
        return self.decode(ids).endswith("\ufffd")

    def token_bytes(self) -> list[bytes]:
        """Per id, the bytes the token adds to a text in the middle of a stream (a leading
        space included); special ids as b"\xff" + their text, as llguidance marks them (for
        edgerope.engine.constrain). Made once, kept. This generic form decodes each id after
        a reference token; subclasses that know their bytes exactly override `_token_bytes`."""
        table = getattr(self, "_token_bytes_table", None)
        if table is None:
            table = self._token_bytes_table = self._token_bytes()
        return table

    def _token_bytes(self) -> list[bytes]:
        ref = self.encode("a", add_bos=False)
        base = self.decode(ref).encode("utf-8")
        out = []
        for i in range(self.vocab_size):
            if i in self.special_ids:
                out.append(b"\xff" + self.token_text(i).encode("utf-8"))
            else:
                text = self.decode(ref + [i]).encode("utf-8")
                out.append(text[len(base):] if text.startswith(base) else text)
        return out

    @property
    def bos_token(self) -> str | None:
        """Text of `bos_id` ("<bos>", "<s>"), for chat templates."""
        return None if self.bos_id is None else self.token_text(self.bos_id)

    @property
    def eos_token(self) -> str | None:
        """Text of `eos_id`, for chat templates."""
        return None if self.eos_id is None else self.token_text(self.eos_id)

    def _set_ids(self, bos_id: int | None, eos_ids, control: Iterable[int] = ()) -> None:
        """Set `bos_id`, `eos_ids` (an id or ids, primary first), `eos_id` (the primary one) and
        `special_ids` (the control ids, the eos ids and bos)."""
        self.bos_id = None if bos_id is None else int(bos_id)
        eos = [int(i) for i in ([eos_ids] if isinstance(eos_ids, int) else eos_ids)]
        self.eos_id = eos[0] if eos else None
        self.eos_ids = frozenset(eos)
        special = set(control) | self.eos_ids
        if self.bos_id is not None:
            special.add(self.bos_id)
        self.special_ids = frozenset(special)

    def _add_bos(self, ids: list[int], add_bos: bool | None) -> list[int]:
        if add_bos is None:
            add_bos = self.add_bos_default
        if add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        return ids

    def _config(self) -> dict:
        """tokenizer_config.json contents written by `save`."""
        primary = self.eos_id
        return {
            "add_bos_token": bool(self.add_bos_default),
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "chat_template": self.chat_template,
            # every end-of-generation id, primary first (tokenizer_config has no standard key)
            "edgerope_eos_token_ids": ([primary] if primary is not None else [])
            + sorted(self.eos_ids - {primary}),
        }


class StreamDecoder:
    """Turns token ids, pushed one at a time, into text that is final.

    Invariant: `"".join(pushes) + flush() == tokenizer.decode(all pushed ids)`; with a prefix,
    `decode(prefix) + that == decode(prefix + pushed)`. Every string `push` returns is whole
    characters: an unfinished multi-byte character is held back until its last byte arrives.
    `flush()` ends the stream (held bytes become U+FFFD); pushing after it raises RuntimeError.

    Each push decodes only a short window: the tokens that produced the previous chunk of text
    (so SentencePiece's "strip the leading space of the first piece" rule cancels out between
    the two decodes being compared) plus the tokens not emitted yet. The cost per push is
    O(window), independent of how long the stream already is.
    """

    def __init__(self, tokenizer: Tokenizer, prefix: Iterable[int] = ()):
        self.tok = tokenizer
        self._skip = tokenizer.special_ids
        self._ids: list[int] = []  # window: context tokens, then pending tokens
        self._start = 0            # _ids[:_start] = context (already emitted), rest pending
        self._ctx_text = ""        # decode(_ids[:_start])
        self._closed = False
        for i in prefix:
            self.push(i)

    def push(self, token_id) -> str:
        if self._closed:
            raise RuntimeError("push() after flush(): start a new stream, "
                               "e.g. tokenizer.stream(prefix=ids)")
        token_id = int(token_id)
        if token_id in self._skip:
            return ""
        self._ids.append(token_id)
        if self.tok.is_incomplete(self._ids):
            return ""
        return self._emit()

    def flush(self) -> str:
        """Everything still held back; invalid or unfinished byte sequences render as U+FFFD."""
        if self._closed:
            return ""
        self._closed = True
        return self._emit() if self._start < len(self._ids) else ""

    def _emit(self) -> str:
        text = self.tok.decode(self._ids)
        ctx_text = self._ctx_text
        if not text.startswith(ctx_text):  # a decode that rewrites earlier text cannot stream
            raise RuntimeError(f"{type(self.tok).__name__}.decode is not prefix-stable")
        new = text[len(ctx_text):]
        if not new:
            # Nothing visible yet (a lone leading "▁" at the very start of a text): keep the
            # tokens pending so that the window still reproduces decode() from the beginning.
            return ""
        pending = self._ids[self._start:]
        self._ids = pending
        self._start = len(pending)
        self._ctx_text = self.tok.decode(pending)
        return new


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=2)
        f.write("\n")

