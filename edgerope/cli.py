"""The `edgerope` command line. Thin: parse flags (named as llama.cpp names them), call the
library, print. edgerope's own errors (bad input: files, flags, models that cannot fit) print
one line and exit 1 (`--debug` shows the traceback); anything else is a bug and shows its
traceback with a request to report it. Ctrl-C stops cleanly with exit code 130. `--help`
imports no kernels (numba loads only when a command runs)."""
from __future__ import annotations

import functools
import os
import sys
import warnings

import click

from edgerope.engine import DEFAULT_KV_TYPE, KV_TYPES
from edgerope.errors import EdgeropeError, EdgeropeWarning
from edgerope.formats import DTYPES

_BUG = ("edgerope: this is a bug in edgerope, not in your input; please report it with the "
        "traceback above and the command that caused it")


def _fail(msg: str, code: int = 1):
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def handle_errors(fn):
    """Set up the run time (progress lines unless -q), turn edgerope's errors into one clean
    line and exit 1, library warnings into one "warning: ..." line on stderr. Other
    exceptions are bugs: their traceback is shown, with the request to report it."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from edgerope import runtime
        debug = kwargs.get("debug", False)
        runtime.setup(quiet=kwargs.get("quiet", False))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.showwarning = lambda message, *a, **k: click.echo(
                    f"warning: {message}", err=True)
                return fn(*args, **kwargs)
        except EdgeropeError as e:
            if debug:
                raise
            _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        except (KeyboardInterrupt, SystemExit, click.exceptions.ClickException,
                click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception:
            import traceback
            traceback.print_exc()
            click.echo(_BUG, err=True)
            sys.exit(2)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgerope")
def main():
    """edgerope: decoder-only language models on CPUs, fast."""


def _kv_options(keep: int, keep_help: str):
    """--kv-type, --keep, --context-shift: the KV cache options of generate and chat."""
    return functools.partial(_add_kv_options, keep=keep, keep_help=keep_help)


def _add_kv_options(fn, keep, keep_help):
    fn = click.option("--context-shift/--no-context-shift", default=True, show_default=True,
                      help="When the context is full, drop the oldest tokens after the first "
                           "--keep and go on (off: stop with a message).")(fn)
    fn = click.option("--keep", default=keep, show_default=True, type=int,
                      help="Tokens kept at the start when the context shifts (attention "
                           f"sinks); {keep_help}")(fn)
    fn = click.option("--kv-type", type=click.Choice(KV_TYPES), default=DEFAULT_KV_TYPE,
                      show_default=True, help="KV cache element type.")(fn)
    return fn


def _threads(n):
    from edgerope import runtime
    if n is not None and n < 1:
        raise EdgeropeError(f"--threads must be >= 1, got {n}")
    return runtime.set_threads(n)


# the sampling flags of generate and chat (llama.cpp's names): (flags, default, type, help)
_SAMPLING = (
    (("--temp",), 0.8, float, "Temperature; 0 = greedy."),
    (("--top-k",), 40, int, "Sample among the k most likely tokens (0 = all)."),
    (("--top-p",), 0.95, float, "Nucleus sampling: the smallest set with this probability."),
    (("--min-p",), 0.05, float, "Drop tokens below this fraction of the top probability."),
    (("--repeat-penalty",), 1.0, float, "Penalty for tokens among the last --repeat-last-n "
                                        "(1 = off)."),
    (("--repeat-last-n",), 64, int, "Tokens the penalties look back over."),
    (("--presence-penalty",), 0.0, float, "Lower a repeated token's logit by this once "
                                          "(0 = off)."),
    (("--frequency-penalty",), 0.0, float, "Lower a token's logit by this per repeat "
                                           "(0 = off)."),
    (("-s", "--seed"), None, int, "RNG seed (default: random)."),
)


def _sampling_options(fn):
    """_SAMPLING's flags, and -r/--reverse-prompt, on a command: one definition for both."""
    fn = click.option("-r", "--reverse-prompt", "stop", multiple=True,
                      help="Stop when this text is generated (repeatable).")(fn)
    for flags, default, kind, text in reversed(_SAMPLING):
        fn = click.option(*flags, default=default, type=kind, help=text,
                          show_default=default is not None)(fn)
    return fn


