"""User-facing errors: each carries one line that names the input and what would be accepted."""

import re


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors can run to many lines)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# C0 and C1 controls (a tab stays: it breaks no line), line and paragraph separators, and the bidirectional marks,
# embeddings and isolates, which reorder the text shown after them (a name could show as another)
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def one_line(text: str) -> str:
    """``text`` with its control characters escaped as Python writes them (``\\n``, ``\\r``, ``\\x1b``): a message said
    on one line (a file named with a line break split an error in two; one named with an escape sequence could clear
    the terminal or recolour it; a right-to-left override showed 'gnp.exe' as 'exe.png')."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def cause_line(err: BaseException) -> str:
    """``first_line(err)``, with the first line of the exception its chain starts from, where there is one: a
    library's wrapper hides the cause (diffusers' "Unable to load weights from checkpoint file" for a truncated
    safetensors file, whose own error said "incomplete metadata, file not fully covered")."""
    root, seen = err, {id(err)}
    while True:
        nxt = root.__cause__ or (None if root.__suppress_context__ else root.__context__)
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        root = nxt
    text = first_line(err)
    return text if root is err else f"{text} ({type(root).__name__}: {first_line(root)})"


class Depth2ImgError(Exception):
    """Base class. ``str(err)`` is a complete, single-line message for the user."""

    # met alike by every process of a multi-process run (a bad job file, another process stopped): the first
    # process reports it
    every_process = False


class InputError(Depth2ImgError, ValueError):
    """A file, argument or value given by the user cannot be used."""


class ModelLoadError(Depth2ImgError):
    """A model could not be found, downloaded or verified."""


class GenerationError(Depth2ImgError):
    """The pipeline ran but gave no usable image (NaN or inf pixels); nothing is written for it."""


def float16_hint(dtype, option: str) -> str:
    """The likely cause of NaN or inf output, for a message's end: float16, where that is ``dtype``."""
    return (
        f"; float16 overflows where bfloat16 and float32 do not ({option})"
        if str(dtype) == "torch.float16"
        else ""
    )


class Stopped(Depth2ImgError):
    """A generation was stopped on request (the web page's Stop button: ``transformer.stop_when_set``); it gave no
    image."""


class OutOfMemory(Depth2ImgError):
    """The accelerator ran out of memory; the message names the options that reduce memory."""

    def __init__(self, message: str, batch: int = 1):
        super().__init__(message)
        self.batch = batch


class Depth2ImgWarning(UserWarning):
    """Something the user should know that did not stop the work (e.g. a prompt truncated to the encoder's length)."""
