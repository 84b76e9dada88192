"""Robustness (issue 6): an interrupted convert leaves nothing loadable and the next convert
removes what it left, sessions are independent across threads, results do not depend on the
thread count, odd options give defined results, bytes that are not UTF-8 (prompt files,
stdin) become U+FFFD with a warning."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

import edgerope  # noqa: E402
from edgerope import kernels as K  # noqa: E402
from edgerope.cli import main  # noqa: E402
from test_generate import tiny_dir  # noqa: E402,F401 - a tiny model with a tokenizer
from tiny_models import build  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("robust-llama"))
    build("llama", d)
    return d


def test_killed_convert_leaves_nothing_loadable(tmp_path):
    """SIGKILL while `convert` writes: no destination appears (the temporary directory it
    writes into is only renamed into place when complete)."""
    import tiny_models
    tiny_models.CASES["robust-big"] = ("llama", dict(hidden_size=768, intermediate_size=3072,
                                                     num_hidden_layers=6, vocab_size=8192))
    src = str(tmp_path / "src")
    build("robust-big", src)
    dst = str(tmp_path / "dst")
    proc = subprocess.Popen([sys.executable, "-m", "edgerope.cli", "convert", src, dst,
                             "--dtype", "float32"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # until it starts writing
        if any(n.startswith(".tmp-dst-") for n in os.listdir(tmp_path)):
            break
        time.sleep(0.005)
    killed = proc.poll() is None
    print("convert killed mid-write:", killed)
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    if killed:
        assert not os.path.exists(dst)
        with pytest.raises(edgerope.EdgeropeError):
            edgerope.load(dst)
    else:  # it finished first: then it must be complete and loadable
        edgerope.load(dst)


def test_two_sessions_in_two_threads_equal_running_alone(tiny):
    m = edgerope.load(tiny, dtype="int8")
    prompts = [[1, 5, 9, 14, 3], [1, 22, 7, 7, 40, 2, 8]]

    def decode(prompt, out):
        s = m.new_session(n_ctx=64)
        logits = s.eval(prompt)
        toks = []
        for _ in range(12):
            t = int(np.argmax(logits))
            toks.append(t)
            logits = s.eval([t])
        out.append((toks, logits.copy()))

    alone = []
    for p in prompts:
        decode(p, alone)
    together = [[], []]
    threads = [threading.Thread(target=decode, args=(p, o)) for p, o in zip(prompts, together)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (a_toks, a_logits), [(b_toks, b_logits)] in zip(alone, together):
        assert a_toks == b_toks
        np.testing.assert_array_equal(a_logits, b_logits)


def test_same_tokens_for_any_thread_count(tiny_dir):
    m = edgerope.load(tiny_dir[0], dtype="int8")
    before = K.get_threads()
    out = []
    try:
        for n in (1, 2):
            K.set_threads(n)
            out.append("".join(m.generate("The lighthouse", max_tokens=16, temperature=0.9,
                                          seed=5)))
    finally:
        K.set_threads(before)
    assert out[0] == out[1]


@pytest.mark.parametrize("args,code,check", [
    (["-p", "", "-n", "4", "--temp", "0"], 0, "generation: 4 tokens"),   # empty: from BOS
    (["-p", "The", "-n", "0"], 0, "generation: 0 tokens"),
    (["-p", "The", "-n", "3", "-t", "64"], 0, "threads: "),              # capped to the cores
    (["-p", "The", "-n", "-2"], 1, "max_tokens"),
    (["-p", "The", "--top-k", "-5"], 1, "top_k"),
])
def test_odd_options_are_defined(tiny_dir, args, code, check):
    r = CliRunner().invoke(main, ["generate", "-m", tiny_dir[0]] + args)
    assert r.exit_code == code, r.output
    assert check in r.stderr
    assert "Traceback" not in r.stderr


def test_non_utf8_prompt_file(tiny_dir, tmp_path):
    p = tmp_path / "prompt.txt"
    p.write_bytes(b"The \xff\xfe lighthouse \xc3")
    r = CliRunner().invoke(main, ["generate", "-m", tiny_dir[0], "-f", str(p), "-n", "3",
                                  "--temp", "0"])
    assert r.exit_code == 0 and "generation: 3 tokens" in r.stderr
    assert f"warning: {p}: not valid UTF-8 (first bad byte at offset 4); invalid bytes " \
           f"replaced by U+FFFD" in r.stderr


def _run(args, stdin: bytes):
    return subprocess.run([sys.executable, "-m", "edgerope.cli"] + args, input=stdin,
                          capture_output=True, timeout=300)


def test_non_utf8_stdin_prompt_is_read_as_the_file_is(tiny_dir, tmp_path):
    """`generate -f -` reads the prompt from stdin, decoded as a -f file is: invalid bytes
    become U+FFFD with one warning, and the text generated is the file's."""
    raw = b"\xff\xfe hello\n"
    p = tmp_path / "prompt.txt"
    p.write_bytes(raw)
    args = ["generate", "-m", tiny_dir[0], "-n", "4", "--temp", "0", "-t", "1"]
    piped = _run(args + ["-f", "-"], raw)
    from_file = _run(args + ["-f", str(p)], b"")
    err = piped.stderr.decode()
    assert piped.returncode == 0, err
    assert "warning: stdin: not valid UTF-8 (first bad byte at offset 0)" in err
    assert "generation: 4 tokens" in err and "Traceback" not in err
    assert piped.stdout == from_file.stdout and from_file.returncode == 0


