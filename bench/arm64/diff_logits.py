"""Where do two machines' runs of one model part? Weights as loaded, and the logits of one
token sequence, compared between the host and the emulated aarch64 run.

    python diff_logits.py dump MODEL OUT.npz [--dtype int8] [--prompt TEXT] [-n 16]
                               [--ids-from OTHER.npz]
    python diff_logits.py compare HOST.npz OTHER.npz [--max-err E] [--tie M]

dump: loads MODEL, hashes every weight tensor as loaded (the arrays `edgerope convert` would
write), takes the prompt's ids plus n greedy tokens (or the ids of OTHER.npz, so both sides
see the same sequence) and stores the prefill logits of every position.
compare: tensors whose bytes differ, and per position the relative logit error, whether the
argmax agrees and the host's top-1/top-2 margin (a flip with a tiny margin is rounding noise;
a large error is a bug). Exit status 1 if a tensor differs, a relative error exceeds E or
the argmax flips where the host's margin is at least M.
"""
import argparse
import hashlib
import json

import numpy as np


def weight_hashes(model):
    from edgerope.io.native import native_tensors
    tensors = native_tensors(model.weights)[0]
    return {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]
            for k, v in sorted(tensors.items())}


def dump(a):
    import edgerope
    from edgerope.kernels import simd
    m = edgerope.load(a.model, dtype=a.dtype)
    if a.ids_from:
        ids = [int(t) for t in np.load(a.ids_from)["ids"]]
    else:
        ids = m.tokenizer.encode(a.prompt, add_bos=True)
        for _ in range(a.n):
            ids.append(int(np.argmax(m.logits(ids)[-1])))
    logits = m.logits(ids)
    np.savez(a.out, ids=np.array(ids), logits=logits,
             hashes=json.dumps(weight_hashes(m)), mode=simd.MODE)
    print(f"{a.out}: {len(ids)} ids, simd {simd.MODE}, text {m.tokenizer.decode(ids)!r}")


def compare(a):
    h, o = np.load(a.host), np.load(a.other)
    hh, oh = json.loads(str(h["hashes"])), json.loads(str(o["hashes"]))
    diff = [k for k in hh if hh[k] != oh.get(k)]
    print(f"weights: {len(hh) - len(diff)} of {len(hh)} tensors bit-identical"
          + (f"; differ: {', '.join(diff[:12])}{' ...' if len(diff) > 12 else ''}" if diff else ""))
    if not np.array_equal(h["ids"], o["ids"]):
        print("FAIL: different token sequences")
        return 1
    hl, ol = h["logits"], o["logits"]
    print(f"logits ({h['mode']} vs {o['mode']}):  pos  rel.err   argmax  host top-2 margin")
    worst, flips, bad_flips = 0.0, 0, 0
    for i in range(len(hl)):
        err = float(np.linalg.norm(hl[i] - ol[i]) / np.linalg.norm(hl[i]))
        top = np.sort(hl[i])[-2:]
        margin = float(top[1] - top[0])
        flip = hl[i].argmax() != ol[i].argmax()
        worst = max(worst, err)
        flips += flip
        bad_flips += flip and margin >= a.tie
        print(f"  {i:3d}  {err:9.2e}  {'FLIP' if flip else 'same':6s}  {margin:.4f}")
    ok = not diff and worst <= a.max_err and not bad_flips
    print(f"{'ok' if ok else 'FAIL'}: {len(hl)} positions, worst relative error {worst:.2e} "
          f"(limit {a.max_err:g}), {flips} argmax flips ({bad_flips} with a host margin >= "
          f"{a.tie:g}), weights {'identical' if not diff else 'DIFFER'}")
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("model")
    d.add_argument("out")
    d.add_argument("--dtype", default="int8")
    d.add_argument("--prompt", default="The capital of France is")
    d.add_argument("-n", type=int, default=16)
    d.add_argument("--ids-from")
    c = sub.add_parser("compare")
    c.add_argument("host")
    c.add_argument("other")
    c.add_argument("--max-err", type=float, default=1e-4)
    c.add_argument("--tie", type=float, default=0.01)
    a = p.parse_args()
    return dump(a) if a.cmd == "dump" else compare(a)


if __name__ == "__main__":
    raise SystemExit(main())
