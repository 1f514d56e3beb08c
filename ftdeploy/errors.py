"""One exception hierarchy. The CLI catches :class:`FtdeployError` once, prints its message as
one line and exits with its ``exit_code``; anything else is a bug and keeps its traceback."""


class FtdeployError(Exception):
    """Base of every error ftdeploy reports to a user."""

    exit_code = 2


class ConfigError(FtdeployError):
    """A target or profile file is missing, unreadable or invalid."""


class DataError(FtdeployError):
    """A dataset spec is malformed or its files are missing."""


class ModelError(FtdeployError):
    """Unknown model name, bad factory, or a checkpoint that does not fit."""


class ExportError(FtdeployError):
    """The model cannot be exported to the target's cells."""


class VerifyError(FtdeployError):
    """The ONNX file is not an ftdeploy export or cannot be verified."""


class SignOffFailed(FtdeployError):
    """Verification ran to the end and at least one acceptance limit failed."""

    exit_code = 1