def test_non_utf8_chat_turn_on_stdin(tiny_dir):
    r = _run(["chat", "-m", tiny_dir[0], "-n", "3", "--temp", "0", "-t", "1",
              "--chat-template", "chatml"], b"\xff\xfe hello\nfine\n")
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "warning: stdin line 1: not valid UTF-8; invalid bytes replaced by U+FFFD" in err
    assert "line 2" not in err and "Traceback" not in err
    assert r.stdout.count(b"\n") == 2  # two replies


def test_convert_removes_what_killed_converts_left(tiny, tmp_path):
    """Temporary directories of dead writers (pid in the name) go; a live writer's, a young
    one of an older edgerope (no pid) and anything not named like ours stay."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    names = {f".tmp-dst-pid{dead.pid}-abcd_123": False, f".tmp-other-pid{dead.pid}-zzzzzzzz": False,
             f".tmp-dst-pid{os.getpid()}-abcdefgh": True, ".tmp-dst-k3j4h5g6": True,
             ".tmp-dst-old12345": False, ".tmp-dst-pid1-not-ours": True, "dst-backup": True,
             f".tmp-dst-pid{dead.pid}-x": True}
    for n in names:
        (out / n).mkdir(parents=True)
        (out / n / "model.safetensors").write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(out / ".tmp-dst-old12345" / "model.safetensors", (old, old))
    os.utime(out / ".tmp-dst-old12345", (old, old))
    r = CliRunner().invoke(main, ["convert", tiny, str(out / "dst")])
    assert r.exit_code == 0, r.output
    for n, kept in names.items():
        assert (out / n).exists() == kept, n
    assert edgerope.load(str(out / "dst"))
    assert sorted(os.listdir(out)) == sorted([n for n, k in names.items() if k] + ["dst"])


def test_ctrl_c_during_generation_exits_130_with_timings(tiny_dir):
    """SIGINT mid-generation: the text so far is flushed, the timing line printed, exit 130."""
    proc = subprocess.Popen([sys.executable, "-m", "edgerope.cli", "generate", "-m",
                             tiny_dir[0], "-p", "The lighthouse", "-n", "1000000", "-c", "64",
                             "-t", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.read(8)  # generation has started
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert len(first + out) > 8
    assert b"generation:" in err and b"Traceback" not in err
