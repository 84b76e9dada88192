"""Constrained decoding: output that must match a JSON schema, be any JSON object, or follow a
GBNF / Lark grammar -- through llguidance (the library llama.cpp uses; a Rust core with Python
wheels for x86-64 and aarch64; the `structured` extra). No grammar engine of our own.

    c = Constraint.build(tokenizer, json_schema={"type": "object", ...})   # checks it now
    g = c.start()              # one generation's state
    logits = g.mask(logits)    # disallowed tokens -> -inf (a copy into g's own buffer)
    g.consume(token)           # after sampling; g.done once the grammar is complete

Token masks come from the tokenizer's byte pieces (`Tokenizer.token_bytes`): llguidance walks
a trie of them per step (tens of microseconds for JSON on a 262k vocabulary). The end-of-
generation ids are allowed exactly when the grammar may end. A bad schema or grammar is a
one-line ParameterError before any token is generated.

Owns: building llguidance's tokenizer (once per tokenizer), compiling grammars, masks.
Not: sampling or stopping (edgerope.engine.generate / the server's scheduler). It takes a
tokenizer object (edgerope.text) by its interface and imports nothing above the engine.
"""
from __future__ import annotations

import json
import threading

import numpy as np

from edgerope.errors import EdgeropeError, ParameterError

__all__ = ["Constraint", "Guide"]

_lock = threading.Lock()
ANY_JSON = {"type": "object"}  # `--json`: any JSON object, any properties


def _llg():
    try:
        import llguidance
        import llguidance.numpy  # noqa: F401
        return llguidance
    except ImportError:
        raise EdgeropeError("constrained output (--json, --json-schema, --grammar, "
                            "response_format) needs its extra: pip install "
                            "'edgerope[structured]' (llguidance)") from None


def _ll_tokenizer(tok):
    """llguidance's view of an edgerope tokenizer, made once per tokenizer (about a second
    for a 262k vocabulary)."""
    with _lock:
        ll = getattr(tok, "_llguidance", None)
        if ll is None:
            llg = _llg()

            class _View:  # what llguidance.TokenizerWrapper reads
                tokens = tok.token_bytes()
                eos_token_id = tok.eos_id
                bos_token_id = tok.bos_id
                special_token_ids = sorted(tok.special_ids)

                def __call__(self, text):
                    if isinstance(text, bytes):
                        text = text.decode("utf-8", errors="replace")
                    return tok.encode(text, add_bos=False)
            eos = sorted(tok.eos_ids, key=lambda i: i != tok.eos_id)
            ll = llg.LLTokenizer(llg.TokenizerWrapper(_View()), n_vocab=len(_View.tokens),
                                 eos_token=eos or None)
            tok._llguidance = ll
        return ll


class Constraint:
    """A grammar compiled against one tokenizer; `start()` for each generation."""

    def __init__(self, tokenizer, grammar: str, what: str, vocab: int):
        self.tokenizer, self.grammar, self.what, self.vocab = tokenizer, grammar, what, vocab
        self._ll = _ll_tokenizer(tokenizer)

    @classmethod
    def build(cls, tokenizer, *, json_schema=None, grammar: str | None = None,
              any_json: bool = False, vocab: int | None = None) -> "Constraint | None":
        """The constraint of the options given (at most one), or None. `json_schema`: a dict
        or its JSON text; `grammar`: GBNF (llama.cpp's) or Lark text; `any_json`: any JSON
        object. `vocab`: the model's logits width (>= the tokenizer's). Raises ParameterError
        naming the problem when the schema or grammar is invalid."""
        given = [n for n, v in (("json_schema", json_schema), ("grammar", grammar),
                                ("json", any_json)) if v]
        if not given:
            return None
        if len(given) > 1:
            raise ParameterError(f"give one constraint, not {' and '.join(given)}")
        if tokenizer is None:
            raise ParameterError("constrained output needs the model's tokenizer")
        llg = _llg()
        from llguidance import LLMatcher
        if grammar is not None:
            if not isinstance(grammar, str) or not grammar.strip():
                raise ParameterError("grammar: must be non-empty GBNF or Lark text")
            try:
                text = llg.grammar_from("grammar", grammar)
            except ValueError as e:
                raise ParameterError(f"grammar: {_line(e)}") from None
            what = "grammar"
        else:
            schema = ANY_JSON if any_json else json_schema
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except ValueError as e:
                    raise ParameterError(f"json_schema: not valid JSON: {_line(e)}") from None
            if not isinstance(schema, dict):
                raise ParameterError("json_schema: must be a JSON object (a schema)")
            try:
                text = LLMatcher.grammar_from_json_schema(
                    schema, defaults={"whitespace_flexible": False})
            except ValueError as e:
                raise ParameterError(f"json_schema: {_line(e)}") from None
            what = "JSON" if any_json else "json_schema"
        tok_vocab = len(tokenizer.token_bytes())
        c = cls(tokenizer, text, what, max(vocab or 0, tok_vocab))
        bad, msgs = LLMatcher.validate_grammar_with_warnings(text, c._ll)
        if bad:
            raise ParameterError(f"{what}: {_line(msgs[0]) if msgs else 'invalid'}")
        return c

    def start(self) -> "Guide":
        return Guide(self)


def _line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Guide:
    """One generation under a constraint: mask the logits, consume the sampled token."""

    def __init__(self, c: Constraint):
        from llguidance import LLMatcher
        from llguidance.numpy import allocate_token_bitmask
        self.c = c
        self.m = LLMatcher(c._ll, c.grammar, log_level=0)
        if self.m.is_error():
            raise ParameterError(f"{c.what}: {_line(self.m.get_error())}")
        self._bits = allocate_token_bitmask(1, c._ll.vocab_size)
        self._out = np.empty(c.vocab, np.float32)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """The logits with every token the grammar forbids at -inf (a buffer of the guide's,
        valid until the next call)."""
        from llguidance.numpy import fill_next_token_bitmask
        fill_next_token_bitmask(self.m, self._bits, 0)
        if self.m.is_error():
            raise RuntimeError(f"constraint: {self.m.get_error()}")
        from edgerope import kernels as K
        K.mask_bits(self._out, logits, self._bits[0], self.c._ll.vocab_size)
        return self._out

    def consume(self, token: int) -> None:
        if not self.m.consume_token(int(token)):
            raise RuntimeError(f"constraint: token {token} was not allowed: "
                               f"{self.m.get_error()}")

    @property
    def done(self) -> bool:
        """The grammar cannot go on: the output is complete."""
        return self.m.is_stopped()

    @property
    def accepting(self) -> bool:
        """The output so far is complete (it may still go on)."""
        return self.m.is_accepting()
