"""The one error type merge_core raises for bad input."""


class CheckpointError(ValueError):
    """A checkpoint, recipe or output path that cannot be used.

    The message names the file, the key (where there is one) and what to do about it.
    """
