"""Continuous batching: many requests, one model, one forward per step (no HTTP here).

A `Scheduler` owns a `Batch` of `n_slots` sequences and one thread that loops:

  1. drop cancelled jobs (a client that went away): their slot is free for this step;
  2. admit queued jobs into free slots, choosing for each the slot whose cached tokens share
     the longest prefix with its prompt (the next turn of a chat finds its conversation), and
     keeping that prefix (Session.truncate) so only the rest is evaluated. With int8
     activations, a prompt evaluated in other chunks differs in the last bits (as in
     llama.cpp), so a job with `cache_prompt` False (llama-server's field) is evaluated anew:
     alone in a step, it is then exactly `generate`;
  3. one Batch.eval: the next token of every decoding slot, plus prompt chunks of slots still
     reading their prompts, up to n_batch tokens -- while others decode, a prompt advances
     at most `prefill_chunk` tokens a step, so their tokens keep flowing;
  4. per slot whose last token was evaluated: sample (its own Sampler: same seed, same text
     as `generate` for a lone request), stream the text (stop strings held back as in
     generate), finish on an end token, a stop string, max_tokens or a full context.

Jobs talk back through `emit(event)`, called on the scheduler thread:
("token", text, logprob) per generated token -- text may be "" while a multi-byte character
or a possible stop string is held back; logprob None unless asked -- then ("done",
finish_reason, usage) or ("error", status, message). A cancelled job gets no more events.

Owns: slots, the queue, admission, step planning, sampling per job. Not: HTTP, JSON,
templates (edgerope.server.api / app).
"""
from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

from edgerope.engine.batch import Batch
from edgerope.engine.cache import DEFAULT_KV_TYPE
from edgerope.engine.generate import TokenRules
from edgerope.engine.sampler import Sampler, SamplingParams
from edgerope.errors import ParameterError
from edgerope.text.conversation import _common_prefix

__all__ = ["Job", "Scheduler", "QueueFull"]

_SHOWN = 32  # prompt tokens given to the stream decoder as context (the joining space)
MIN_REUSE = 16  # a cached prefix shorter than this is evaluated anew (a shared BOS or
# template header saves nothing worth a prompt split differently from a fresh evaluation)


class QueueFull(Exception):
    """Every slot busy and the queue at its limit: try again later."""


@dataclass(eq=False)
class Job:
    """One request: prompt ids, sampling, limits, and where its events go."""
    ids: list
    emit: object                       # callable(event), called on the scheduler thread
    params: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None      # None: until an end token or a full context
    stop: list = field(default_factory=list)
    n_probs: int = -1                  # -1: no logprobs; k >= 0: the token's and the top k
    cache_prompt: bool = True          # reuse a slot's cached prefix (False: evaluate anew)
    ignore_eos: bool = False           # go on past end tokens (llama-server's; benchmarks)
    constraint: object = None          # edgerope.engine.constrain.Constraint (JSON, grammar)
    cancelled: bool = False            # set from any thread: the scheduler drops the job
    # filled in by the scheduler
    n_cached: int = 0                  # prompt tokens found in the slot's cache
    n_generated: int = 0
    finish_reason: str = ""            # as the "done" event says

    def usage(self) -> dict:
        n = len(self.ids)
        return {"prompt_tokens": n, "completion_tokens": self.n_generated,
                "total_tokens": n + self.n_generated,
                "prompt_tokens_details": {"cached_tokens": self.n_cached}}


class _Slot:
    def __init__(self, index: int, session):
        self.index, self.session = index, session
        self.job: Job | None = None
        self.pending: list = []        # prompt ids still to evaluate
        self.next: int | None = None   # the sampled token to evaluate next step
        self.rules: TokenRules | None = None  # the job's per-token rules
        self.used = 0.0                # when it last finished (least recently used first)


