"""Side-by-side throughput: edgerope vs llama.cpp (its own `llama-bench` binaries, or
llama-cpp-python) vs transformers.

Same model bits on every side. `--dtype auto` (the default): the registry's file as shipped
(Gemma 3 270M: Q4_K_M), which edgerope runs in its own block types like llama.cpp. `int8`:
the file requantized once by llama.cpp to Q8_0 (ftype 7), which edgerope imports bit for bit;
`int4`: llama.cpp's default Q4_0 requantization (ftype 2: Q4_0 matrices; embedding/output
Q8_0 where Q6_K cannot hold them, as for Gemma 3's 640 columns), imported bit for bit as int4
(+ int8). transformers runs the same GGUF dequantized to float32.

llama.cpp engines: every `llama-bench` binary given (`--llama-bench PATH`, env
EDGEROPE_LLAMA_BENCH: mainline; `--ik-bench PATH`, env EDGEROPE_IK_BENCH: ik_llama.cpp), each
run once per round (`-r 1`, its own warm-up) and read from its JSON; without any, llama-cpp-
python in this process. Engines alternate round by round so drift on a shared machine hits
all alike; each round prints its figures, and the table gives medians of t/s and of the
per-round ratios edgerope / engine.

    python bench/compare.py [-m gemma3-270m] [--dtype auto|int8|int4] [-p 512] [-n 128]
                            [-t 2] [-r 3] [--no-hf] [--llama-bench PATH] [--ik-bench PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import statistics
import sys
import time

import numpy as np

# this folder is no package: its kernels.py must not pass for the `kernels` package that
# transformers probes for (python puts a script's folder first on sys.path)
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


FTYPES = {"int8": ("q8_0", 7), "int4": ("q4_0", 2)}  # edgerope dtype -> llama.cpp file type


def llama_cpp_copy(src: str, dtype: str = "int8") -> str:
    """llama.cpp's own Q8_0 / Q4_0 requantization of `src`, cached beside converted models
    (dtype "auto": `src` itself)."""
    if dtype == "auto":
        return src
    from edgerope.io.registry import weights_dir
    suffix, ftype = FTYPES[dtype]
    dst = os.path.join(weights_dir(),
                       os.path.basename(src).replace(".gguf", "") + f".{suffix}.gguf")
    if not os.path.exists(dst):
        import llama_cpp
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype  # LLAMA_FTYPE_MOSTLY_Q8_0 / _Q4_0
        params.allow_requantize = True
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        rc = llama_cpp.llama_model_quantize(src.encode(), (dst + ".tmp").encode(), params)
        if rc != 0:
            raise SystemExit(f"llama_model_quantize failed ({rc})")
        os.replace(dst + ".tmp", dst)
    return dst


class Edgerope:
    def __init__(self, path, threads, dtype="int8"):
        import edgerope
        edgerope.set_threads(threads)
        self.name = f"edgerope {dtype}"
        self.m = edgerope.load(path, dtype=dtype)
        self.vocab = self.m.config.vocab_size
        self.pp(16), self.tg(2)  # JIT warm-up

    def pp(self, n):
        ids = np.random.default_rng(n).integers(0, self.vocab, n)
        s = self.m.new_session(n_ctx=n + 1)
        t = time.perf_counter()
        s.eval(ids)
        return n / (time.perf_counter() - t)

    def tg(self, n):
        s = self.m.new_session(n_ctx=n + 2)
        lg = s.eval([2])
        t = time.perf_counter()
        for _ in range(n):
            lg = s.eval([int(np.argmax(lg))])
        return n / (time.perf_counter() - t)


class LlamaBench:
    """A llama-bench binary: one pp or tg test per call (-r 1), its average t/s."""

    def __init__(self, name, binary, path, threads):
        if not os.access(binary, os.X_OK):
            raise SystemExit(f"{name}: {binary} is not an executable llama-bench")
        self.name, self.binary, self.path, self.threads = name, binary, path, threads

    def _run(self, p, n):
        cmd = [self.binary, "-m", self.path, "-p", str(p), "-n", str(n), "-t",
               str(self.threads), "-r", "1", "-o", "json"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"{self.name}: {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
        return float(json.loads(r.stdout)[0]["avg_ts"])

    def pp(self, n):
        return self._run(n, 0)

    def tg(self, n):
        return self._run(0, n)


class LlamaCpp:
    def __init__(self, path, threads, dtype="int8"):
        from llama_cpp import Llama
        self.name = "llama-cpp-python"
        self.m = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=2048,
                       n_batch=512, verbose=False)
        self.vocab = self.m.n_vocab()

    def pp(self, n):
        ids = np.random.default_rng(n).integers(0, self.vocab, n).tolist()
        self.m.reset()
        t = time.perf_counter()
        self.m.eval(ids)
        return n / (time.perf_counter() - t)

    def tg(self, n):
        self.m.reset()
        self.m.eval([2])
        t = time.perf_counter()
        tok = 2
        for _ in range(n):
            self.m.eval([tok])
            tok = int(np.argmax(self.m.scores[self.m.n_tokens - 1]))
        return n / (time.perf_counter() - t)


class Transformers:
    name = "transformers fp32"

    def __init__(self, path, threads):
        import torch
        import transformers
        torch.set_num_threads(threads)
        self.torch = torch
        d, f = os.path.split(path)
        self.m = transformers.AutoModelForCausalLM.from_pretrained(
            d, gguf_file=f, dtype=torch.float32).eval()
        self.vocab = self.m.config.vocab_size

    def pp(self, n):
        ids = self.torch.tensor([np.random.default_rng(n).integers(0, self.vocab, n).tolist()])
        with self.torch.no_grad():
            t = time.perf_counter()
            self.m(ids, logits_to_keep=1)
            return n / (time.perf_counter() - t)

    def tg(self, n):
        torch = self.torch
        with torch.no_grad():
            out = self.m(torch.tensor([[2]]), use_cache=True)
            t = time.perf_counter()
            for _ in range(n):
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                out = self.m(nxt, past_key_values=out.past_key_values, use_cache=True)
            return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="gemma3-270m")
    ap.add_argument("--dtype", choices=["auto", *sorted(FTYPES)], default="auto")
    ap.add_argument("-p", "--n-prompt", type=int, default=512)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    ap.add_argument("--llama-bench", default=os.environ.get("EDGEROPE_LLAMA_BENCH"),
                    help="mainline llama.cpp's llama-bench (env EDGEROPE_LLAMA_BENCH)")
    ap.add_argument("--ik-bench", default=os.environ.get("EDGEROPE_IK_BENCH"),
                    help="ik_llama.cpp's llama-bench (env EDGEROPE_IK_BENCH)")
    a = ap.parse_args()
    from edgerope.io.registry import is_registered, locate
    src = locate(a.model) if is_registered(a.model) else a.model
    q = llama_cpp_copy(src, a.dtype)
    engines = [Edgerope(q, a.threads, a.dtype)]
    benches = [("llama.cpp", a.llama_bench), ("ik_llama.cpp", a.ik_bench)]
    engines += [LlamaBench(name, path, q, a.threads) for name, path in benches if path]
    if len(engines) == 1:
        try:
            engines.append(LlamaCpp(q, a.threads, a.dtype))
        except ImportError:
            print("no llama-bench given and llama-cpp-python not installed: edgerope alone",
                  file=sys.stderr)
    if not a.no_hf:
        engines.append(Transformers(q, a.threads))
    res = {(e.name, k): [] for e in engines for k in ("pp", "tg")}
    print(f"model {os.path.basename(q)}, {a.threads} threads, {a.repetitions} rounds; "
          f"pp{a.n_prompt} / tg{a.n_gen} t/s per round:")
    for i in range(a.repetitions):
        for e in engines:  # alternate engines round by round
            res[(e.name, "pp")].append(e.pp(a.n_prompt))
            res[(e.name, "tg")].append(e.tg(a.n_gen))
            print(f"  round {i + 1}: {e.name}: {res[(e.name, 'pp')][-1]:.1f} / "
                  f"{res[(e.name, 'tg')][-1]:.1f}", flush=True)
    ours = engines[0].name
    others = [e.name for e in engines[1:]]
    head = "".join(f" vs {o} (pp / tg) |" for o in others)
    print(f"\nmedians over {a.repetitions} rounds; ratios: median of per-round edgerope / "
          f"engine\n\n| engine | pp{a.n_prompt} t/s | tg{a.n_gen} t/s |{head}\n"
          f"|---|---:|---:|{'---:|' * len(others)}")
    for e in engines:
        pp, tg = (statistics.median(res[(e.name, k)]) for k in ("pp", "tg"))
        cells = ""
        for o in others:
            if e.name != ours:
                cells += " |"
                continue
            r = [statistics.median(x / y for x, y in zip(res[(ours, k)], res[(o, k)]))
                 for k in ("pp", "tg")]
            cells += f" {r[0]:.2f}x / {r[1]:.2f}x |"
        print(f"| {e.name} | {pp:.1f} | {tg:.1f} |{cells}")


if __name__ == "__main__":
    main()
