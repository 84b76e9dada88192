"""Text <-> token ids: the `Tokenizer` interface, its SentencePiece and byte-level BPE
implementations, incremental (streaming) detokenization, `load_tokenizer` for Hugging Face-style
model directories and `tokenizer_from_gguf` for GGUF files (builders in edgerope.text.gguf_vocab).

Owns: which token ids begin (`bos_id`) and end (`eos_ids`) a sequence, which ids are "special"
(never produced by `encode` of plain text, silently dropped by `decode` and by streams), how
special-token text in a prompt is treated (`encode(..., special=...)`), and the guarantee that
streamed text is final (never half a UTF-8 character, never a wrong leading space).

Special-token text follows llama.cpp (`tokenizer_st_partition`): user-defined tokens (Gemma's
whitespace runs, "<start_of_image>") are always split out of the text; control and unknown tokens
("<start_of_turn>", "<|im_end|>") only with `special=True`, as chat templates need. Longer token
texts are split out first; the pieces in between are encoded normally.

Does not own: rendering chat templates (it only carries `chat_template`), or deciding when to stop
generating (callers check `eos_ids`).
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable

import sentencepiece as spm

from edgerope.errors import TokenizerError

__all__ = ["Tokenizer", "SentencePieceTokenizer", "BPETokenizer", "StreamDecoder",
           "load_tokenizer", "tokenizer_from_gguf", "EOG_TEXTS"]

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # SentencePiece byte-fallback piece text
_FROM_MODEL = object()  # sentinel: "take this id from the tokenizer model itself"

# Control-token texts that end generation (llama.cpp's EOG list, src/llama-vocab.cpp).
EOG_TEXTS = frozenset({"<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|endoftext|>",
                       "<|end_of_text|>", "<EOT>", "<|return|>", "<|eom_id|>", "<turn|>"})


def _first_line(e: BaseException) -> str:
    """A library's message, first line only ("Error while initializing BPE: ...")."""
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _eog_ids_by_text(text_to_id) -> list[int]:
    return [int(i) for t, i in text_to_id.items() if t in EOG_TEXTS and i is not None]


def _sorted_specials(pairs) -> list[tuple[str, int]]:
    """(text, id) pairs in llama.cpp's partition order: longest UTF-8 text first."""
    return sorted({(t, int(i)) for t, i in pairs if t}, key=lambda p: (-len(p[0].encode()), p[1]))


