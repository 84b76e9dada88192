"""`edgerope serve` (edgerope.server): the official `openai` client against a server started by
the test, raw HTTP for the edge cases, disconnects, API keys, signals, and a load of 8 clients.

The model is the default one (Gemma 3 270M, the `demo` extra). Servers run in this process
(uvicorn in a thread, port 0) except the signal test, which runs the CLI."""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from edgerope.errors import EdgeropeError  # noqa: E402
from edgerope.io.registry import locate  # noqa: E402
from edgerope.server.api import Api  # noqa: E402
from edgerope.server.app import MAX_BODY, build_app  # noqa: E402
from edgerope.server.scheduler import Scheduler  # noqa: E402

MODEL = "gemma3-270m"
CTX = 512  # per slot
GREEDY = dict(temperature=0, max_tokens=12)


@pytest.fixture(scope="module")
def model(real_model):
    return real_model(MODEL)


class Server:
    """A server in a thread of this process, on a free loopback port."""

    def __init__(self, model, n_slots=4, api_key=None, max_queue=64, n_ctx=CTX, template=None):
        self.scheduler = Scheduler(model, n_slots, n_ctx, 512, max_queue=max_queue).start()
        app = build_app(self.scheduler, Api(model, MODEL, n_ctx, template), api_key)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="error", lifespan="off"))
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, key="none", **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)

    def raw(self, method, path, body=None, headers=None):
        """(status, headers, parsed JSON or text) of one raw HTTP request."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        c.request(method, path, body=data, headers=headers or {})
        r = c.getresponse()
        text = r.read().decode()
        c.close()
        try:
            return r.status, dict(r.getheaders()), json.loads(text)
        except ValueError:
            return r.status, dict(r.getheaders()), text

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.scheduler.stop()


@pytest.fixture(scope="module")
def srv(model):
    s = Server(model)
    yield s
    s.close()


# ------------------------------------------------------------------- the official client

def test_chat_blocking_and_streaming_agree(srv):
    c = srv.client()
    msgs = [{"role": "user", "content": "Name three colours."}]
    # first in a fresh slot: the two compared requests then both find the prompt cached (a
    # prompt evaluated whole and one evaluated from its cached prefix differ in the last
    # bits of their int8 sums, which can flip a near-tie)
    c.chat.completions.create(model=MODEL, messages=msgs, **GREEDY)
    r = c.chat.completions.create(model=MODEL, messages=msgs, **GREEDY)
    text = r.choices[0].message.content
    assert r.object == "chat.completion" and r.model == MODEL and text
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(c.chat.completions.create(model=MODEL, messages=msgs, stream=True, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == text
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_completions_blocking_and_streaming(srv):
    c = srv.client()
    r = c.completions.create(model=MODEL, prompt="The capital of France is", **GREEDY)
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12
    parts = list(c.completions.create(model=MODEL, prompt="The capital of France is",
                                      stream=True, **GREEDY))
    assert "".join(p.choices[0].text for p in parts) == r.choices[0].text
    assert [m.id for m in c.models.list().data] == [MODEL]


def test_a_lone_request_gives_generates_text(srv, model):
    """Same seed, same options: the server's sampled text is `generate`'s. The prompt is
    evaluated anew (cache_prompt false, llama-server's field): a prompt evaluated from a
    cached prefix sums its int8 dots in other chunks, and on this model those last bits move
    logits by up to ~0.5, enough to change a sampled text."""
    opts = dict(temperature=0.9, top_k=20, top_p=0.9, min_p=0.02, seed=1234)
    prompt = "Once upon a time, in a small village,"
    want = "".join(model.generate(prompt, max_tokens=24, n_ctx=CTX, **opts))
    c = srv.client()
    # a prompt sharing only its first tokens (BOS) with what slots hold is evaluated anew
    r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0.9,
                             top_p=0.9, seed=1234, extra_body=dict(top_k=20, min_p=0.02))
    assert r.choices[0].text == want
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    c.completions.create(model=MODEL, prompt=prompt, max_tokens=2)  # now in a slot's cache
    for _ in range(2):
        r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0.9,
                                 top_p=0.9, seed=1234,
                                 extra_body=dict(top_k=20, min_p=0.02, cache_prompt=False))
        assert r.choices[0].text == want
        assert r.usage.prompt_tokens_details.cached_tokens == 0


def test_logprobs(srv):
    r = srv.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], logprobs=True,
        top_logprobs=3, **GREEDY)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for e in content:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-6)  # greedy
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob


def test_errors_are_the_clients_exceptions(srv):
    c = srv.client()
    msgs = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.BadRequestError, match="temperature"):
        c.chat.completions.create(model=MODEL, messages=msgs, temperature=5)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.chat.completions.create(model="gpt-9", messages=msgs)
    with pytest.raises(openai.BadRequestError, match="messages"):
        c.chat.completions.create(model=MODEL, messages=[])


def test_prompt_cache_reuses_the_conversation(srv):
    """The next chat turn evaluates only what the slot does not hold already."""
    c = srv.client()
    msgs = [{"role": "user", "content": "Tell me about the sea."}]
    r1 = c.chat.completions.create(model=MODEL, messages=msgs, **GREEDY)
    msgs += [{"role": "assistant", "content": r1.choices[0].message.content},
             {"role": "user", "content": "And about rivers?"}]
    t0 = time.perf_counter()
    stream = c.chat.completions.create(model=MODEL, messages=msgs, stream=True, **GREEDY)
    for ch in stream:
        if ch.choices[0].delta.content:
            break
    ttft = time.perf_counter() - t0
    stream.close()
    r2 = c.chat.completions.create(model=MODEL, messages=msgs, **GREEDY)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached >= r1.usage.prompt_tokens, (cached, r1.usage.prompt_tokens)
    assert r2.usage.prompt_tokens > cached
    assert ttft < 2.0  # generous: shared CI cores; bench/serve.py measures it


# ------------------------------------------------------------------ raw HTTP edge cases

@pytest.mark.parametrize("body,field", [
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "seed": "s"}, "seed"),
])
def test_bad_fields_are_400_naming_the_field(srv, body, field):
    status, _, err = srv.raw("POST", "/v1/chat/completions", body)
    assert status == 400
    assert err["error"]["param"] == field and err["error"]["message"].startswith(field)
    assert err["error"]["type"] == "invalid_request_error"


def test_malformed_and_oversized_bodies(srv):
    status, _, err = srv.raw("POST", "/v1/completions", b"{not json")
    assert status == 400 and "not valid JSON" in err["error"]["message"]
    status, _, err = srv.raw("POST", "/v1/completions", b"[1, 2]")
    assert status == 400 and "JSON object" in err["error"]["message"]
    status, _, err = srv.raw("POST", "/v1/completions", b"x" * (MAX_BODY + 1))
    assert status == 413 and err["error"]["code"] == "request_too_large"
    status, _, err = srv.raw("POST", "/v1/completions", {"prompt": "x", "model": "other"})
    assert status == 404 and err["error"]["code"] == "model_not_found"
    status, _, err = srv.raw("GET", "/v1/nothing")
    assert status == 404 and "no such route" in err["error"]["message"]
    long = " ".join(["word"] * (CTX + 50))
    status, _, err = srv.raw("POST", "/v1/completions", {"prompt": long})
    assert status == 400 and err["error"]["code"] == "context_length_exceeded"
    status, _, err = srv.raw("POST", "/v1/completions", {"prompt": [10**9]})
    assert status == 400 and err["error"]["param"] == "prompt"
    status, _, health = srv.raw("GET", "/health")
    assert status == 200 and health["status"] == "ok"


def _open_stream(port, max_tokens):
    """A raw streaming request; returns the socket after the first event arrived."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    body = json.dumps({"prompt": "Count: one, two, three,", "max_tokens": max_tokens,
                       "stream": True, "temperature": 0}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = b""
    while b"data: " not in got:
        got += s.recv(4096)
    return s