class Scheduler:
    """`n_slots` sequences of `n_ctx` tokens; at most `max_queue` jobs waiting for a slot."""

    def __init__(self, model, n_slots: int = 4, n_ctx: int | None = None, n_batch: int = 512,
                 *, kv_type: str = DEFAULT_KV_TYPE, max_queue: int = 64,
                 prefill_chunk: int = 128):
        if n_slots < 1:
            raise ParameterError(f"the number of slots (-np) must be >= 1, got {n_slots}")
        if max_queue < 0:
            raise ParameterError(f"max_queue must be >= 0, got {max_queue}")
        self.model, self.tokenizer = model, model.tokenizer
        self.batch = Batch(model, n_slots, n_ctx, n_batch, kv_type=kv_type)
        self.n_ctx, self.n_batch = self.batch.n_ctx, self.batch.n_batch
        self.slots = [_Slot(i, s) for i, s in enumerate(self.batch.sessions)]
        self.max_queue, self.prefill_chunk = max_queue, max(1, prefill_chunk)
        self._queue: list[Job] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0                 # batch evaluations so far
        self.tokens_evaluated = 0

    # -- the outside: submit, cancel, status, start / stop ------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job (raises QueueFull when the queue is full, ParameterError when its
        prompt cannot fit a slot's context)."""
        if not job.ids:
            raise ParameterError("the prompt is empty")
        if len(job.ids) >= self.n_ctx:
            raise ParameterError(f"the prompt is {len(job.ids)} tokens, a slot's context "
                                 f"{self.n_ctx}: no room left to generate")
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            busy = sum(s.job is not None for s in self.slots)
            if busy + len(self._queue) >= len(self.slots) + self.max_queue:
                raise QueueFull(f"all {len(self.slots)} slots busy and {len(self._queue)} "
                                f"requests queued")
            self._queue.append(job)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """From any thread: the job's slot is freed at the next step, no more events."""
        job.cancelled = True
        with self._cv:
            self._cv.notify()

    def status(self) -> dict:
        busy = sum(s.job is not None for s in self.slots)
        return {"slots_idle": len(self.slots) - busy, "slots_processing": busy,
                "queued": len(self._queue)}

    def start(self) -> "Scheduler":
        """Run the loop in a thread of its own (`run` on the main thread is faster: see run)."""
        self._thread = threading.Thread(target=self.run, name="edgerope-scheduler",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop: jobs still queued or running end with finish_reason "cancelled"."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        """The loop, on the calling thread, until `stop()`. On the main thread the kernels run
        at full speed: with Numba's OpenMP layer, parallel regions started from another
        thread measured ~70% slower here (its team's workers do not stay hot between
        regions), so `edgerope serve` computes on the main thread and serves HTTP from a
        second one. The wait wakes twice a second, so signal handlers run."""
        while True:
            with self._cv:
                while not self._stopping and not self._queue and \
                        not any(s.job is not None for s in self.slots):
                    self._cv.wait(0.5)
                if self._stopping:
                    break
                self._drop_cancelled()
                self._admit()
            parts = self._plan()
            if not parts:
                continue
            try:
                logits = self.batch.eval([(s.index, ids) for s, ids in parts])
            except Exception as e:  # a bug: fail these jobs, keep serving the others
                traceback.print_exc()
                for s, _ in parts:
                    self._finish(s, None, error=f"internal error: {type(e).__name__}: {e}")
                    s.session.reset()
                continue
            self.steps += 1
            self.tokens_evaluated += sum(len(ids) for _, ids in parts)
            for j, (s, _) in enumerate(parts):
                if s.job is not None and not s.pending:
                    self._sample(s, logits[j])
        with self._cv:
            jobs = self._queue + [s.job for s in self.slots if s.job is not None]
            self._queue = []
        for s in self.slots:
            s.job = None
        for job in jobs:
            if not job.cancelled:
                job.finish_reason = "cancelled"
                job.emit(("done", "cancelled", job.usage()))

    def _drop_cancelled(self) -> None:
        self._queue = [j for j in self._queue if not j.cancelled]
        for s in self.slots:
            if s.job is not None and s.job.cancelled:
                self._free(s)

    @staticmethod
    def _free(s: _Slot):
        """Free slot s; returns the job it held."""
        job = s.job
        s.job, s.pending, s.next, s.rules = None, [], None, None
        s.used = time.perf_counter()
        return job

    def _admit(self) -> None:
        while self._queue:
            free = [s for s in self.slots if s.job is None]
            if not free:
                return
            job = self._queue.pop(0)
            shared = [_common_prefix(s.session.tokens, job.ids) if job.cache_prompt else 0
                      for s in free]
            shared = [n if n >= MIN_REUSE else 0 for n in shared]
            best = max(range(len(free)), key=lambda i: (shared[i], -free[i].used))
            slot, n = free[best], min(shared[best], len(job.ids) - 1)
            if not slot.session.truncate(n):
                slot.session.reset()
                n = 0
            self._start(slot, job, n)

    def _start(self, slot: _Slot, job: Job, n_cached: int) -> None:
        tok = self.tokenizer
        slot.job, job.n_cached = job, n_cached
        slot.pending, slot.next = list(job.ids[n_cached:]), None
        slot.rules = TokenRules(Sampler(job.params), tok,
                                set() if job.ignore_eos else set(tok.eos_ids), job.stop,
                                None if job.constraint is None else job.constraint.start(),
                                job.ids[-_SHOWN:], job.max_tokens)

    def _plan(self) -> list:
        """This step's parts: every decoding slot's next token, then prompt chunks."""
        parts = []
        budget = self.n_batch
        for s in self.slots:
            if s.job is not None and s.next is not None:
                parts.append((s, [s.next]))
                s.next = None
                budget -= 1
        limit = self.prefill_chunk if parts else self.n_batch
        for s in self.slots:
            if s.job is not None and s.pending and budget > 0:
                n = min(len(s.pending), budget, limit)
                parts.append((s, s.pending[:n]))
                del s.pending[:n]
                budget -= n
        return parts

    def _sample(self, s: _Slot, logits: np.ndarray) -> None:
        job = s.job
        if job.cancelled:
            return  # dropped at the next step
        token = s.rules.sample(logits, s.session.tokens)
        text, reason = s.rules.accept(token)
        if reason == "eos":
            return self._finish(s, "stop")
        job.n_generated += 1
        lp = _logprob(logits, token, job.n_probs) if job.n_probs >= 0 else None
        job.emit(("token", text, lp))
        if reason is not None:
            return self._finish(s, reason)
        if s.session.pos >= self.n_ctx:
            return self._finish(s, "length")
        s.next = token

    def _finish(self, s: _Slot, reason, error: str | None = None) -> None:
        rules = s.rules
        job = self._free(s)
        if job is None or job.cancelled:
            return
        if error is not None:
            job.finish_reason = "error"
            job.emit(("error", 500, error))
            return
        text = rules.flush()
        if text:
            job.emit(("token", text, None))
        job.finish_reason = reason
        job.emit(("done", reason, job.usage()))


def _logprob(logits: np.ndarray, token: int, k: int) -> dict:
    """The token's log-probability under the model (temperature 1, before penalties) and the
    k most likely tokens' (OpenAI's logprobs / top_logprobs)."""
    x = logits.astype(np.float64)
    top = float(x.max())
    lse = top + float(np.log(np.exp(x - top).sum()))
    out = {"token": int(token), "logprob": float(x[token]) - lse, "top": []}
    if k > 0:
        idx = np.argpartition(-x, k - 1)[:k]
        idx = idx[np.argsort(-x[idx], kind="stable")]
        out["top"] = [(int(i), float(x[i]) - lse) for i in idx]
    return out
