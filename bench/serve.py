"""Server throughput: aggregate decode tokens/s at 1, 2, 4, 8 concurrent streams, edgerope's
`serve -np N` beside llama.cpp's `llama-server -np N` on the same GGUF file and threads, and
the time to first token of a cached-prefix chat turn.

    python bench/serve.py [-m FILE.gguf] [--llama-server PATH] [-c 1, 2, 4, 8] [-r 3]
                          [-n 128] [-t 2]

Per concurrency N both servers are started with -np N (each slot -c/N tokens ... -c is the
total, as llama-server's) and rounds alternate engines. A round: N clients each stream one
completion of -n tokens (`ignore_eos`, so every stream decodes -n tokens) from distinct
prompts; aggregate decode tokens/s = tokens after each stream's first / (last token time -
first first-token time). Medians over rounds, and the median of per-round ratios. The TTFT
test: a chat of ~300 tokens is sent, then its next turn (the prompt cache holds the first
part), timing the first streamed content. llama-server: `EDGEROPE_LLAMA_SERVER` or the flag;
without it only edgerope runs.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            r = c.getresponse()
            r.read()
            if r.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not come up")


def stream(port: int, path: str, body: dict):
    """(time of the first token, time of the last, tokens) of one streamed request."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", path, body=json.dumps({**body, "stream": True}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]}")
    first = last = None
    n = 0
    buf = b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if not ev.startswith(b"data: ") or ev == b"data: [DONE]":
                continue
            d = json.loads(ev[6:])
            ch = (d.get("choices") or [{}])[0]
            text = ch.get("text") or (ch.get("delta") or {}).get("content")
            if text:
                now = time.perf_counter()
                first = first or now
                last = now
                n += 1
    c.close()
    return first, last, n


def round_(port: int, n_streams: int, n_tokens: int, tag: int) -> float:
    out = [None] * n_streams

    def run(i):
        out[i] = stream(port, "/v1/completions", {
            "prompt": f"Story {tag}-{i}: Once upon a time, in a village by the sea, there",
            "max_tokens": n_tokens, "temperature": 0.8, "seed": i, "ignore_eos": True})
    th = [threading.Thread(target=run, args=(i,)) for i in range(n_streams)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    t0 = min(o[0] for o in out)
    t1 = max(o[1] for o in out)
    return sum(o[2] - 1 for o in out) / (t1 - t0)


def ttft(port: int) -> float:
    """Time to first content of a chat's next turn (its history cached by the first turn)."""
    history = "I keep a lighthouse on a small island. " * 30
    msgs = [{"role": "user", "content": history + "What should I plant in my garden?"}]
    body = {"messages": msgs, "max_tokens": 16, "temperature": 0}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/chat/completions", body=json.dumps(body),
              headers={"Content-Type": "application/json"})
    reply = json.loads(c.getresponse().read())["choices"][0]["message"]["content"]
    msgs += [{"role": "assistant", "content": reply},
             {"role": "user", "content": "And which flowers?"}]
    t0 = time.perf_counter()
    first, _, _ = stream(port, "/v1/chat/completions", {**body, "messages": msgs})
    return first - t0


def start(engine: str, model: str, np_: int, ctx: int, threads: int, llama_server: str | None):
    port = free_port()
    if engine == "edgerope":
        cmd = [sys.executable, "-m", "edgerope.cli", "serve", "-m", model, "-np", str(np_),
               "-c", str(ctx), "-t", str(threads), "--port", str(port), "-q"]
    else:
        cmd = [llama_server, "-m", model, "-np", str(np_), "-c", str(ctx), "-t", str(threads),
               "-tb", str(threads), "--port", str(port), "--no-webui", "-lv", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_up(port, proc)
    return proc, port


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default=None, help="GGUF file (default: the demo model)")
    ap.add_argument("--llama-server", default=os.environ.get("EDGEROPE_LLAMA_SERVER"))
    ap.add_argument("-c", "--concurrency", default="1,2,4,8")
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("-n", "--tokens", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=4096, help="total context (-c of the servers)")
    a = ap.parse_args()
    model = a.model
    if model is None:
        from edgerope.io.registry import locate
        model = locate("gemma3-270m")
    engines = ["edgerope"] + (["llama.cpp"] if a.llama_server else [])
    print(f"model {os.path.basename(model)}, {a.threads} threads, -c {a.ctx}, "
          f"{a.tokens} tokens a stream, {a.rounds} alternating rounds")
    rows, single = [], {}
    for n in [int(x) for x in a.concurrency.split(",")]:
        procs = {e: start(e, model, n, a.ctx, a.threads, a.llama_server) for e in engines}
        try:
            for e, (_, port) in procs.items():
                round_(port, n, 8, -1)  # warm-up (kernels compiled, caches touched)
            got = {e: [] for e in engines}
            for r in range(a.rounds):
                for e in (engines if r % 2 == 0 else engines[::-1]):
                    got[e].append(round_(procs[e][1], n, a.tokens, r))
            tt = {e: statistics.median(ttft(procs[e][1]) for _ in range(3)) for e in engines}
        finally:
            for p, _ in procs.values():
                p.terminate()
                p.wait(30)
        med = {e: statistics.median(v) for e, v in got.items()}
        if n == 1:
            single = med
        line = {"streams": n, **{f"{e} t/s": [round(x, 1) for x in got[e]] for e in engines},
                **{f"{e} median": round(med[e], 1) for e in engines},
                **{f"{e} ttft s": round(tt[e], 3) for e in engines}}
        if single:
            line.update({f"{e} x single": round(med[e] / single[e], 2) for e in engines})
        if len(engines) == 2:
            line["ratio (median of rounds)"] = round(statistics.median(
                x / y for x, y in zip(got["edgerope"], got["llama.cpp"])), 2)
        rows.append(line)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