def _read_all(s) -> bytes:
    out = b""
    while b"[DONE]" not in out:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    return out


def test_disconnected_streams_free_their_slots(model):
    """4 streams, 2 killed: the other 2 finish, the killed slots free up within a step or
    two, and new requests are served."""
    srv = Server(model, n_slots=4)
    try:
        socks = [_open_stream(srv.port, 200) for _ in range(4)]
        for s in socks[:2]:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        steps = srv.scheduler.steps
        deadline = time.time() + 20
        while srv.scheduler.status()["slots_processing"] > 2:
            assert time.time() < deadline, "killed streams kept their slots"
            time.sleep(0.01)
        assert srv.scheduler.steps - steps <= 5  # freed within a few decode steps
        r = srv.client().completions.create(model=MODEL, prompt="Hello", **GREEDY)
        assert r.usage.completion_tokens >= 1
        for s in socks[2:]:
            out = _read_all(s)
            assert b"[DONE]" in out and b'"finish_reason": "length"' in out
            assert out.count(b'"text"') >= 200
    finally:
        srv.close()


def test_queue_full_is_503_with_retry_after(model):
    srv = Server(model, n_slots=1, max_queue=0)
    try:
        s = _open_stream(srv.port, 100)  # holds the only slot
        status, headers, err = srv.raw("POST", "/v1/completions", {"prompt": "x"})
        assert status == 503 and headers.get("retry-after") == "1"
        assert err["error"]["code"] == "server_busy"
        with pytest.raises(openai.APIStatusError) as e:
            srv.client().completions.create(model=MODEL, prompt="x", max_tokens=2)
        assert e.value.status_code == 503
        _read_all(s)
    finally:
        srv.close()


