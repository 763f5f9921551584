"""The errors kdlens expects a user to meet, each with a one-line message.

The command line prints these as ``kdlens: error: <message>`` and exits 2.
Anything else that escapes is a bug in kdlens and keeps its traceback. Each
type also derives from the built-in exception a Python caller would expect
(``ValueError`` for a bad value, ``FileNotFoundError`` for a missing file), so
library callers can catch either.

Write every message as one line that names the offending key, file or value
and says what was expected.
"""

from __future__ import annotations


class KdlensError(Exception):
    """A mistake in what the user gave kdlens; the message is one line."""


class UsageError(KdlensError, ValueError):
    """A bad argument or option value (API or command line)."""


class ConfigError(UsageError):
    """A config that cannot be used."""


class CheckpointError(KdlensError, ValueError):
    """A checkpoint that cannot be loaded as data: corrupt, foreign, unsafe, or of another model."""


class DataError(KdlensError, ValueError):
    """A dataset on disk that cannot be read as described: a corrupt image, a bad label file."""


class MissingFileError(KdlensError, FileNotFoundError):
    """A file or directory the user named, or that a run should hold, is not there."""


class TrainingDiverged(KdlensError, RuntimeError):
    """Training produced a non-finite loss; the run stops and its last good checkpoint stays the latest."""


class UnknownNameError(UsageError, KeyError):
    """A name that is not there: a layer, a model, a method. Also the KeyError a lookup raises."""

    def __str__(self) -> str:  # the message as written, not KeyError's repr of it
        return str(self.args[0]) if self.args else ""


class WrongTypeError(UsageError, TypeError):
    """An option a function does not take, or an argument of the wrong type; also a TypeError."""


class TeacherNotTrained(UsageError, RuntimeError):
    """A student was asked for before its teacher exists; also a RuntimeError."""
