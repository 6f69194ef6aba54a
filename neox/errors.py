"""The one root of neox-pipeline's own errors, and its four kinds.

Every error a user can cause or fix (a bad config, a run folder in the wrong state, bad input data, a service that
cannot be reached) is a `NeoxError` whose message names the key, file or URL and what to do; the CLI prints it as
one line and exits 2. Anything else is a bug and keeps its traceback.

Each kind also derives from a built-in exception, so code written against the built-ins keeps working:
`ConfigError` and `DataError` are `ValueError`s, `RunStateError` and `ServiceError` are `RuntimeError`s,
`MissingInput` is a `FileNotFoundError` and `OutputExists` a `FileExistsError`.
"""

from __future__ import annotations


class NeoxError(Exception):
    """An error the user can act on; its message says what is wrong and how to fix it."""


class ConfigError(NeoxError, ValueError):
    """A config, option or argument that cannot be used: the message names the key and what is expected."""


class RunStateError(NeoxError, RuntimeError):
    """The state of a run folder, stage output or registered model does not allow the action asked for."""


class OutputExists(RunStateError, FileExistsError):
    """An output that is already there and must not be replaced without being asked to."""


class DataError(NeoxError, ValueError):
    """Input data or a stage output that is missing, damaged or not what the stage reads."""


class MissingInput(DataError, FileNotFoundError):
    """An input file or folder that does not exist."""


class ServiceError(NeoxError, RuntimeError):
    """An external service (a download source, the Hugging Face hub) that failed or cannot be reached."""