def test_api_key(model):
    srv = Server(model, n_slots=1, api_key="sesame")
    try:
        with pytest.raises(openai.AuthenticationError):
            srv.client("wrong").models.list()
        status, _, err = srv.raw("POST", "/v1/completions", {"prompt": "x"})
        assert status == 401 and err["error"]["type"] == "authentication_error"
        assert srv.client("sesame").completions.create(
            model=MODEL, prompt="Hi", max_tokens=2).usage.completion_tokens >= 1
        assert srv.raw("GET", "/health")[0] == 200  # health stays open (as llama-server)
    finally:
        srv.close()


# ------------------------------------------------------------------------- load, signals

def _rss() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux /proc")
def test_load_8_clients_25_requests_each(model):
    """Every request completes with the right token count (streamed pieces = usage), none lost
    or duplicated, batches really hold several sequences, RSS flat over the run."""
    srv = Server(model, n_slots=4)
    rss, done, lock = [], [0], threading.Lock()
    try:
        def client(k):
            c, out = srv.client(timeout=120), []
            for j in range(25):
                n = 2 + (k * 25 + j) % 9
                prompt = (f"Request {k}-{j}: " + "tell me more, " * ((k + 3 * j) % 7 * 5)
                          + f"say something about the number {j}.")  # 10 to 120 tokens
                if (k + j) % 2:
                    parts = list(c.completions.create(model=MODEL, prompt=prompt, max_tokens=n,
                                                      temperature=0.7, seed=j, stream=True))
                    usage = parts[-1].usage
                    pieces = [p for p in parts if p.choices[0].text]
                    reason = parts[-1].choices[0].finish_reason
                    assert len(pieces) <= usage.completion_tokens
                else:
                    r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=n,
                                             temperature=0.7, seed=j)
                    usage, reason = r.usage, r.choices[0].finish_reason
                assert (reason == "length") == (usage.completion_tokens == n), (reason, usage)
                assert usage.completion_tokens <= n
                out.append((k, j, usage.completion_tokens))
                with lock:
                    done[0] += 1
                    if done[0] in (100, 200):  # after the first and the last hundred
                        rss.append(_rss())
            return out
        steps0, tokens0 = srv.scheduler.steps, srv.scheduler.tokens_evaluated
        with ThreadPoolExecutor(8) as ex:
            results = [r for rs in ex.map(client, range(8)) for r in rs]
        assert sorted((k, j) for k, j, _ in results) == [(k, j) for k in range(8)
                                                          for j in range(25)]
        steps = srv.scheduler.steps - steps0
        per_step = (srv.scheduler.tokens_evaluated - tokens0) / steps
        assert per_step > 2.0, per_step  # several sequences per forward
        assert srv.scheduler.status() == {"slots_idle": 4, "slots_processing": 0, "queued": 0}
        assert len(rss) == 2 and rss[1] - rss[0] < 32 << 20, [r >> 20 for r in rss]
    finally:
        srv.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_the_cli_server_cleanly(sig):
    try:
        locate(MODEL)
    except EdgeropeError as e:
        pytest.skip(str(e))
    p = subprocess.Popen([sys.executable, "-m", "edgerope.cli", "serve", "--port", "0",
                          "-np", "2", "-c", "1024"], stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.time() + 120
        while "serving" not in line:
            assert time.time() < deadline and p.poll() is None, line
            line = p.stderr.readline()
        port = int(re.search(r":(\d+) ", line).group(1))
        s = _open_stream(port, 100000)
        t0 = time.time()
        p.send_signal(sig)
        assert p.wait(30) == 0
        assert time.time() - t0 < 15
        s.close()
    finally:
        if p.poll() is None:
            p.kill()


def test_a_long_prompt_does_not_stall_decoding(model):
    """Continuous batching: while a 400-token prompt is read, a decoding sequence gets its
    token in every step, and the prompt advances at most prefill_chunk tokens a step."""
    from edgerope.server.scheduler import Job
    sch = Scheduler(model, 2, CTX, 512, prefill_chunk=128)
    steps, real = [], sch.batch.eval

    def spy(parts):
        steps.append([(i, len(ids)) for i, ids in parts])
        return real(parts)
    sch.batch.eval = spy
    events = {0: [], 1: []}
    tok = model.tokenizer
    a = Job(ids=tok.encode("Hello there, how", add_bos=True), emit=events[0].append,
            max_tokens=40, ignore_eos=True)
    long_ids = tok.encode(" ".join(["lighthouse"] * 400), add_bos=True)[:400]
    b = Job(ids=long_ids, emit=events[1].append, max_tokens=3, ignore_eos=True)
    sch.start()
    try:
        sch.submit(a)
        deadline = time.time() + 60
        while sum(e[0] == "token" for e in events[0]) < 3:
            assert time.time() < deadline
            time.sleep(0.005)
        sch.submit(b)
        while not (events[0] and events[0][-1][0] == "done" and events[1]
                   and events[1][-1][0] == "done"):
            assert time.time() < deadline
            time.sleep(0.01)
    finally:
        sch.stop()
    reading = [s for s in steps if any(n > 1 for _, n in s)]
    assert len(reading) >= 3  # the prompt came in chunks ...
    for s in reading:
        sizes = dict(s)
        assert max(sizes.values()) <= 128  # ... of at most prefill_chunk tokens ...
        if a.n_generated < 40:
            assert sizes.get(0) == 1  # ... each beside the decoding sequence's token
    assert a.n_generated == 40 and b.n_generated == 3
    assert events[0][-1] == ("done", "length", a.usage())


def test_serve_cli_bad_flags_are_one_line_errors():
    from click.testing import CliRunner
    from edgerope.cli import main
    for args, msg in [(["-np", "0"], "--parallel must be >= 1"),
                      (["--port", "70000"], "--port must be in")]:
        r = CliRunner().invoke(main, ["serve", *args])
        assert r.exit_code == 1 and r.output.strip().splitlines()[-1].startswith("error: ")
        assert msg in r.output


def test_structured_output(srv):
    """response_format (json_schema, json_object) and llama-server's grammar field."""
    pytest.importorskip("llguidance")
    jsonschema = pytest.importorskip("jsonschema")
    c = srv.client()
    schema = {"type": "object", "properties": {"device": {"enum": ["lamp", "fan"]},
                                               "on": {"type": "boolean"}},
              "required": ["device", "on"], "additionalProperties": False}
    msgs = [{"role": "user", "content": "Switch the lamp on. Answer in JSON."}]
    r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=60, temperature=0,
                                  response_format={"type": "json_schema", "json_schema": {
                                      "name": "switch", "schema": schema}})
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    parts = list(c.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=60, temperature=0, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}))
    jsonschema.validate(json.loads("".join(p.choices[0].delta.content or "" for p in parts)),
                        schema)
    r = c.completions.create(model=MODEL, prompt="Lamp:", max_tokens=20, temperature=0.8,
                             seed=1, extra_body={"grammar": 'root ::= ("on" | "off") "!"'})
    assert r.choices[0].text in ("on!", "off!")
    r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3,
                                  response_format={"type": "json_schema", "json_schema": {
                                      "name": "switch", "schema": schema}})
    assert r.choices[0].finish_reason == "length"  # cut: says so, not "stop"
    r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=80, temperature=0,
                                  response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    with pytest.raises(openai.BadRequestError, match="response_format"):
        c.chat.completions.create(model=MODEL, messages=msgs, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}})
    status, _, err = srv.raw("POST", "/v1/completions", {"prompt": "x", "grammar": "root ::= ?"})
    assert status == 400 and err["error"]["param"] == "grammar"


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {}, "additionalProperties": False}}}


