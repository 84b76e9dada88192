"""The package's layers (README "Layout"): every import of an edgerope module, at the top of a
file or inside a function, goes down this order or stays in its layer; `errors`, `system`
and `runtime` serve every layer (the kernels use only `errors`, for bad settings such as
EDGEROPE_SIMD). Only edgerope.kernels imports numba."""
import ast
import os

import edgerope

ROOT = os.path.dirname(os.path.abspath(edgerope.__file__))
ORDER = ["cli", "apps", "server", "io", "text", "engine", "archs", "formats", "kernels"]
SHARED = {"errors", "system", "runtime", "__init__"}
# what the shared modules themselves may import
SHARED_DEPS = {"errors": set(), "system": {"errors"}, "runtime": {"errors", "system", "kernels"},
               "__init__": {"errors", "io", "engine", "runtime"}}


def _imports():
    """(file, layer, imported edgerope layer or shared module, imports numba?) per import."""
    for d, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(d, f)
            rel = os.path.relpath(path, ROOT).split(os.sep)
            layer = rel[0][:-3] if len(rel) == 1 else rel[0]
            with open(path) as fh:
                tree = ast.parse(fh.read())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                for n in names:
                    parts = n.split(".")
                    if parts[0] == "numba" or parts[0] == "llvmlite":
                        yield "/".join(rel), layer, "numba"
                    elif parts[0] == "edgerope" and len(parts) > 1:
                        yield "/".join(rel), layer, parts[1]


def test_imports_run_down_the_layers():
    bad = []
    for where, layer, target in _imports():
        if target == "numba":
            if layer != "kernels":
                bad.append(f"{where}: imports numba")
            continue
        if layer in SHARED:
            if target not in SHARED_DEPS[layer] and target != layer:
                bad.append(f"{where} ({layer}) imports edgerope.{target}")
        elif target in SHARED or target == layer:
            if layer == "kernels" and target not in ("kernels", "errors"):
                bad.append(f"{where}: kernels import edgerope.{target}")
        elif target not in ORDER or ORDER.index(target) < ORDER.index(layer):
            bad.append(f"{where} ({layer}) imports edgerope.{target}, a layer above")
    assert not bad, "\n".join(sorted(set(bad)))
