"""User-facing errors: each carries one line that names the input and what would be accepted."""


class Depth2ImgError(Exception):
    """Base class. ``str(err)`` is a complete, single-line message for the user."""


class InputError(Depth2ImgError, ValueError):
    """A file, argument or value given by the user cannot be used."""


class ModelLoadError(Depth2ImgError):
    """A model could not be found, downloaded or verified."""


class OutOfMemory(Depth2ImgError):
    """The accelerator ran out of memory; the message names the options that reduce memory."""

    def __init__(self, message: str, batch: int = 1):
        super().__init__(message)
        self.batch = batch
