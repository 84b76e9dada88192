"""Before loading: the config of what a model spec would load (read from the config or GGUF
header alone) and the check that refuses, before any weight is read, a model that plainly
cannot fit in the memory available (the estimate is edgerope.engine.memory's)."""
from __future__ import annotations

import os

from edgerope.engine.cache import DEFAULT_KV_TYPE
from edgerope.engine.memory import MemoryEstimate, estimate, human
from edgerope.errors import EdgeropeError


def config_of(spec: str | None, dtype: str = "auto"):
    """The ModelConfig of what `registry.load_any(spec, dtype)` would load, read from the
    config or GGUF header alone (no weights); None when `spec` names nothing loadable (the
    load then says why)."""
    from edgerope.archs.config import parse_config, read_config_dict
    from edgerope.io.registry import converted_dir, default_model, is_registered, locate
    if spec is None:
        spec = default_model()
    if os.path.exists(spec):
        path = spec
    elif is_registered(spec):
        path = converted_dir(spec, dtype)
        if not os.path.isdir(path):
            path = locate(spec)
    else:
        return None
    if os.path.isfile(path):
        from edgerope.io.gguf import gguf_config_dict
        from edgerope.io.gguf_file import GGUFFile
        return parse_config(gguf_config_dict(GGUFFile(path)))
    return parse_config(read_config_dict(path))


def preflight(spec: str | None, dtype: str = "auto", n_ctx: int | None = None,
              kv_type: str = DEFAULT_KV_TYPE, n_batch: int = 512, n_keep: int = 4,
              available: int | None = None) -> MemoryEstimate | None:
    """Before loading: raise EdgeropeError when the model plainly cannot fit in the memory
    available (edgerope.system.mem_available: MemAvailable, or $EDGEROPE_MEM_AVAILABLE).
    Returns the estimate, or None when it cannot be made (no memory figure, a dtype of
    unknown layout, a file the load will report on)."""
    from edgerope.system import mem_available
    if available is None:
        available = mem_available()
    if available is None:
        return None
    try:
        cfg = config_of(spec, dtype)
        est = None if cfg is None else estimate(cfg, n_ctx, kv_type, n_batch, n_keep, dtype)
    except (EdgeropeError, ValueError, OSError):
        return None  # the load reports a bad file with its own message
    if est is not None and est.total > available:
        ways = ["a smaller -c"] + (["--kv-type int8"] if kv_type != "int8" else []) + (
            ["an int4 model (--dtype int4)"] if dtype != "int4" else [])
        raise EdgeropeError(
            f"model needs ~{human(est.total)} at context {est.n_ctx} but only "
            f"{human(available)} is available (MiB: {est.parts()}); use "
            f"{', '.join(ways)}, or --force")
    return est
