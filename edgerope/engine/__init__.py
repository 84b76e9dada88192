"""Running a model: the forward pass and sessions (model), the ring-buffer KV cache (cache),
the generation loop and sampler, resident-memory accounting (memory) and the per-op profiler.
The engine takes a config (edgerope.archs) and weights (edgerope.engine.weights) and never
reads files."""

KV_TYPES = ("f32", "f16", "int8")  # KV cache element types (edgerope.kernels.kvstore)
# f32 decodes fastest on x86 today; f16 is as exact in practice at half the memory, int8 a
# quarter (measurements in bench/RESULTS.md). Memory is the reason to pick them on small boards.
DEFAULT_KV_TYPE = "f32"
