"""The one error type merge_core raises for bad input."""


class CheckpointError(ValueError):
    """A checkpoint, recipe or output path that cannot be used.

    The message names the file, the key (where there is one) and what to do about it.
    """


class CheckpointWarning(UserWarning):
    """Something about an input that the merge works around but the user should know.

    (A misnamed file, malformed metadata from another tool, sources that disagree on their
    prediction type, a weight outside the usual range.) The command line prints these as
    ``mergesearch: warning: ...`` lines.
    """
