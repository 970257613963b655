"""The one error type the benchmark raises for bad input."""


class BenchmarkError(ValueError):
    """A vocabulary, prompt set, tagger, config folder or checkpoint that cannot be used.

    The message names the file (or object), the key where there is one, and what to do about it.
    """