def test_tool_call_round_trip(srv):
    """tools through the openai client: a call constrained to a tool and its schema, the
    result sent back as a `tool` message, then the model's reply; streaming alike."""
    pytest.importorskip("llguidance")
    jsonschema = pytest.importorskip("jsonschema")
    c = srv.client()
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = c.chat.completions.create(model=MODEL, messages=msgs, tools=[WEATHER, CLOCK],
                                  tool_choice="required", max_tokens=80, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name in ("get_weather", "get_time")
    params = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}
    jsonschema.validate(json.loads(call.function.arguments), params[call.function.name])
    r = c.chat.completions.create(
        model=MODEL, messages=msgs, tools=[WEATHER, CLOCK], max_tokens=80, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    msgs += [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
             {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    r = c.chat.completions.create(model=MODEL, messages=msgs, tools=[WEATHER],
                                  max_tokens=120, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "tool_calls", "length")
    if choice.finish_reason == "stop":
        assert isinstance(choice.message.content, str)
    parts = list(c.chat.completions.create(model=MODEL, messages=msgs[:1], tools=[WEATHER],
                                           tool_choice="required", max_tokens=80,
                                           temperature=0, stream=True))
    calls = [tc for p in parts for tc in (p.choices[0].delta.tool_calls or [])]
    assert parts[-1].choices[0].finish_reason == "tool_calls" and len(calls) == 1
    jsonschema.validate(json.loads(calls[0].function.arguments),
                        WEATHER["function"]["parameters"])
    r = c.chat.completions.create(model=MODEL, messages=msgs[:1], tools=[WEATHER],
                                  tool_choice="none", max_tokens=8)
    assert r.choices[0].message.tool_calls is None
    for bad, param in [([{"type": "function"}], "tools[0]"),
                       ([WEATHER, WEATHER], "tools"),
                       ([{"type": "function", "function": {"name": ""}}],
                        "tools[0].function.name")]:
        status, _, err = srv.raw("POST", "/v1/chat/completions",
                                 {"messages": msgs[:1], "tools": bad})
        assert status == 400 and err["error"]["param"] == param, err
    status, _, err = srv.raw("POST", "/v1/chat/completions", {
        "messages": msgs[:1], "tools": [WEATHER], "tool_choice": "sometimes"})
    assert status == 400 and err["error"]["param"] == "tool_choice"
    status, _, err = srv.raw("POST", "/v1/chat/completions", {
        "messages": msgs[:1], "tools": [WEATHER], "parallel_tool_calls": "yes"})
    assert status == 400 and err["error"]["param"] == "parallel_tool_calls"


def test_tool_calls_in_the_templates_format(model):
    """A server whose chat template has its own tool syntax (Qwen 2.5's <tool_call>, from
    llama.cpp's templates): calls in that format, parsed into tool_calls; with
    parallel_tool_calls a reply may hold several, each valid; results go back as `tool`
    messages in the template's own tool turn."""
    jsonschema = pytest.importorskip("jsonschema")
    root = os.environ.get("EDGEROPE_LLAMA_CPP") or ""
    path = os.path.join(root, "models", "templates", "Qwen-Qwen2.5-7B-Instruct.jinja")
    if not os.path.isfile(path):
        if os.environ.get("CI"):
            pytest.fail("EDGEROPE_LLAMA_CPP is not set: .ci/run fetches llama.cpp's templates")
        pytest.skip("llama.cpp's chat templates are not here (EDGEROPE_LLAMA_CPP)")
    with open(path, encoding="utf-8") as f:
        srv = Server(model, n_slots=2, template=f.read())
    try:
        c = srv.client()
        params = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}
        msgs = [{"role": "user", "content": "What is the weather in Paris and the time?"}]
        for parallel in (False, True):
            r = c.chat.completions.create(model=MODEL, messages=msgs, tools=[WEATHER, CLOCK],
                                          tool_choice="required", max_tokens=120,
                                          temperature=0, parallel_tool_calls=parallel)
            choice = r.choices[0]
            assert choice.finish_reason in ("tool_calls", "length")
            if choice.finish_reason == "length":
                assert parallel  # one call fits easily in 120 tokens
                continue
            calls = choice.message.tool_calls
            assert len(calls) >= 1 and (parallel or len(calls) == 1)
            for call in calls:
                jsonschema.validate(json.loads(call.function.arguments),
                                    params[call.function.name])
        msgs += [{"role": "assistant", "content": None,
                  "tool_calls": [calls[0].model_dump()]},
                 {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp": 21}'}]
        r = c.chat.completions.create(model=MODEL, messages=msgs, tools=[WEATHER, CLOCK],
                                      max_tokens=40, temperature=0)
        assert r.choices[0].finish_reason in ("stop", "tool_calls", "length")
        assert r.usage.prompt_tokens > 0
    finally:
        srv.close()