def _split_special(text: str, specials: list[tuple[str, int]]) -> list:
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
    """Interface every tokenizer implements (SentencePiece, byte-level BPE).

    Subclasses set `vocab_size`, `bos_id`, `eos_ids`, `special_ids`, `add_bos_default`,
    `chat_template` and implement `encode`, `decode`, `token_text`, `save`; `stream` works for any
    subclass whose `decode` is prefix-stable (decoding more tokens only appends text once the
    tail is complete).
    """

    vocab_size: int
    bos_id: int | None
    eos_ids: frozenset[int]
    special_ids: frozenset[int]  # dropped by decode/stream (bos, eos, pad, control tokens)
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

    @property
    def eos_id(self) -> int | None:
        """The primary end-of-sequence id (GGUF eos_token_id / tokenizer_config "eos_token");
        generation should stop on any of `eos_ids`."""
        return getattr(self, "_eos_primary", None)

    @property
    def bos_token(self) -> str | None:
        """Text of `bos_id` ("<bos>", "<s>"), for chat templates."""
        return None if self.bos_id is None else self.token_text(self.bos_id)

    @property
    def eos_token(self) -> str | None:
        """Text of `eos_id`, for chat templates."""
        return None if self.eos_id is None else self.token_text(self.eos_id)

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


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (a `tokenizer.model` file, or serialized ModelProto bytes built from
    a GGUF vocabulary) run by the sentencepiece library.

    Raw text between special-token matches is exactly `sp.encode(piece)`, so plain text without
    special-token text encodes as `sp.encode(text)` (plus `bos_id` in front when asked); `decode`
    is `sp.decode` after dropping special ids.
    """

    def __init__(self, path=None, eos_ids=None, add_bos_default: bool = True, bos_id=_FROM_MODEL,
                 *, model_proto: bytes | None = None, chat_template: str | None = None,
                 chat_template_origin: str | None = None,
                 piece_types: dict[int, int] | None = None):
        self.sp = spm.SentencePieceProcessor()
        self.chat_template_origin = chat_template_origin
        if model_proto is not None:
            self.path = None
            try:
                self.sp.LoadFromSerializedProto(bytes(model_proto))
            except Exception as e:  # noqa: BLE001 - the library's message, whatever it raises
                raise TokenizerError(f"cannot load SentencePiece model: "
                                     f"{_first_line(e)}") from None
        else:
            if path is None:
                raise TokenizerError("SentencePieceTokenizer needs a path or model_proto")
            path = os.fspath(path)
            self.path = path
            try:
                self.sp.Load(path)
            except Exception as e:  # noqa: BLE001 - I/O and parse errors alike
                raise TokenizerError(f"{path}: cannot load SentencePiece model: "
                                     f"{_first_line(e)}") from None
        sp = self.sp
        self.vocab_size = sp.get_piece_size()
        self.add_bos_default = bool(add_bos_default)
        self.chat_template = chat_template
        # piece_types ({id: type} of the non-NORMAL pieces) spares parsing the proto again
        if piece_types is None:
            from edgerope.text.gguf_vocab import _proto_piece_types
            piece_types = _proto_piece_types(sp.serialized_model_proto())
        types = piece_types
        self._control = frozenset(i for i, t in types.items() if t in (2, 3))  # unknown, control
        # User-defined pieces are matched in the raw text (a "▁" in them stands for a space:
        # Hugging Face files store Gemma's "▁▁", GGUF files "  ").
        self._user = [(sp.id_to_piece(i).replace("\u2581", " "), i)
                      for i, t in types.items() if t == 4]
        self._user_sorted = _sorted_specials(self._user)
        self._extra_control: list[tuple[str, int]] = []
        self._all_sorted = self._sort_all()
        # byte-fallback pieces "<0xNN>" -> NN, for exact incomplete-UTF-8 detection in streams
        self._byte_of: dict[int, int] = {}
        for i, t in types.items():
            if t == 6:
                piece = sp.id_to_piece(i)
                if not _BYTE_PIECE.fullmatch(piece):
                    where = f"{self.path}: " if self.path else ""
                    raise TokenizerError(f"{where}piece {i} {piece!r} has the byte type but is "
                                         "not of the form <0xXX>")
                self._byte_of[i] = int(piece[3:5], 16)
        self._set_special(bos_id, eos_ids)

    def _sort_all(self):
        control = [(self.sp.id_to_piece(i), i) for i in self._control]
        return _sorted_specials(self._user + control + self._extra_control)

    def _add_control(self, token_id: int):
        """Treat an existing piece as a control token (tokenizer_config.json "special": true)."""
        if token_id not in self._control:
            self._extra_control.append((self.sp.id_to_piece(token_id), int(token_id)))
            self._control = self._control | {int(token_id)}
            self._all_sorted = self._sort_all()
            self.special_ids = self.special_ids | {int(token_id)}

    def _set_special(self, bos_id=_FROM_MODEL, eos_ids=None):
        sp = self.sp
        if bos_id is _FROM_MODEL:
            bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        self.bos_id = None if bos_id is None else int(bos_id)
        if eos_ids is None:
            eos_ids = [sp.eos_id()] if sp.eos_id() >= 0 else []
        elif isinstance(eos_ids, int):
            eos_ids = [eos_ids]
        eos_ids = [int(i) for i in eos_ids]
        self._eos_primary = eos_ids[0] if eos_ids else None
        self.eos_ids = frozenset(eos_ids)
        special = set(self._control) | self.eos_ids
        if self.bos_id is not None:
            special.add(self.bos_id)
        self.special_ids = frozenset(special)

    def __repr__(self):
        src = self.path if self.path is not None else "<model_proto>"
        return (f"SentencePieceTokenizer({src!r}, vocab_size={self.vocab_size}, "
                f"bos_id={self.bos_id}, eos_ids={sorted(self.eos_ids)})")

    def encode(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        specials = self._all_sorted if special else self._user_sorted
        if not specials:
            return self._add_bos(self.sp.encode(text), add_bos)
        ids: list[int] = []
        for frag in _split_special(text, specials):
            if isinstance(frag, int):
                ids.append(frag)
            else:  # every raw piece starts the text or follows a token: llama.cpp gives each
                ids += self.sp.encode(frag)  # its own space prefix, as sp's dummy prefix does
        return self._add_bos(ids, add_bos)

    def decode(self, ids: Iterable[int]) -> str:
        special = self.special_ids
        # Ids at or beyond the SentencePiece vocabulary (a model's padded embedding rows) have no
        # text; dropping them keeps a stray sample from crashing a stream.
        n = self.vocab_size
        keep = [i for i in map(int, ids) if 0 <= i < n and i not in special]
        return self.sp.decode(keep)

    def token_text(self, token_id: int) -> str:
        return self.sp.id_to_piece(int(token_id))

    def save(self, directory) -> None:
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
            f.write(self.sp.serialized_model_proto())
        cfg = self._config()
        cfg["added_tokens_decoder"] = {str(i): {"content": t, "special": True}
                                       for t, i in self._extra_control}
        _write_json(os.path.join(directory, "tokenizer_config.json"), cfg)

    def is_incomplete(self, ids: list[int]) -> bool:
        # Look at the trailing run of byte pieces only: a normal piece always ends a complete
        # character, and sentencepiece's decoder restarts its UTF-8 parse at every lead byte.
        byte_of = self._byte_of
        tail: list[int] = []
        for i in reversed(ids):
            b = byte_of.get(i)
            if b is None or len(tail) == 3:
                break
            tail.append(b)
        tail.reverse()
        for k, b in enumerate(tail):
            if b >= 0xC0:
                need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
                rest = tail[k + 1:]
                if len(rest) + 1 < need and all(0x80 <= c < 0xC0 for c in rest):
                    return True
        return False


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
            raise RuntimeError("push() after flush(): start a new stream, e.g. tokenizer.stream(prefix=ids)")
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


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path}: {e}") from None
    return data if isinstance(data, dict) else {}


def _write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=2)
        f.write("\n")


def _ids_from(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _token_text(value):
    """tokenizer_config.json writes special tokens as "str" or {"content": "str", ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(model_dir, tcfg):
    """(template, origin): tokenizer_config.json "chat_template" (a string, or a list of named
    templates: "default"), else a chat_template.jinja file (newer transformers save it
    separately), else (None, None). `origin` names the file and key, for error messages."""
    ct = tcfg.get("chat_template")
    origin = f"{os.path.join(model_dir, 'tokenizer_config.json')}: chat_template"
    if isinstance(ct, list):
        named = {d.get("name"): d.get("template") for d in ct if isinstance(d, dict)}
        name = "default" if "default" in named else next(iter(named), None)
        ct = named.get(name)
        origin += f"[{name!r}]"
    if isinstance(ct, str):
        return ct, origin
    path = os.path.join(model_dir, "chat_template.jinja")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError:
        return None, None


def load_tokenizer(model_dir) -> Tokenizer:
    """`_load_tokenizer`, with what a malformed file makes the tokenizer libraries raise
    reported as one TokenizerError naming the directory (the libraries' own errors are named
    by file where they are called)."""
    try:
        return _load_tokenizer(model_dir)
    except (IndexError, KeyError, UnicodeDecodeError, RuntimeError, OverflowError) as e:
        raise TokenizerError(f"{os.fspath(model_dir)}: malformed tokenizer: "
                             f"{type(e).__name__}: {_first_line(e)}") from None


def _load_tokenizer(model_dir) -> Tokenizer:
    """Tokenizer for a Hugging Face-style model directory (or a path to a tokenizer.model or
    tokenizer.json file): tokenizer.model -> SentencePieceTokenizer, else tokenizer.json ->
    BPETokenizer.

    bos/eos come from generation_config.json, then config.json (also its "text_config"), then
    tokenizer_config.json ("edgerope_eos_token_ids", written by `save`, then "bos_token"/
    "eos_token" strings), else from the tokenizer model. eos ids from generation_config.json and
    config.json are merged, and tokens with an end-of-generation text (EOG_TEXTS) are added:
    generation stops on any. tokenizer_config.json's "add_bos_token" sets `add_bos_default`
    (for tokenizer.json without it: whether its post-processor adds the bos token), its
    "chat_template" (or chat_template.jinja) sets `chat_template`, and its
    "added_tokens_decoder" entries marked "special" become control tokens.
    """
    model_dir = os.fspath(model_dir)
    if os.path.isfile(model_dir) and model_dir.endswith(".model"):
        return SentencePieceTokenizer(model_dir)
    if os.path.isfile(model_dir) and model_dir.endswith(".json"):
        from edgerope.text.gguf_vocab import BPETokenizer
        return BPETokenizer.from_file(model_dir)
    sp_path = os.path.join(model_dir, "tokenizer.model")
    json_path = os.path.join(model_dir, "tokenizer.json")
    use_sp = os.path.isfile(sp_path)
    if not use_sp and not os.path.isfile(json_path):
        raise TokenizerError(f"no tokenizer found in {model_dir} (expected tokenizer.model)")

    gen = _read_json(os.path.join(model_dir, "generation_config.json"))
    cfg = _read_json(os.path.join(model_dir, "config.json"))
    text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
    tcfg = _read_json(os.path.join(model_dir, "tokenizer_config.json"))

    eos: list[int] = []
    bos = None
    for src in (gen, cfg, text_cfg):
        eos += [i for i in _ids_from(src.get("eos_token_id")) if i not in eos]
        if bos is None and _ids_from(src.get("bos_token_id")):
            bos = _ids_from(src.get("bos_token_id"))[0]
    if not eos:
        eos = _ids_from(tcfg.get("edgerope_eos_token_ids"))
    add_bos = tcfg.get("add_bos_token")
    add_bos = add_bos if isinstance(add_bos, bool) else None
    chat_template, origin = _chat_template(model_dir, tcfg)
    added = tcfg.get("added_tokens_decoder")
    added = added if isinstance(added, dict) else {}

    if use_sp:
        tok = SentencePieceTokenizer(sp_path, add_bos_default=True if add_bos is None else add_bos,
                                     chat_template=chat_template, chat_template_origin=origin)
        sp = tok.sp

        def lookup(name):
            i = sp.piece_to_id(name)
            return i if sp.id_to_piece(i) == name else None

        for key, spec in added.items():
            name = _token_text(spec)
            if isinstance(spec, dict) and spec.get("special") and str(key).isdigit() \
                    and name is not None and lookup(name) == int(key):
                tok._add_control(int(key))
        model_eos = [sp.eos_id()] if sp.eos_id() >= 0 else []
        model_bos = sp.bos_id() if sp.bos_id() >= 0 else None
    else:
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as HFTokenizer

        from edgerope.text.gguf_vocab import BPETokenizer
        try:
            hf = HFTokenizer.from_file(json_path)
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception
            raise TokenizerError(f"{json_path}: {_first_line(e)}") from None
        known = hf.get_added_tokens_decoder()
        for key, spec in added.items():  # entries tokenizer.json lacks as added tokens
            name = _token_text(spec)
            if not str(key).isdigit() or name is None or int(key) in known:
                continue
            if hf.token_to_id(name) == int(key) or hf.get_vocab_size(True) == int(key):
                special = bool(spec.get("special")) if isinstance(spec, dict) else False
                (hf.add_special_tokens if special else hf.add_tokens)(
                    [AddedToken(name, special=special, normalized=False)])

        def lookup(name):
            return hf.token_to_id(name)

        model_eos, model_bos = [], None
    if not eos:
        name = _token_text(tcfg.get("eos_token"))
        i = None if name is None else lookup(name)
        eos = [i] if i is not None else model_eos
    if bos is None:
        name = _token_text(tcfg.get("bos_token"))
        bos = None if name is None else lookup(name)
        if bos is None:
            bos = model_bos
    for name in sorted(EOG_TEXTS):
        i = lookup(name)
        if i is not None and i not in eos:
            eos.append(i)

    if use_sp:
        tok._set_special(bos_id=bos, eos_ids=eos)
        return tok
    if add_bos is None:  # e.g. Llama 3: the post-processor template adds <|begin_of_text|>
        with_special = hf.encode("a", add_special_tokens=True).ids
        add_bos = bos is not None and with_special[:1] == [bos] \
            and hf.encode("a", add_special_tokens=False).ids[:1] != [bos]
    return BPETokenizer(hf, bos_id=bos, eos_ids=eos, add_bos_default=add_bos,
                        chat_template=chat_template, chat_template_origin=origin, path=json_path)


def __getattr__(name):  # BPETokenizer lives in tokenizer_gguf (which imports this module)
    if name == "BPETokenizer":
        from edgerope.text.gguf_vocab import BPETokenizer
        return BPETokenizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def tokenizer_from_gguf(reader) -> Tokenizer:
    """Tokenizer for a GGUF file's vocabulary: `reader` is a `gguf.GGUFReader`, an
    `edgerope.io.gguf_file.GGUFFile`, or a path. See edgerope.text.gguf_vocab."""
    from edgerope.text.gguf_vocab import tokenizer_from_gguf as build
    if isinstance(reader, (str, os.PathLike)):
        try:
            from edgerope.io.gguf_file import GGUFFile
            reader = GGUFFile(os.fspath(reader))
        except ImportError:
            import gguf
            reader = gguf.GGUFReader(os.fspath(reader))
    return build(reader)
