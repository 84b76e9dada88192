"""Constrained output: decode speed with a JSON-schema constraint vs without, and how often the
same prompts give valid JSON without it.

    python bench/structured.py [-m gemma3-270m] [-r 3] [-n 128]

Speed: one prompt, a schema whose one field is a string of at least 8 -n characters (so the
constrained output runs the full -n tokens; token counts are printed beside the rates),
alternating rounds, decode t/s (GenerationStats.gen_tps, the prompt excluded); medians and the median of
per-round ratios. Validity: tests/test_structured.py's 20 schemas, temperature 0.7, seed i:
constrained outputs that parse and validate vs unconstrained ones (the text as generated,
stripped, then json.loads + jsonschema).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def speed(m, n, rounds):
    from edgerope.engine.generate import GenerationStats
    schema = {"type": "object", "properties": {"story": {"type": "string",
                                                         "minLength": 8 * n}},
              "required": ["story"], "additionalProperties": False}
    prompt = "Write a long story about a lighthouse keeper, as JSON:\n"
    got = {"free": [], "schema": []}
    for r in range(rounds):
        for kind in (("free", "schema") if r % 2 == 0 else ("schema", "free")):
            st = GenerationStats()
            kw = {"json_schema": schema} if kind == "schema" else {}
            for _ in m.generate(prompt, max_tokens=n, temperature=0.8, seed=r, stats=st,
                                **kw):
                pass
            got[kind].append((st.gen_tps, st.n_generated))
    return got


def validity(m):
    import jsonschema
    from test_structured import SCHEMAS
    ok = {"free": 0, "schema": 0}
    for i, (what, schema) in enumerate(SCHEMAS):
        for kind in ("free", "schema"):
            kw = {"json_schema": schema} if kind == "schema" else {}
            out = "".join(m.generate(f"Write {what} as JSON:\n", max_tokens=200,
                                     temperature=0.7, seed=i, **kw))
            try:
                jsonschema.validate(json.loads(out.strip()), schema)
                ok[kind] += 1
            except (ValueError, jsonschema.ValidationError):
                pass
    return ok, len(SCHEMAS)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", action="append")
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("-n", "--tokens", type=int, default=128)
    a = ap.parse_args()
    from edgerope.io.registry import load_any
    for name in a.model or ["gemma3-270m", "smollm2-135m"]:
        m = load_any(name)
        got = speed(m, a.tokens, a.rounds)
        free = [x for x, _ in got["free"]]
        con = [x for x, _ in got["schema"]]
        ratio = statistics.median(c / f for c, f in zip(con, free))
        print(json.dumps({"model": name, "free t/s": [round(x, 1) for x in free],
                          "schema t/s": [round(x, 1) for x in con],
                          "tokens free / schema": [[n for _, n in got["free"]],
                                                   [n for _, n in got["schema"]]],
                          "ratio (median of rounds)": round(ratio, 3)}), flush=True)
        ok, total = validity(m)
        print(json.dumps({"model": name, "valid unconstrained": f"{ok['free']}/{total}",
                          "valid constrained": f"{ok['schema']}/{total}"}), flush=True)


if __name__ == "__main__":
    main()
