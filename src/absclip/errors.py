"""Errors absclip raises on purpose; the CLI prints them as one line without a trace."""


class AbsclipError(Exception):
    """Base class: a problem with the user's input or environment, explained in the message."""


class WeightsNotFoundError(AbsclipError):
    """Model weights are neither on disk nor downloadable."""


class InputFileError(AbsclipError):
    """A class, description, plan or image file is missing or malformed."""


class UnsupportedError(AbsclipError):
    """The requested combination (method, backbone, option) cannot work."""


class ConfigError(AbsclipError, ValueError):
    """A setting has a value it cannot take; raised when the configuration is built, before any model loads."""
