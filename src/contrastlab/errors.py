"""Errors that are the user's to fix, reported as one line without a traceback."""


class UserError(Exception):
    """A problem with the user's input: a path, a config value, a dataset, a checkpoint.

    The message must say what is wrong and what to do about it, on one line. The command-line
    interface prints it as ``error: <message>`` and exits with status 2.
    """


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""
