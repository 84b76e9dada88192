"""Text generation as a generator: prompt in, text pieces out, as they are decoded.

Owns: the prompt -> prefill -> sample -> decode loop, stop conditions (max tokens, end-of-
sequence tokens, stop strings, full context) and timing. Sampling rules live in
edgerope.engine.sampler, incremental UTF-8-safe detokenization in edgerope.text.tokenizer.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

from edgerope.engine.cache import DEFAULT_KV_TYPE
from edgerope.errors import ContextFullError, EdgeropeError
from edgerope.engine.sampler import Sampler, SamplingParams


@dataclass
class GenerationStats:
    """Filled in while generating; read it after the iterator is exhausted."""
    n_prompt: int = 0
    n_generated: int = 0
    prompt_seconds: float = 0.0
    gen_seconds: float = 0.0
    first_token_seconds: float = 0.0   # from the call to the first generated token
    stop_reason: str = ""              # "length" | "eos" | "stop" | "context"
    token_ids: list = field(default_factory=list)  # the generated ids (an end token excluded)
    incomplete: bool = False           # stopped before a constraint (JSON, grammar) was met

    @property
    def prompt_tps(self) -> float:
        return self.n_prompt / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def gen_tps(self) -> float:
        # The first token comes out of the prompt pass; decode speed counts the rest.
        n = self.n_generated - 1
        return n / self.gen_seconds if n > 0 and self.gen_seconds > 0 else 0.0


class _StopMatcher:
    """Holds back text that could still become a stop string."""

    def __init__(self, stops):
        self.stops = [s for s in (stops or ()) if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, stopped)."""
        if not self.stops:
            return text, False
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending = self.pending[:cut], ""
            return out, True
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        out = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class TokenRules:
    """One sequence's rules per generated token, shared by `sample_tokens` and the server's
    scheduler: sample (under the constraint `guide`, if any), stop at an end token, stream
    the text with stop strings held back, stop once the constraint is complete or after
    `max_tokens`. Context limits are the caller's (they depend on its session)."""

    def __init__(self, sampler: Sampler, tokenizer, eos, stop=None, guide=None, shown=(),
                 max_tokens: int | None = None):
        self.sampler, self.guide, self.eos, self.max_tokens = sampler, guide, eos, max_tokens
        # shown: ids already on screen, context for the stream (keeps the joining space)
        self.stream = tokenizer.stream(prefix=shown) if tokenizer is not None else None
        self.stopper = _StopMatcher(stop)
        self.n = 0          # tokens accepted (end tokens excluded)
        self.cut = False    # a stop string ended it: what it held back is not shown

    def sample(self, logits, history) -> int:
        g = self.guide
        return self.sampler(logits if g is None else g.mask(logits), history)

    def accept(self, token: int) -> tuple[str, str | None]:
        """(text now final, why generation ends here: "eos" (the token is an end token and
        not counted), "stop", "length", or None to go on)."""
        if token in self.eos:
            return "", "eos"
        if self.guide is not None:
            self.guide.consume(token)
        self.n += 1
        text = ""
        if self.stream is not None:
            text, stopped = self.stopper.feed(self.stream.push(token))
            if stopped:
                self.cut = True
                return text, "stop"
        if self.guide is not None and self.guide.done:
            return text, "stop"
        if self.max_tokens is not None and self.n >= self.max_tokens:
            return text, "length"
        return text, None

    def flush(self) -> str:
        """The text still held back, once generation ended (none after a stop string)."""
        if self.stream is None or self.cut:
            return ""
        text, _ = self.stopper.feed(self.stream.flush())
        return text + self.stopper.flush()

    @property
    def incomplete(self) -> bool:
        """Ended before the constraint was met."""
        return self.guide is not None and not self.guide.accepting