def _mmap_option(fn):
    """--no-mmap (llama.cpp's flag), on the commands that load a model to run it."""
    return click.option(
        "--no-mmap", "no_mmap", is_flag=True,
        help="Read an edgerope directory's weights into memory (on huge pages: decoding "
             "~5% faster) instead of mapping the file; slower start, memory not shared "
             "between processes. GGUF and Hugging Face weights are always read.")(fn)


def _run_options(fn):
    """--debug and -q/--quiet, on every command."""
    fn = click.option("-q", "--quiet", is_flag=True,
                      help="No progress lines on stderr (compiling, converting).")(fn)
    return click.option("--debug", is_flag=True, help="Show tracebacks.")(fn)


def _decode(data: bytes, where: str) -> str:
    """UTF-8 text; invalid bytes become U+FFFD, with one warning naming `where`."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        warnings.warn(f"{where}: not valid UTF-8 (first bad byte at offset {e.start}); "
                      f"invalid bytes replaced by U+FFFD", EdgeropeWarning)
        return data.decode("utf-8", errors="replace")


def _read_text(path: str) -> str:
    """A text file, or stdin for "-", as _decode reads it."""
    if path == "-":
        return _decode(sys.stdin.buffer.read(), "stdin")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise EdgeropeError(f"{path}: {e.strerror or e}") from None
    return _decode(data, path)


def _text_or_file(value, option: str):
    """An option given as text or as the path of a file holding it."""
    if value is None:
        return None
    if os.path.isfile(value):
        return _read_text(value)
    return _arg_text(value, option)


def _arg_text(text, option: str):
    """An argument given on the command line: bytes that were not UTF-8 (Python keeps them as
    lone surrogates) become U+FFFD, with a warning."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _decode(os.fsencode(text), option)


def _check_memory(force, model_path, dtype, ctx_size, kv_type, batch_size, keep):
    """Refuse, before loading, a model that plainly cannot fit in the available memory."""
    if not force:
        from edgerope.io.preflight import preflight
        preflight(model_path, dtype, ctx_size, kv_type, batch_size, max(keep, 4))


_THREADS_HELP = "Threads (default: physical performance cores)."
_FORCE_HELP = "Start even if the model does not seem to fit in the available memory."


@main.command()
@click.option("-m", "--model", "model_path", default=None,
              help="Model: a GGUF file, a Hugging Face or edgerope directory, or a registry "
                   "name (default: the registry's default model).")
@click.option("-p", "--prompt", default=None, help="Prompt text.")
@click.option("-f", "--file", "prompt_file", type=click.Path(), default=None,
              help="Read the prompt from a file (- = stdin).")
@click.option("-n", "--n-predict", default=128, show_default=True, type=int,
              help="Number of tokens to generate.")
@click.option("-j", "--json-schema", default=None,
              help="Output must match this JSON schema (JSON text or a file).")
@click.option("--grammar", default=None,
              help="Output must follow this GBNF (or Lark) grammar (a file or the text).")
@click.option("--json", "json_object", is_flag=True, help="Output must be a JSON object.")
@click.option("-t", "--threads", default=None, type=int, help=_THREADS_HELP)
@click.option("-c", "--ctx-size", default=None, type=int,
              help="Context size in tokens (default: min(model's, 4096)).")
@click.option("-b", "--batch-size", default=512, show_default=True, type=int,
              help="Prompt tokens evaluated per batch.")
@_sampling_options
@click.option("--dtype", type=click.Choice(DTYPES), default="auto",
              show_default=True, help="Weight format in memory.")
