"""The `edgerope` command line. Thin: parse flags (named as llama.cpp names them), call the
library, print. Errors caused by input print one line and exit 1 (`--debug` shows the
traceback); Ctrl-C stops cleanly with exit code 130."""
from __future__ import annotations

import functools
import os
import sys

import click

from .errors import EdgeropeError


def _fail(msg: str, code: int = 1):
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def handle_errors(fn):
    """Turn input errors into one clean line and a non-zero exit."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except (EdgeropeError, ValueError, OSError) as e:
            if debug:
                raise
            _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgerope")
def main():
    """edgerope: decoder-only language models on CPUs, fast."""


def _threads(n):
    from . import kernels
    return kernels.set_threads(n)


@main.command()
@click.option("-m", "--model", "model_path", required=True, type=click.Path(),
              help="Model directory (Hugging Face layout).")
@click.option("-p", "--prompt", default=None, help="Prompt text.")
@click.option("-f", "--file", "prompt_file", type=click.Path(), default=None,
              help="Read the prompt from a file.")
@click.option("-n", "--n-predict", default=128, show_default=True, type=int,
              help="Number of tokens to generate.")
@click.option("-t", "--threads", default=None, type=int, help="Threads (default: all cores).")
@click.option("-c", "--ctx-size", default=None, type=int,
              help="Context size in tokens (default: min(model's, 4096)).")
@click.option("-b", "--batch-size", default=512, show_default=True, type=int,
              help="Prompt tokens evaluated per batch.")
@click.option("--temp", default=0.8, show_default=True, type=float,
              help="Temperature; 0 = greedy.")
@click.option("--top-k", default=40, show_default=True, type=int)
@click.option("--top-p", default=0.95, show_default=True, type=float)
@click.option("--min-p", default=0.05, show_default=True, type=float)
@click.option("--repeat-penalty", default=1.0, show_default=True, type=float)
@click.option("--repeat-last-n", default=64, show_default=True, type=int)
@click.option("-s", "--seed", default=None, type=int, help="RNG seed (default: random).")
@click.option("-r", "--reverse-prompt", "stop", multiple=True,
              help="Stop when this text is generated (repeatable).")
@click.option("--dtype", type=click.Choice(["int8", "float32"]), default="int8",
              show_default=True, help="Weight format in memory.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@handle_errors
def generate(model_path, prompt, prompt_file, n_predict, threads, ctx_size, batch_size, temp,
             top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed, stop, dtype, debug):
    """Generate text from a prompt, streaming to stdout; timings on stderr."""
    from .generate import GenerationStats, generate as gen
    from .loading import load

    if prompt_file is not None:
        with open(prompt_file, encoding="utf-8", errors="replace") as f:
            prompt = f.read()
    prompt = prompt or ""
    n_threads = _threads(threads)
    model = load(model_path, dtype=dtype)
    if model.tokenizer is None:
        raise EdgeropeError(f"{model_path}: no tokenizer found (expected tokenizer.model)")
    stats = GenerationStats()
    session = model.new_session(n_ctx=ctx_size, n_batch=batch_size)
    out = sys.stdout
    try:
        for piece in gen(model, prompt, max_tokens=n_predict, temperature=temp, top_k=top_k,
                         top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                         repeat_last_n=repeat_last_n, seed=seed, stop=list(stop),
                         session=session, stats=stats):
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
        _print_timings(stats, n_threads)
        sys.exit(130)
    out.write("\n")
    out.flush()
    _print_timings(stats, n_threads)


def _print_timings(stats, n_threads):
    click.echo(f"prompt: {stats.n_prompt} tokens, {stats.prompt_tps:.1f} tok/s | "
               f"generation: {stats.n_generated} tokens, {stats.gen_tps:.1f} tok/s | "
               f"first token: {stats.first_token_seconds:.2f} s | threads: {n_threads}",
               err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
