"""Files in, models out: safetensors (Hugging Face directories), GGUF (reader and loader),
edgerope's own memory-mapped format (native), the registry of packaged models, and `load()`,
which picks among them."""