@_kv_options(4, "-1 = the whole prompt.")
@click.option("--profile", is_flag=True, help="Print time per operation per generated token.")
@click.option("-v", "--verbose", is_flag=True, help="Print model and KV cache memory.")
@click.option("--force", is_flag=True, help=_FORCE_HELP)
@_mmap_option
@_run_options
@handle_errors
def generate(model_path, prompt, prompt_file, n_predict, json_schema, grammar, json_object,
             threads, ctx_size, batch_size, temp,
             top_k, top_p, min_p, repeat_penalty, repeat_last_n, presence_penalty,
             frequency_penalty, seed, stop, dtype, kv_type,
             keep, context_shift, profile, verbose, force, no_mmap, debug, quiet):
    """Generate text from a prompt, streaming to stdout; timings on stderr."""
    from edgerope.engine.generate import GenerationStats, generate as gen

    if prompt_file is not None:
        prompt = _read_text(prompt_file)
    prompt = _arg_text(prompt, "-p") or ""
    json_schema = _text_or_file(json_schema, "--json-schema")
    grammar = _text_or_file(grammar, "--grammar")
    n_threads = _threads(threads)
    _check_memory(force, model_path, dtype, ctx_size, kv_type, batch_size, keep)
    model = _load(model_path, dtype, no_mmap=no_mmap)
    if model.tokenizer is None:
        raise EdgeropeError(f"{model_path}: no tokenizer found (expected tokenizer.model or tokenizer.json)")
    stats = GenerationStats()
    n_ctx = ctx_size or model.default_ctx()  # (keep < -1: generate() says so)
    if keep >= n_ctx:
        raise EdgeropeError(f"--keep {keep} must be smaller than the context size ({n_ctx})")
    session = model.new_session(n_ctx=n_ctx, n_batch=batch_size, kv_type=kv_type,
                                n_keep=max(keep, 0), context_shift=context_shift)
    prof = None
    if profile:
        from edgerope.engine.profile import Profiler
        prof = Profiler()
    out = sys.stdout
    shown = False
    try:
        for piece in gen(model, prompt, max_tokens=n_predict, temperature=temp, top_k=top_k,
                         top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty,
                         repeat_last_n=repeat_last_n, seed=seed, stop=list(stop),
                         presence_penalty=presence_penalty,
                         frequency_penalty=frequency_penalty, json_schema=json_schema,
                         grammar=grammar, json_object=json_object,
                         session=session, stats=stats, keep=keep):
            if verbose and not shown:
                _print_memory(model, session)
                shown = True
            out.write(piece)
            out.flush()
            if prof is not None and session.profiler is None and stats.n_generated >= 1:
                session.profiler = prof  # decode only: the prompt pass is not per-token work
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
        _print_timings(stats, n_threads, session)
        sys.exit(130)
    out.write("\n")
    out.flush()
    if verbose and not shown:
        _print_memory(model, session)
    if stats.stop_reason == "context":
        click.echo(f"context full ({session.n_ctx} tokens): generation stopped "
                   f"(--context-shift goes on past it, or raise --ctx-size)", err=True)
    _print_timings(stats, n_threads, session)
    if stats.incomplete:
        _fail(f"the output stopped after {stats.n_generated} tokens, before it matched the "
              f"{'grammar' if grammar else 'JSON schema' if json_schema else 'JSON'} "
              f"(raise -n)")
    if prof is not None and prof.calls:
        prof.tokens = prof.calls.get("matmul.lm_head", 0)
        # decode wall time over the profiled tokens (gen_seconds spans n_generated - 1 evals)
        prof.wall = stats.gen_seconds * prof.tokens / max(stats.n_generated - 1, 1)
        click.echo(prof.table(), err=True)


@main.command()
@click.option("-m", "--model", "model_path", default=None, help="Model (as for generate).")
@click.option("--system", "-sys", "system", default=None, help="System prompt.")
@click.option("--chat-template", default=None,
              help="Jinja template source or a built-in name (gemma, chatml, llama3); "
                   "default: the model's own.")
@click.option("-n", "--n-predict", default=-1, show_default=True, type=int,
              help="Max tokens per reply (-1 = until end of turn).")
@click.option("-t", "--threads", default=None, type=int, help=_THREADS_HELP)
@click.option("-c", "--ctx-size", default=None, type=int)
@click.option("-b", "--batch-size", default=512, show_default=True, type=int)
@_sampling_options
@click.option("--dtype", type=click.Choice(DTYPES), default="auto",
              show_default=True)
