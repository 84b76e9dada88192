"""Running a model: the forward pass and sessions (model), the ring-buffer KV cache (cache),
the generation loop and sampler, resident-memory accounting (memory) and the per-op profiler.
The engine takes a config (edgerope.archs) and weights (edgerope.engine.weights) and never
reads files."""

KV_TYPES = ("f32", "f16", "int8")  # KV cache element types (edgerope.kernels.kvstore)
# f16 by default (as llama.cpp): as exact in practice as f32 (top-1 1.000, KL < 1e-6 on real
# models), half the memory, and faster once the cache is long (decoding reads it every token);
# f32 for bit-exact comparisons, int8 a quarter of f32 (bench/RESULTS.md).
DEFAULT_KV_TYPE = "f16"
