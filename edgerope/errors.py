"""Exceptions edgerope raises for bad input. Each carries a one-line message meant for a user:
what file or key, what was expected, what was found. The CLI prints it and exits non-zero."""


class EdgeropeError(Exception):
    """Base of every error caused by input (files, configs, options), not by a bug."""


class ConfigError(EdgeropeError, ValueError):
    """A config.json (or GGUF metadata) that edgerope cannot run."""


class WeightsError(EdgeropeError, ValueError):
    """A weights file that is missing, malformed or disagrees with the config."""


class ParameterError(EdgeropeError, ValueError):
    """An option or argument out of its range (a temperature below 0, a context of 0, ...)."""


class ContextFullError(EdgeropeError, RuntimeError):
    """The KV cache has no room left for more tokens."""


class TokenizerError(EdgeropeError, ValueError):
    """A tokenizer file (or GGUF vocabulary) that is missing, malformed or unsupported."""


class EdgeropeWarning(UserWarning):
    """Something in the input that works but deserves a look (unused tensors, bytes that are
    not UTF-8). The CLI prints it as one "warning: ..." line."""
