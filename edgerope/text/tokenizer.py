"""Where tokenizers come from: `load_tokenizer` for Hugging Face-style model directories
(tokenizer.model or tokenizer.json, with tokenizer_config.json, generation_config.json and
config.json) and `tokenizer_from_gguf` for GGUF vocabularies (built in edgerope.text.gguf_vocab).
The names callers need are importable from here:

    Tokenizer, StreamDecoder, EOG_TEXTS   the interface (edgerope.text.tokenizer_base)
    SentencePieceTokenizer                edgerope.text.spm_tokenizer
    BPETokenizer, Gemma4Tokenizer         edgerope.text.bpe_tokenizer

Owns: which bos/eos ids, chat template and special tokens a model directory's JSON files give.
Does not own: how any tokenizer encodes (its own module), opening GGUF files for edgerope.load
(edgerope.io.loading passes its reader), rendering chat templates (edgerope.text.template).
"""
from __future__ import annotations

import json
import os

from edgerope.errors import TokenizerError
from edgerope.text.bpe_tokenizer import BPETokenizer, Gemma4Tokenizer
from edgerope.text.gguf_vocab import tokenizer_from_gguf
from edgerope.text.spm_tokenizer import SentencePieceTokenizer
from edgerope.text.tokenizer_base import EOG_TEXTS, StreamDecoder, Tokenizer, first_line

__all__ = ["Tokenizer", "SentencePieceTokenizer", "BPETokenizer", "Gemma4Tokenizer",
           "StreamDecoder", "load_tokenizer", "tokenizer_from_gguf", "EOG_TEXTS"]


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path}: {e}") from None
    return data if isinstance(data, dict) else {}


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
                             f"{type(e).__name__}: {first_line(e)}") from None


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
        lookup = tok.token_id
        for key, spec in added.items():
            name = _token_text(spec)
            if isinstance(spec, dict) and spec.get("special") and str(key).isdigit() \
                    and name is not None and lookup(name) == int(key):
                tok.add_control(int(key))
        model_eos = [] if tok.eos_id is None else [tok.eos_id]  # the model's own, so far
        model_bos = tok.bos_id
    else:
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as HFTokenizer
        try:
            hf = HFTokenizer.from_file(json_path)
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception
            raise TokenizerError(f"{json_path}: {first_line(e)}") from None
        known = hf.get_added_tokens_decoder()
        for key, spec in added.items():  # entries tokenizer.json lacks as added tokens
            name = _token_text(spec)
            if not str(key).isdigit() or name is None or int(key) in known:
                continue
            if hf.token_to_id(name) == int(key) or hf.get_vocab_size(True) == int(key):
                special = bool(spec.get("special")) if isinstance(spec, dict) else False
                (hf.add_special_tokens if special else hf.add_tokens)(
                    [AddedToken(name, special=special, normalized=False)])

        lookup = hf.token_to_id
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
        tok.set_special(bos_id=bos, eos_ids=eos)
        return tok
    if add_bos is None:  # e.g. Llama 3: the post-processor template adds <|begin_of_text|>
        with_special = hf.encode("a", add_special_tokens=True).ids
        add_bos = bos is not None and with_special[:1] == [bos] \
            and hf.encode("a", add_special_tokens=False).ids[:1] != [bos]
    return BPETokenizer(hf, bos_id=bos, eos_ids=eos, add_bos_default=add_bos,
                        chat_template=chat_template, chat_template_origin=origin, path=json_path)

