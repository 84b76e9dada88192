"""Running a model: the forward pass and sessions (model), the ring-buffer KV cache (cache),
the generation loop and sampler, resident-memory accounting (memory) and the per-op profiler.
The engine takes a config (edgerope.archs) and weights (edgerope.engine.weights) and never
reads files."""