@_kv_options(-1, "-1 = the system prompt.")
@click.option("--tools", "tools_file", default=None,
              help="JSON file (or text) of OpenAI-style tools the model may call: a call "
                   "prints a 'tool_call: {...}' line and the next input line is its result.")
@click.option("--force", is_flag=True, help=_FORCE_HELP)
@_mmap_option
@_run_options
@handle_errors
def chat(model_path, system, chat_template, tools_file, n_predict, threads, ctx_size,
         batch_size, temp,
         top_k, top_p, min_p, repeat_penalty, repeat_last_n, presence_penalty, frequency_penalty,
         seed, stop, dtype, kv_type, keep,
         context_shift, force, no_mmap, debug, quiet):
    """Interactive chat with the model's chat template; /reset clears, /exit or Ctrl-D ends.
    Reads one user turn per line when stdin is not a terminal."""
    from edgerope.apps.chat import run_chat
    system = _arg_text(system, "--system")
    tools = None
    if tools_file is not None:
        import json
        try:
            tools = json.loads(_text_or_file(tools_file, "--tools"))
        except ValueError as e:
            raise EdgeropeError(f"--tools: not valid JSON: {e}") from None
    _threads(threads)
    _check_memory(force, model_path, dtype, ctx_size, kv_type, batch_size, keep)
    try:
        model = _load(model_path, dtype, no_mmap=no_mmap)
    except KeyboardInterrupt:
        sys.exit(130)
    if model.tokenizer is None:
        raise EdgeropeError("this model has no tokenizer")
    sys.exit(run_chat(model, system=system, n_ctx=ctx_size, n_batch=batch_size,
                      template=chat_template, max_tokens=None if n_predict < 0 else n_predict,
                      temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                      repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed,
                      presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                      stop=list(stop), kv_type=kv_type, keep=keep, tools=tools,
                      context_shift=context_shift))


@main.command()
@click.option("-m", "--model", "model_path", default=None, help="Model (as for generate).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("-np", "--parallel", "n_slots", default=4, show_default=True, type=int,
              help="Sequences decoded together (slots), each with its own KV cache.")
@click.option("-c", "--ctx-size", default=None, type=int,
              help="Context of all slots together; each gets ctx-size / parallel "
                   "(default: min(model's, 4096)).")
@click.option("-b", "--batch-size", default=512, show_default=True, type=int,
              help="Tokens evaluated per step, all slots together.")
@click.option("-t", "--threads", default=None, type=int, help=_THREADS_HELP)
@click.option("--api-key", default=None, envvar="EDGEROPE_API_KEY",
              help="Require 'Authorization: Bearer KEY' (also $EDGEROPE_API_KEY).")
@click.option("-a", "--alias", default=None,
              help="Model name the API reports and accepts (default: the -m argument).")
@click.option("--chat-template", default=None,
              help="Jinja template source or a built-in name; default: the model's own.")
