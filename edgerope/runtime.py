"""The run-time set-up edgerope does on request, never at import: kernel threads and the
progress lines of slow first-run phases.

- Threads: `set_threads(n)` records the count sessions use (None: `default_threads()`, the
  physical performance cores) and applies it to the calling thread; a session applies its
  count around each evaluation and restores the caller's (edgerope.engine.model), so a host
  application's own Numba code keeps its setting.
- Progress: `setup(quiet=...)` makes slow phases say so on stderr, one line each, whether or
  not stderr is a terminal: compiling kernels for this CPU (only when the Numba cache has no
  machine code for them yet, i.e. the first run), converting a model once. `quiet=True`
  (the CLI's -q) silences them. `load()` and the CLI call `setup()`. Progress bars
  (`progress`) only on a terminal.
"""
from __future__ import annotations

import sys
import threading
from edgerope.errors import ParameterError

_state = {"threads": None, "quiet": False, "listener": False, "said": set()}
_lock = threading.Lock()


def default_threads() -> int:
    """Physical performance cores (edgerope.system.physical_cores), at most Numba's pool:
    SMT siblings and LITTLE cores share a core's matmul units or lag behind, and the slowest
    thread sets the pace of a parallel matmul."""
    from edgerope import kernels
    from edgerope.system import physical_cores
    return max(1, min(physical_cores(), kernels.max_threads()))


def threads() -> int:
    """The thread count sessions use: the last `set_threads` choice, else the default
    (read from sysfs once per process: sessions ask on every call)."""
    n = _state["threads"]
    if n is None:
        n = _state.get("default")
        if n is None:
            n = _state["default"] = default_threads()
    return n


def set_threads(n: int | None = None) -> int:
    """Use `n` kernel threads from now on (None: `default_threads()`), clamped to Numba's
    pool; also applied to the calling thread. Returns the count used."""
    from edgerope import kernels
    if n is not None:
        n = int(n)
        if n < 1:
            raise ParameterError(f"threads must be >= 1, got {n}")
    used = kernels.set_threads(default_threads() if n is None else n)
    _state["threads"] = None if n is None else used
    return used


def get_threads() -> int:
    """Kernel threads of the calling thread (Numba's own setting)."""
    from edgerope import kernels
    return kernels.get_threads()


def say(key: str, message: str) -> None:
    """One progress line on stderr ("edgerope: <message>"), once per `key` per process, unless
    quiet."""
    with _lock:
        if _state["quiet"] or key in _state["said"]:
            return
        _state["said"].add(key)
    print(f"edgerope: {message}", file=sys.stderr, flush=True)


def quiet() -> bool:
    return _state["quiet"]


def progress(iterable=None, **kwargs):
    """A tqdm progress bar on stderr, drawn only when stderr is a terminal and not quiet
    (piped, frames would fill the log); `kwargs` as tqdm's."""
    from tqdm import tqdm
    shown = not _state["quiet"] and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(iterable, file=sys.stderr, disable=not shown, **kwargs)


def setup(quiet: bool | None = None) -> None:
    """Progress lines on (quiet=False) or off (True); None keeps the current choice. Installs
    the compile notice once per process."""
    if quiet is not None:
        _state["quiet"] = bool(quiet)
    with _lock:
        if _state["listener"]:
            return
        _state["listener"] = True
    from edgerope import kernels
    kernels.on_compile(_compile_notice)  # imports no numba: a header-only `info` skips it


def _compile_notice() -> None:
    say("compile", "compiling kernels for this CPU (first run only; cached for later runs) ...")