def generate(model, prompt, max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40,
             top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
             repeat_last_n: int = 64, seed: int | None = None, stop=None, add_bos: bool = True,
             presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
             json_schema=None, grammar: str | None = None, json_object: bool = False,
             n_ctx: int | None = None, session=None, stats: GenerationStats | None = None,
             context_shift: bool = True, keep: int = 4, kv_type: str = DEFAULT_KV_TYPE):
    """Yield text pieces of the continuation of `prompt` (a string or a list of token ids).

    Greedy when temperature <= 0. Same seed and options -> same text. Stops at `max_tokens`,
    an end-of-sequence token or a stop string (not emitted). A full context shifts (drops the
    oldest tokens after the first `keep`, see edgerope.engine.model.Session) when `context_shift`,
    else stops generation (stop_reason "context"). `keep` = -1 keeps the whole prompt.
    A prompt longer than the context streams through it with context shift; without, it is
    cut from the left (its first `keep` tokens stay) with a warning. `session` (optional)
    brings its own n_ctx / kv_type / context_shift; `keep` -1 then applies to it if empty.
    Constrained output (edgerope.engine.constrain, the `structured` extra): `json_schema` (a
    dict or JSON text), `grammar` (GBNF or Lark) or `json_object` (any JSON object); checked
    before the prompt is evaluated; the text then always follows it, and generation ends
    when it is complete (stop_reason "stop"); `stats.incomplete` says it was not (max_tokens
    or a full context came first).
    """
    t_start = time.perf_counter()
    tok = model.tokenizer
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                            repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed,
                            presence_penalty=presence_penalty,
                            frequency_penalty=frequency_penalty)
    params.validate()
    if max_tokens < 0:
        raise EdgeropeError(f"max_tokens must be >= 0, got {max_tokens}")
    guide = None
    if json_schema is not None or grammar is not None or json_object:
        from edgerope.engine.constrain import Constraint
        guide = Constraint.build(tok, json_schema=json_schema, grammar=grammar,
                                 any_json=json_object, vocab=model.config.vocab_size).start()
    if isinstance(prompt, str):
        if tok is None:
            raise EdgeropeError("this model has no tokenizer: pass token ids, not text")
        ids = tok.encode(prompt, add_bos=add_bos)
    else:
        ids = [int(t) for t in prompt]
    if not ids:
        bos = model.config.bos_token_id if tok is None else tok.bos_id
        if bos is None:
            raise EdgeropeError("empty prompt and the model has no BOS token to start from")
        ids = [bos]
    stats = stats if stats is not None else GenerationStats()
    if keep < -1:
        raise EdgeropeError(f"keep must be >= 0, or -1 for the whole prompt; got {keep}")
    sess = session
    if sess is None:
        n_ctx = n_ctx or model.default_ctx()
        sess = model.new_session(n_ctx=n_ctx, kv_type=kv_type, context_shift=context_shift,
                                 n_keep=min(max(keep, 0), n_ctx - 1))
    if keep == -1 and sess.pos == 0:
        want = min(len(ids), sess.n_ctx // 2)
        if want < len(ids):
            warnings.warn(f"--keep -1: the prompt has {len(ids)} tokens; keeping its first "
                          f"{want} (half the context) when the context shifts", stacklevel=2)
        sess.set_keep(want)
    ids = _fit_prompt(ids, sess, max_tokens)
    stats.n_prompt = len(ids)
    if max_tokens == 0:
        stats.stop_reason = "length"
        return
    sampler = Sampler(params)
    logits = sess.eval(ids)
    stats.prompt_seconds = time.perf_counter() - t_start
    yield from sample_tokens(model, sess, logits, sampler, max_tokens=max_tokens, stop=stop,
                             stats=stats, t_start=t_start, shown=ids, guide=guide)


def _fit_prompt(ids, sess, max_tokens):
    """The prompt, cut from the left if it cannot fit and the session cannot shift."""
    free = sess.n_ctx - sess.pos
    if len(ids) <= free or sess.context_shift:
        return ids
    keep = min(sess.n_keep, len(ids)) if sess.pos == 0 else 0
    room = max(1, min(max_tokens, free // 2))  # left for the reply
    tail = free - room - keep
    if tail < 1:
        raise ContextFullError(f"prompt of {len(ids)} tokens: the context has {free} tokens "
                               f"free (raise --ctx-size, or allow --context-shift)")
    warnings.warn(f"prompt of {len(ids)} tokens does not fit the context of {sess.n_ctx}: "
                  f"keeping its first {keep} and last {tail} tokens", stacklevel=3)
    return ids[:keep] + ids[len(ids) - tail:]


def sample_tokens(model, session, logits, sampler: Sampler, max_tokens: int | None = None,
                  stop=None, stats: GenerationStats | None = None, t_start: float | None = None,
                  shown=(), guide=None):
    """The per-token loop of `generate`, for a session that has already evaluated its prompt.

    `logits` are what `session.eval()` last returned (the last token's). Samples a token,
    yields its text, evaluates it, and so on until `max_tokens` (None = no limit), an
    end-of-sequence token, a stop string (not emitted) or a full context; the last sampled
    token is not evaluated. `shown` = ids whose text is already on screen (stream context, so
    that a leading "▁word" streams as " word"). Fills `stats` from n_generated on; times count
    from `t_start` (default: now). A session with context shift never fills up. `guide`
    (edgerope.engine.constrain.Guide): tokens the constraint forbids are never sampled, and
    generation stops once it is complete (stop_reason "stop").
    """
    t_start = time.perf_counter() if t_start is None else t_start
    stats = stats if stats is not None else GenerationStats()
    sess, tok = session, model.tokenizer
    eos = set(tok.eos_ids) if tok is not None else set(model.config.eos_token_ids)
    rules = TokenRules(sampler, tok, eos, stop, guide, shown, max_tokens)

    t_prompt = time.perf_counter()
    history = list(sess.tokens)
    while True:
        t_s = time.perf_counter()
        token = rules.sample(logits, history)
        if session.profiler is not None:
            session.profiler.add("sampling", time.perf_counter() - t_s)
        if stats.n_generated == 0:
            stats.first_token_seconds = time.perf_counter() - t_start
        text, reason = rules.accept(token)
        if reason == "eos":
            stats.stop_reason = "eos"
            break
        stats.n_generated += 1
        stats.token_ids.append(token)
        history.append(token)
        if text:
            yield text
        if reason is not None:
            stats.stop_reason = reason
            break
        if sess.pos >= sess.n_ctx and not sess.context_shift:
            stats.stop_reason = "context"
            break
        logits = sess.eval([token])
        stats.gen_seconds = time.perf_counter() - t_prompt
    text = rules.flush()
    if text:
        yield text
    stats.incomplete = rules.incomplete
    stats.gen_seconds = time.perf_counter() - t_prompt