@click.option("--max-queue", default=64, show_default=True, type=int,
              help="Requests waiting for a slot before new ones get 503.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True)
@click.option("--kv-type", type=click.Choice(KV_TYPES), default=DEFAULT_KV_TYPE,
              show_default=True, help="KV cache element type.")
@click.option("--force", is_flag=True, help=_FORCE_HELP)
@_mmap_option
@_run_options
@handle_errors
def serve(model_path, host, port, n_slots, ctx_size, batch_size, threads, api_key, alias,
          chat_template, max_queue, dtype, kv_type, force, no_mmap, debug, quiet):
    """OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models,
    /health) decoding up to --parallel requests together. Needs the `server` extra."""
    from edgerope.server.app import _imports, serve as run
    _imports()
    if not 0 <= port < 65536:
        raise EdgeropeError(f"--port must be in [0, 65535], got {port}")
    if n_slots < 1:
        raise EdgeropeError(f"--parallel must be >= 1, got {n_slots}")
    _threads(threads)
    _check_memory(force, model_path, dtype, ctx_size, kv_type, batch_size, 4)
    model = _load(model_path, dtype, no_mmap=no_mmap)
    if model.tokenizer is None:
        raise EdgeropeError("this model has no tokenizer: a server needs one")
    if alias is None:
        from edgerope.io.registry import default_model
        alias = os.path.basename(os.path.normpath(model_path or default_model()))

    def ready(h, p):
        click.echo(f"edgerope: serving {alias} on http://{h}:{p} ({n_slots} slots)", err=True)
    sys.exit(run(model, alias, host=host, port=port, n_slots=n_slots, n_ctx=ctx_size,
                 n_batch=batch_size, api_key=api_key, kv_type=kv_type, max_queue=max_queue,
                 chat_template=chat_template, ready=ready))


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        out = [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected a comma-separated list of integers, got {value!r}")
    if any(v < 0 for v in out):
        raise click.BadParameter("values must be >= 0")
    return out


def _kv_list(ctx, param, value):
    out = [v.strip() for v in (value or DEFAULT_KV_TYPE).split(",") if v.strip()]
    bad = [v for v in out if v not in KV_TYPES]
    if bad:
        raise click.BadParameter(f"unknown KV type(s) {', '.join(bad)} (choose from "
                                 f"{', '.join(KV_TYPES)})")
    return out


@main.command()
@click.option("-m", "--model", "model_path", default=None, help="Model (as for generate).")
@click.option("-p", "--n-prompt", default="512", callback=_int_list, show_default=True,
              help="Prompt sizes (comma list): ppN tests.")
@click.option("-n", "--n-gen", default="128", callback=_int_list, show_default=True,
              help="Generation lengths (comma list): tgN tests.")
@click.option("-t", "--threads", default=None, callback=_int_list,
              help="Thread counts (comma list; default: physical performance cores).")
@click.option("-d", "--n-depth", default="0", callback=_int_list, show_default=True,
              help="Context depths (comma list): tokens already in the KV cache.")
@click.option("--kv-type", "kv_types", default=None, callback=_kv_list,
              help="KV cache types (comma list of f32, f16, int8; default: the default).")
@click.option("-b", "--batch-size", default=512, show_default=True, type=int)
@click.option("-r", "--repetitions", default=5, show_default=True, type=int)
@click.option("-o", "--output", type=click.Choice(["md", "json"]), default="md",
              show_default=True)
@click.option("--profile", is_flag=True, help="Also print time per operation for each test.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto",
              show_default=True)
@_mmap_option
@_run_options
@handle_errors
def bench(model_path, n_prompt, n_gen, n_depth, kv_types, threads, batch_size, repetitions,
          output, profile, dtype, no_mmap, debug, quiet):
    """llama-bench-style ppN / tgN throughput (mean ± stddev over -r runs)."""
    import json

    from edgerope.apps.bench import markdown, run_bench
    if repetitions < 1:
        raise EdgeropeError(f"--repetitions must be >= 1, got {repetitions}")
    # bench feeds token ids, no text
    model = _load(model_path, dtype, tokenizer=False, no_mmap=no_mmap)
    records, profiles = run_bench(model, n_prompt, n_gen, threads or [None], repetitions,
                                  batch_size, profile, depths=n_depth, kv_types=kv_types)
    if output == "json":
        click.echo(json.dumps(records, indent=2))
    else:
        click.echo(markdown(records))
        click.echo(f"\nJIT warm-up (compile or cache load): {records[0]['jit_s']:.1f} s"
                   if records else "", err=True)
        mem = [r for r in records if "mem_peak_rss" in r]
        if mem:
            peak = max(r["mem_peak_rss"] for r in mem) / 2**20
            anon = max(r["mem_anonymous"] for r in mem) / 2**20
            click.echo(f"memory: peak RSS {peak:.0f} MiB, anonymous (private) {anon:.0f} MiB "
                       f"at most during a test", err=True)
    for (th, test), prof in profiles.items():
        click.echo(f"\nprofile {test}, {th} threads:\n{prof.table()}", err=output == "json")


def _load(spec, dtype, tokenizer=True, no_mmap=False):
    from edgerope.io.registry import load_any
    return load_any(spec, dtype=dtype, tokenizer=tokenizer, mmap=not no_mmap)


@main.command()
@click.argument("model_path", required=False)
@click.option("-c", "--ctx-size", default=None, type=int,
              help="Context size for the memory estimate (default: the model's default, "
                   "min(trained, 4096)).")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto",
              show_default=True)
@click.option("--kv-type", default=None, help="KV cache type of the memory estimate.")
@_run_options
@handle_errors
def info(model_path, ctx_size, dtype, kv_type, debug, quiet):
    """Architecture, parameters, RoPE, quantization, file size and RAM of a model."""
    from edgerope.apps.info import describe
    if ctx_size is not None and ctx_size <= 0:
        raise EdgeropeError(f"--ctx-size must be positive, got {ctx_size}")
    from edgerope.io.registry import plan_any
    model = plan_any(model_path, dtype)  # from the headers: nothing computed, no kernel loaded
    rows = describe(model, n_ctx=ctx_size, kv_type=_kv_list(None, None, kv_type)[0])
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")


@main.command()
@click.argument("src")
@click.argument("dst", required=False)
@click.option("--dtype", type=click.Choice(DTYPES), default="auto",
              show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists.")
@_run_options
@handle_errors
def convert(src, dst, dtype, overwrite, debug, quiet):
    """Convert a GGUF file or Hugging Face directory into edgerope's format (loads faster).

    DST defaults to weights/<name>-<dtype>."""
    import os
    import time

    from edgerope.io.native import save_native
    from edgerope.io.registry import weights_dir
    t0 = time.perf_counter()
    model = _load(src, dtype)
    if dst is None:
        base = os.path.basename(os.path.normpath(src)) if src else "model"
        dst = os.path.join(weights_dir(), f"{os.path.splitext(base)[0]}-{dtype}")
    out = save_native(model, dst, overwrite=overwrite)
    click.echo(f"wrote {out} ({model.weights.nbytes / 2**20:.1f} MiB of {dtype} weights) "
               f"in {time.perf_counter() - t0:.1f} s")


@main.command()
@click.option("-m", "--model", "model_path", default=None, help="Model (as for generate).")
@click.option("-f", "--file", "text_file", required=True, type=click.Path(),
              help="Text file to score (- = stdin).")
@click.option("-c", "--ctx-size", default=512, show_default=True, type=int,
              help="Window size in tokens.")
@click.option("-b", "--batch-size", default=512, show_default=True, type=int)
@click.option("--chunks", default=None, type=int, help="Score at most this many windows.")
@click.option("-t", "--threads", default=None, type=int, help=_THREADS_HELP)
@click.option("--dtype", type=click.Choice(DTYPES), default="auto",
              show_default=True)
@_mmap_option
@_run_options
@handle_errors
def perplexity(model_path, text_file, ctx_size, batch_size, chunks, threads, dtype, no_mmap,
               debug, quiet):
    """llama-perplexity-style windowed perplexity of a text file."""
    from edgerope.apps.perplexity import perplexity as ppl
    _threads(threads)
    text = _read_text(text_file)
    model = _load(model_path, dtype, no_mmap=no_mmap)
    r = ppl(model, text, n_ctx=ctx_size, n_batch=batch_size, max_chunks=chunks)
    click.echo(f"{r.n_chunks} chunks of {ctx_size} tokens, {r.n_scored} scored, "
               f"{r.seconds:.1f} s", err=True)
    click.echo(f"Final estimate: PPL = {r.ppl:.4f} +/- {r.ppl_stderr:.5f}")


def _print_timings(stats, n_threads, session=None):
    shifted = f" | context shifted: {session.n_shifted} tokens dropped" \
        if session is not None and session.n_shifted else ""
    click.echo(f"prompt: {stats.n_prompt} tokens, {stats.prompt_tps:.1f} tok/s | "
               f"generation: {stats.n_generated} tokens, {stats.gen_tps:.1f} tok/s | "
               f"first token: {stats.first_token_seconds:.2f} s | threads: {n_threads}"
               f"{shifted}", err=True)


def _print_memory(model, session):
    click.echo(f"weights: {model.dtype}, {model.weights.nbytes / 2**20:.1f} MiB | "
               f"{session.cache.describe()}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
