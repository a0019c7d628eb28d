"""Every error rm_jax expects users to meet, in one place.

Library code raises these with a message that names what is wrong and where (file, row, field;
run folder, step; config key). The command line (:mod:`rm_jax.cli`) prints the message as one line
and exits with :attr:`RmJaxError.exit_code`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Optional


class RmJaxError(Exception):
    """Base of the expected failures."""

    exit_code = 1


class ConfigError(RmJaxError, ValueError):
    """A config file, key, value or combination that cannot run."""


class InputError(RmJaxError, ValueError):
    """A command-line argument or input file that cannot be used (the message names which)."""


class ConversationError(RmJaxError, ValueError):
    """A row that cannot be turned into a conversation."""


class DataError(RmJaxError, ValueError):
    """A row (or file) that does not fit the schema. The message names file, 1-based row and field."""

    def __init__(self, file: str, row: Optional[int], field: Optional[str], reason: str):
        self.file, self.row, self.field, self.reason = file, row, field, reason
        where = file
        if row is not None:
            where += f": row {row}"
        if field:
            where += f", field '{field}'"
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # picklable across processes (datasets workers, multiprocessing)
        return (type(self), (self.file, self.row, self.field, self.reason))


class ModelLoadError(RmJaxError, ValueError):
    """A model folder that cannot be read; the message names the folder and what is wrong."""


class CheckpointError(RmJaxError):
    """A checkpoint that cannot be restored; the message names the run folder, the step and the file."""


class TrainingError(RmJaxError, RuntimeError):
    """A run that cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class RunLockError(RmJaxError):
    """A run folder already held by another process; the message names its host, pid and start time."""
