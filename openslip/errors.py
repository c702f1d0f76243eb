"""Exceptions for user errors: the CLI prints their message on one line and exits non-zero, no traceback."""


class UserError(Exception):
    """A problem with what the user asked for (a bad path, key, value or file), not a bug in openslip."""


class CheckpointError(UserError):
    """A file that is not a loadable checkpoint: truncated, of another kind, or a pickle that would run code."""


class ConfigError(UserError):
    """An unknown config key, a value of the wrong type, or an impossible combination."""


class DataError(UserError):
    """Unreadable dataset input: a missing manifest column, a malformed line, too many skipped samples."""


class TrainingError(UserError):
    """A run that cannot go on: a non-finite loss, a lost peer process. The message says where to resume."""


class RunStopped(Exception):  # noqa: N818 - not an error: the run stopped where it was asked to
    """SIGTERM / SIGINT ended a run after a final checkpoint; the CLI prints the message and exits `exit_code`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
