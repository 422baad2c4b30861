"""Reading and validating images and depth files; writing depth products atomically.

Every problem with an input becomes one ``InputError`` line that names the file and the problem.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import errno
import glob
import itertools
import math
import numbers
import os
import re
import secrets
import threading
import warnings
import zlib
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import numpy as np

from .errors import Depth2ImgError, InputError, first_line

# (AVIF: Pillow 11.2+)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jfif", ".webp", ".avif", ".bmp", ".tif", ".tiff", ".gif")
# photos a folder may hold that are not read (Pillow has no reader for them): said, not skipped silently (an
# iPhone's .heic photos were left out of a folder's run without a word)
UNREAD_PHOTO_SUFFIXES = (".heic", ".heif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raw",
                         ".exr", ".psd", ".svg")  # fmt: skip
DEPTH_SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".npz")
# Decompression-bomb guard: images over this many pixels are refused before they are decoded (DEPTH2IMG_MAX_PIXELS
# sets another limit; ``pixel_limit``)
MAX_PIXELS = 64_000_000
MIN_SIDE = 16  # smaller images carry no usable structure for a depth estimator or a diffusion model
# A longer side over this many times the shorter leaves the shorter too few pixels in a depth estimator's input
# (Depth Anything V2 at 518 px rounds it to 0 beyond ~74:1) and a diffusion model's generation size
MAX_ASPECT = 16
POLARITIES = {
    "near-bright": "relative_inverse_depth",  # larger value = nearer (inverse depth, disparity, our 16-bit PNG)
    "far-bright": "relative_depth",  # larger value = farther, unknown scale
    "metric": "metric_depth",  # metres (times --depth-scale), larger = farther
}
# a DepthMap kind names its polarity too (stereo disparity runs near-bright)
_POLARITY_OF_KIND = {**{kind: name for name, kind in POLARITIES.items()}, "disparity": "near-bright"}
KIND_TEXT_KEY = "depth2img.kind"  # PNG text chunk our writer puts into 16-bit depth PNGs
# ... and this one, into those of a depth with holes: the value that marks a pixel with no depth ("0")
INVALID_TEXT_KEY = "depth2img.invalid"
# ... and this one, into those of a far-bright depth: its pixels are near-bright (its reflection, what conditions the
# model), read back as the far-bright depth they came from ("far-bright"), which the geometry scores read otherwise;
# or of stereo disparity ("disparity"), read back as that disparity in pixels
FROM_TEXT_KEY = "depth2img.from"
# ... and this one, beside "disparity": the lowest and highest disparity (px), which its lowest and highest pixel
# value stand for (normalised, its pixels had lost them: read back as disparity, the nearest 0 px was a point at
# infinity)
RANGE_TEXT_KEY = "depth2img.range"
# catch_warnings swaps the process's one filter list: two threads inside it at once (read-ahead loaders, the
# app's workers) could restore each other's filters and leave the bomb-warning-as-error filter on for good
_OPEN_LOCK = threading.Lock()


def pixel_limit() -> int:
    """The decompression-bomb limit: ``DEPTH2IMG_MAX_PIXELS`` if set, else ``MAX_PIXELS``."""
    given = os.environ.get("DEPTH2IMG_MAX_PIXELS", "").strip()
    if not given:
        return MAX_PIXELS
    if not (given.isascii() and given.isdigit()) or int(given) < 1:  # '²' is a digit int() refuses
        raise InputError(f"DEPTH2IMG_MAX_PIXELS must be an integer >= 1, got {given!r}")
    return int(given)


def _over_pixel_limit(path: Path, max_pixels: int, size: str = "") -> InputError:
    """The decompression-bomb guard's one line for ``path``; ``size`` says how large it is, where known."""
    return InputError(
        f"{path}: {size}{', ' if size else ''}over the {max_pixels:,}-pixel limit "
        "(decompression-bomb guard; raise DEPTH2IMG_MAX_PIXELS to allow it)"
    )


def _check_file(path: Path) -> None:
    """One line for a path that is no readable file's: missing, a folder, empty, in a folder that cannot be searched."""
    try:  # (Python's own PermissionError from exists(), under a folder without search permission)
        if not path.exists():
            raise InputError(f"{path}: no such file")
        if not path.is_file():
            raise InputError(f"{path}: not a file")
        if path.stat().st_size == 0:
            raise InputError(f"{path}: empty file (0 bytes)")
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err})") from None


@contextlib.contextmanager
def _allow_pixels(max_pixels: int):
    """Pillow's own guard (89.5 MP; an error at twice that) raised to ``max_pixels`` inside (it would stop a limit
    raised past it), and put back after: it is the process's, whose other code had found it raised for good. Used
    under ``_OPEN_LOCK``, around ``Image.open`` (where Pillow checks it)."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    if before is not None and max_pixels > before:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


# EXIF orientation -> the turn that shows stored pixels upright, as Pillow's ImageOps.exif_transpose makes it (tested
# against it), for arrays Pillow cannot hold (16-bit colour read by OpenCV)
UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


class _Unidentified(InputError):
    """A file Pillow does not know as an image."""


def _open(path: Path, max_pixels: int):
    from PIL import Image, UnidentifiedImageError

    _check_file(path)
    try:
        with _OPEN_LOCK, warnings.catch_warnings(), _allow_pixels(max_pixels):
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow's message: "Image size (N pixels) exceeds..."
        counted = re.search(r"\((\d+) pixels\)", str(err))
        raise _over_pixel_limit(path, max_pixels, f"{int(counted[1]):,} pixels" if counted else "") from None
    except UnidentifiedImageError:
        raise _Unidentified(f"{path}: not a readable image (unknown format or corrupt header)") from None
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise _over_pixel_limit(path, max_pixels, f"{w}x{h} is {w * h:,} pixels")
    try:
        img.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for truncated/corrupt data
        raise InputError(f"{path}: truncated or corrupt image data ({err})") from None
    if img.size != (w, h) and img.format == "TIFF":
        # Pillow turns a TIFF's size for its EXIF orientation when it opens it and its pixels when it loads them;
        # a one-channel TIFF (Pillow 12.3) came back at the unturned size with its pixels scrambled
        raise InputError(f"{path}: Pillow misreads this TIFF's EXIF orientation (it comes back {img.width}x"
                         f"{img.height}, not {w}x{h}, its pixels scrambled); save it upright, without one")  # fmt: skip
    return img


def load_image(path: str | os.PathLike, *, max_pixels: int | None = None):
    """Open ``path`` as an 8-bit RGB PIL image: EXIF rotation applied, alpha composited on white,
    CMYK/palette/16-bit grey converted; the first frame of an animation."""
    from PIL import ImageOps

    path = _path(path, "load_image: path")
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 1
    ):
        raise InputError(f"load_image: max_pixels must be a whole number >= 1, got {max_pixels!r}")
    img = _open(path, max_pixels or pixel_limit())
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as err:
        raise InputError(f"{path}: unreadable EXIF orientation ({err})") from None
    if problem := size_problem(*img.size):
        raise InputError(f"{path}: {problem}")
    return to_rgb(img)


EXIF_ORIENTATION = 0x0112  # the EXIF tag load_image applies (ImageOps.exif_transpose)


@contextlib.contextmanager
def pixel_guard():
    """Pillow opens files inside under the pixel limit load_image reads with (its own guard, lower, raised to it
    meanwhile; its warning silenced, which printed two lines before the refusal's own): for files load_image has read
    or will read, which Pillow alone refused over 179 MP where DEPTH2IMG_MAX_PIXELS allowed them, and gradio's own
    open of an upload. Under ``_OPEN_LOCK``: the guard and the warning filters are the process's."""
    from PIL import Image

    with _OPEN_LOCK, warnings.catch_warnings(), _allow_pixels(pixel_limit()):
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def open_image(path):
    """``Image.open(path)`` under ``pixel_guard``."""
    from PIL import Image

    with pixel_guard():
        return Image.open(path)


def image_header(path) -> tuple[tuple[int, int], tuple[int, int], int] | None:
    """(size as Pillow opens the file, size as load_image gives it, EXIF orientation 1..8) from its header alone;
    None where the header cannot be read (load_image then says why). Pillow's TIFF reader gives the turned size
    already (a label check that turned it again refused right labels and passed wrong ones)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (a corrupt EXIF block's: load_image says what matters)
            with open_image(path) as img:
                # the base getexif reads what the header holds: a PNG's own decodes the whole image to look for
                # EXIF after the pixels, which is rare and found by its chunk headers
                orientation = Image.Image.getexif(img).get(EXIF_ORIENTATION, 1)
                size, kind = img.size, img.format
                late = kind == "PNG" and _png_exif_after_pixels(path)
            if late:  # then the whole image is read, as load_image's exif_transpose reads it
                with open_image(path) as img:
                    orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001  unreadable, not an image, over the limit: load_image reports it with the rest
        return None
    orientation = orientation if orientation in range(1, 9) else 1  # exif_transpose ignores other values
    turned = orientation in (5, 6, 7, 8) and kind != "TIFF"
    return size, (size[::-1] if turned else size), orientation


def any_loadable(paths) -> bool:
    """Whether one of ``paths`` at least loads (``load_image``, as a run reads its inputs; stops at the first that
    does): where none does, a run fails each with its reason and loads no model for nothing. (A header check alone
    passed over a file that is too small, and a run trusting it would crash on one whose header it misread.)"""
    for p in paths:
        try:
            load_image(p)
        except Depth2ImgError:
            continue
        return True
    return False


def header_size(path) -> tuple[int, int] | None:
    """An image file's size as load_image gives it (EXIF rotation applied), from its header alone (no pixel is
    decoded); None where the header cannot be read."""
    header = image_header(path)
    return None if header is None else header[1]


def _png_exif_after_pixels(path) -> bool:
    """Whether a PNG holds EXIF (an eXIf chunk, or ImageMagick's "Raw profile type exif" text) after its first
    IDAT, where Pillow finds it only by decoding the image. Reads the chunk headers only."""
    import struct

    with open(path, "rb") as f:
        f.seek(8)  # the signature
        pixels = False
        while len(header := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", header)
            if kind == b"IEND":
                break
            pixels = pixels or kind == b"IDAT"
            start = f.tell()
            if pixels and (
                kind == b"eXIf"
                or kind in (b"tEXt", b"zTXt", b"iTXt")
                and f.read(21) == b"Raw profile type exif"
            ):
                return True
            f.seek(start + length + 4)  # the data and its CRC
    return False


def _path(path, name: str) -> Path:
    """``path`` (a str or os.PathLike) as a Path; one line naming ``name`` for anything else (a PIL image, an array:
    pathlib's own TypeError)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"{name} must be a file path (str or os.PathLike), got {type(path).__name__}")
    return Path(path)


def check_image(image, name: str = "image"):
    """``image`` if it is a PIL image of a usable size; else one line naming the argument and what it got."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise InputError(
            f"{name} must be a PIL image (use depth2img.load_image for files), got {type(image).__name__}"
        )
    if problem := size_problem(*image.size):
        raise InputError(f"{name}: {problem}")
    try:  # an opened file is decoded on first use: a truncated one raised Pillow's own OSError then
        image.load()
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"{name}: the image cannot be decoded ({first_line(err)})") from None
    # (NaN became black, infinity scaled the rest to black, without a word)
    if image.mode == "F" and not np.isfinite(np.asarray(image)).all():
        raise InputError(f"{name}: a float (mode F) image holding NaN or infinite values")
    return image


def size_problem(width: int, height: int) -> str | None:
    """Why an image of this size cannot be used (too small, too elongated), or None."""
    if min(width, height) < MIN_SIDE:
        return f"{width}x{height} is too small (each side must be >= {MIN_SIDE} px)"
    if max(width, height) > MAX_ASPECT * min(width, height):
        return (
            f"{width}x{height} is too elongated (the longer side must be at most {MAX_ASPECT}x the shorter)"
        )
    return None


def to_rgb(img):
    """Any PIL mode to 8-bit RGB, scaling high-bit-depth grey rather than clipping it."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max(initial=0)
        if img.mode == "F":
            top = 1.0 if peak <= 1.0 else 255.0
        else:
            top = 65535.0 if img.mode.startswith("I;16") or peak > 255 else 255.0
        # 32-bit values past that range are scaled by their peak (three quarters of a ramp to 2**20 were clipped)
        top = max(top, peak)
        arr = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode == "La":  # premultiplied; Pillow converts it to LA only
        img = img.convert("LA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def expand_inputs(items: Iterable[str], suffixes=IMAGE_SUFFIXES, outputs=(), leave_out_outputs: bool = False
                  ) -> tuple[list[Path], list[str]]:  # fmt: skip
    """Files, directories (their images, sorted; hidden ``.name`` files skipped, as a glob skips them) and globs ->
    (paths, problems). Order is kept; a file reached twice (another spelling, a symlink) is kept once, as first
    named. ``outputs``: the folders the run writes to, whose images a warning naming a directory's subfolders that
    hold images leaves out; with ``leave_out_outputs``, a pattern that reaches into one leaves out the files an earlier
    run wrote there (``glob_files``), with one warning."""
    paths: list[Path] = []
    problems: list[str] = []
    left_out: dict[str, Path] = {}
    for item in items:
        try:
            _expand_item(item, suffixes, outputs, leave_out_outputs, paths, problems, left_out)
        except (
            OSError
        ) as err:  # a folder that cannot be listed or searched: an internal error stopped every input
            problems.append(f"{item}: cannot be read ({err.strerror or err})")
    # by the folder reached and the name, not the spelling: a symlink loop under a recursive glob names one file 40
    # times
    unique: dict[str, Path] = {}
    for p in paths:
        unique.setdefault(file_key(p), p)
    if left_out and _first_process():
        from .errors import Depth2ImgWarning

        where = ", ".join(sorted({str(q.parent) for q in left_out.values()}))
        warnings.warn(f"{len(left_out)} file(s) that an earlier run wrote in {where} left out: a run's outputs are "
                      "not its inputs", Depth2ImgWarning, stacklevel=3)  # fmt: skip
    return list(unique.values()), problems


def _expand_item(
    item, suffixes, outputs, leave_out_outputs, paths: list, problems: list, left_out: dict
) -> None:
    """One of ``expand_inputs``' items: its files into ``paths``, what is wrong into ``problems``."""
    p = Path(item).expanduser()
    if p.is_dir():
        found = sorted(
            q
            for q in p.iterdir()
            if not q.name.startswith(".") and q.is_file() and q.suffix.lower() in suffixes
        )
        if not found:
            problems.append(f"{item}: directory has no files ending in {', '.join(suffixes)}")
        if suffixes == IMAGE_SUFFIXES:
            _say_unread_photos(p, item)
        _say_subfolders(p, item, suffixes, outputs)
        paths.extend(found)
    elif p.exists():
        paths.append(p)
    elif glob.has_magic(item):
        _say_unread_folders(item)
        found, ours = glob_files(item, outputs if leave_out_outputs else ())
        left_out.update((file_key(q), q) for q in ours)
        if not found:
            problems.append(
                f"{item}: pattern matches only files an earlier run wrote in the output folder"
                if ours
                else f"{item}: pattern matches no file"
            )
        paths.extend(found)
    else:
        problems.append(f"{item}: no such file or directory")


def _pattern_start(pattern: str) -> Path:
    """The folder a glob pattern starts from: its leading parts without wildcards ('.' where it has none)."""
    fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), Path(pattern).parts))
    return Path(*fixed) if fixed else Path(".")


def _say_unread_folders(item: str) -> None:
    """Warn of the folders under a recursive pattern ('photos/**/*.png') that cannot be listed: glob skips them
    without a word (their photos were left out, exit 0)."""
    if "**" not in item:
        return
    start = _pattern_start(os.path.expanduser(item))
    errors: list[OSError] = []
    for _, subfolders, _ in os.walk(start, onerror=errors.append):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]  # (glob skips hidden ones)
    unread = [str(e.filename) for e in errors if e.filename is not None and str(e.filename) != str(start)]
    if unread and _first_process():
        from .errors import Depth2ImgWarning

        warnings.warn(f"{item}: {len(unread)} folder(s) under it cannot be read, their photos left out ({unread[0]}"
                      f"{', ...' if len(unread) > 1 else ''})", Depth2ImgWarning, stacklevel=4)  # fmt: skip


def glob_files(item: str, outputs=()) -> tuple[list[Path], list[Path]]:
    """A pattern's files, sorted -> (read, left out). Where the pattern reaches into an ``outputs`` folder from above,
    the files a run wrote there (recorded in its manifest, or named as depth products: NAME_depth16.png,
    NAME_depth_preview.png, NAME_depth.npy, NAME_control.png) are left out: a second run of 'photos/**/*.png'
    -o photos/out was refused, its output folder 'also an input folder'. Other files there are read (and refused:
    ``depth_run.output_dir``), as are all those of a pattern that starts inside the folder ('out/*.png')."""
    pattern = os.path.expanduser(item)
    found = sorted(Path(q) for q in glob.glob(pattern, recursive=True) if Path(q).is_file())
    start = os.path.realpath(_pattern_start(pattern))
    # output folder -> the names of the files runs wrote there (read when a match lies there)
    reached: dict[str, set | None] = {real: None for real in map(os.path.realpath, outputs)
                                      if real != start and _inside(real, start)}  # fmt: skip
    if not reached:
        return found, []
    own_suffixes = (*(suffix for suffix, _ in DEPTH_WRITERS.values()), CONTROL_SUFFIX)
    # each match's folder, resolved once per folder (not per file)
    real = {parent: os.path.realpath(parent) for parent in {q.parent for q in found}}
    left = []
    for q in found:
        folder = real[q.parent]
        if folder in reached:
            if reached[folder] is None:
                reached[folder] = _recorded_files(folder)
            if q.name in reached[folder] or q.name.endswith(own_suffixes):
                left.append(q)
    skip = set(left)
    return [q for q in found if q not in skip], left


def _recorded_files(folder: str) -> set[str]:
    """The names of the files the manifest in ``folder`` records (outputs, depth products), read without a lock."""
    from .outputs import MANIFEST, manifest_records

    try:
        data = (Path(folder) / MANIFEST).read_bytes()
    except OSError:
        return set()
    return {name for r in manifest_records(data, fields=("output", "depth_files"))
            for name in (r.get("output"), *(r.get("depth_files") or ())) if isinstance(name, str)}  # fmt: skip


def _inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or under it (both real paths: a symlink's spelling does not count)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _first_process() -> bool:
    """This process says the run's input warnings (once in a run of several processes: accelerate's RANK)."""
    return os.environ.get("RANK", "0") in ("0", "")


def _say_unread_photos(folder: Path, item: str) -> None:
    """A warning naming how many of ``folder``'s files are photos of a kind that is not read."""
    unread = collections.Counter(
        q.suffix.lower()
        for q in folder.iterdir()
        if q.suffix.lower() in UNREAD_PHOTO_SUFFIXES and q.name[0] != "."
    )
    if unread and _first_process():
        from .errors import Depth2ImgWarning

        kinds = ", ".join(f"{n} {suffix}" for suffix, n in sorted(unread.items()))
        warnings.warn(f"{item}: {kinds} file(s) skipped, photos of a kind depth2img does not read; convert them to "
                      "JPEG or PNG", Depth2ImgWarning, stacklevel=4)  # fmt: skip


def _say_subfolders(folder: Path, item: str, suffixes, outputs=()) -> None:
    """A warning naming the subfolders of ``folder`` that hold images, and the globs that read them: a folder's own
    images are read, and the photos under its subfolders were left out silently (a review of messy photo folders).
    Images in the ``outputs`` folders (a run's own) and in hidden folders (a glob skips them) do not count; a
    subfolder is walked until its first image."""
    ours = [os.path.realpath(o) for o in outputs]
    nested = {}  # subfolder -> the suffix of its first image
    for sub in sorted(folder.iterdir()):
        if sub.name.startswith(".") or not sub.is_dir():
            continue
        for root, dirs, files in os.walk(sub):
            real = os.path.realpath(root)
            if any(_inside(real, o) for o in ours):
                dirs[:] = []
                continue
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            suffix = next((os.path.splitext(f)[1] for f in files
                           if not f.startswith(".") and os.path.splitext(f)[1].lower() in suffixes), None)  # fmt: skip
            if suffix:
                nested[sub.name] = suffix
                break
    if nested and _first_process():
        from .errors import Depth2ImgWarning

        names = ", ".join(list(nested)[:3]) + (f" and {len(nested) - 3} more" if len(nested) > 3 else "")
        patterns = " or ".join(f"'{os.path.join(glob.escape(item), '**', '*' + suffix)}'"
                               for suffix in dict.fromkeys(nested.values()))  # fmt: skip
        warnings.warn(f"{item}: the images in {len(nested)} subfolder(s) ({names}) are not read; give {patterns} "
                      "for them", Depth2ImgWarning, stacklevel=3)  # fmt: skip


def file_key(path) -> str:
    """A file as runs compare it: its real folder and its name, whatever the spelling of its path (two names linked
    to one file, a Hugging Face snapshot's identical frames, stay two)."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


# ---------------------------------------------------------------------------------------------- depth files


def read_depth_file(
    path: str | os.PathLike,
    polarity: str | None = None,
    *,
    depth_scale: float = 1.0,
    polarity_option: str = "a polarity",
):
    """Read a user's depth file (16/8-bit PNG, float TIFF, .npy, .npz) at full precision as a DepthMap.

    ``polarity`` is ``near-bright``, ``far-bright`` or ``metric``, for a file that does not say it itself; one that
    does (16-bit PNGs written by depth2img, .npz files with a ``kind`` entry: a polarity or a DepthMap kind) keeps
    its own, with a warning where ``polarity`` says otherwise (one flag serves a run's mixed files).
    """
    path = _path(path, "read_depth_file: path")
    check_polarity(polarity, "depth polarity")
    real = isinstance(depth_scale, numbers.Real) and not isinstance(depth_scale, bool)  # NumPy's too
    if not real or not math.isfinite(depth_scale) or not depth_scale > 0:  # "2" was a raw TypeError
        raise InputError(f"depth scale must be a finite number > 0, got {depth_scale!r}")
    suffix = path.suffix.lower()
    if suffix not in DEPTH_SUFFIXES:
        raise InputError(f"{path}: depth files must be one of {', '.join(DEPTH_SUFFIXES)}")
    recorded = invalid = reflected = valid = span = None
    if suffix in (".npy", ".npz"):
        values, recorded, valid = _read_numpy(path, pixel_limit())
    else:
        try:
            img = _open(path, pixel_limit())
        except _Unidentified:
            # a float64 TIFF (numpy's default float, as tifffile writes it), which Pillow cannot open (nor OpenCV a
            # float16 one: that stays "not a readable image")
            values = _opencv_tiff(path) if suffix in (".tif", ".tiff") else None
            if values is None:
                raise
            img = None
        if img is not None:
            recorded, invalid = img.info.get(KIND_TEXT_KEY), img.info.get(INVALID_TEXT_KEY)
            reflected = recorded == "near-bright" and img.info.get(FROM_TEXT_KEY) == "far-bright"
            if recorded == "near-bright" and img.info.get(FROM_TEXT_KEY) == "disparity":
                span = _disparity_range(img.info.get(RANGE_TEXT_KEY), path)
            if img.mode == "1" or len(img.getbands()) > 1 and img.mode not in ("RGB", "RGBA", "P", "LA"):
                # read as bools ("dtype bool"), or a CMYK TIFF as 4 planes ("shape (H, W, 4)")
                what = (
                    "a 1-bit image holds two values, not" if img.mode == "1" else f"a {img.mode} image is not"
                )
                raise InputError(
                    f"{path}: {what} a depth map; give a greyscale 8/16-bit PNG, a float TIFF or a .npy"
                )
            if img.mode in ("RGB", "RGBA", "P", "LA"):
                # grey stored as colour, or with an alpha channel, which is ignored (an LA PNG: "shape (H, W, 2)")
                values = _grey(path, _wide_rgb(path, img), img)
            else:
                values = np.asarray(img)
                # TIFF SampleFormat: 1 unsigned (the default), 2 signed
                sample_format = img.tag_v2.get(339, (1,)) if img.format == "TIFF" else (2,)
                signed = 2 in np.atleast_1d(sample_format)
                if values.dtype == np.int32 and not signed:
                    # Pillow reads an unsigned 32-bit TIFF as signed: 4e9 came back negative, the polarity scrambled
                    values = values.view(np.uint32)
                elif values.dtype == np.uint8 and signed and img.format == "TIFF":
                    # and a signed 8-bit one as unsigned: -4..-1 came back as 252..255, the farthest as the nearest
                    values = values.view(np.int8)
            # turned upright by its EXIF orientation, as a photo is (Pillow's TIFF reader turns a TIFF's itself): a
            # depth PNG stored turned was read as stored, a quarter turn from its photo
            turn = UPRIGHT.get(img.getexif().get(0x0112)) if img.format != "TIFF" else None
            values = np.ascontiguousarray(turn(values)) if turn else values
    values, valid = _depth_values(values, path, valid)
    # our PNG of a far-bright depth: that depth again (holes, 0, stay; depths 1..65535 or 0..65535)
    if reflected:
        values = np.where(values == 0, 0, 65536 - values) if invalid == "0" else 65535 - values
        recorded = "far-bright"
    # our PNG of stereo disparity: that disparity again, in pixels (it was read back as a relative inverse depth,
    # which the geometry scores read otherwise: AbsRel 0.0869 where the disparity scored 0.0993)
    if span is not None:
        lo, hi = span
        if invalid == "0":  # holes hold 0, the disparity 1..65535
            valid, invalid = values != 0, None
            values = lo + (values - 1) / 65534 * (hi - lo)
        else:
            values = lo + values / 65535 * (hi - lo)
        recorded = "disparity"
    # stereo disparity (proportional to 1/depth) stays disparity, which the geometry scores take as it is (read as
    # a relative inverse depth, it was squeezed to 1:20 and its 0s, no match, scored as the farthest depth)
    disparity = recorded == "disparity"
    recorded = _POLARITY_OF_KIND.get(recorded, recorded)
    # a typo must not let a given polarity stand in for it
    if recorded is not None and recorded not in POLARITIES:
        from .conditioning import KINDS

        raise InputError(
            f"{path}: the file records its depth as {recorded!r}, which is none of {', '.join(POLARITIES)} "
            f"(or {', '.join(KINDS)}); fix its kind entry"
        )
    notes = []
    if recorded in POLARITIES:
        if polarity is not None and polarity != recorded:
            notes.append(f"{path}: the file records its depth as {recorded}, which it keeps; the polarity given "
                         f"({polarity}) is for files that record none")  # fmt: skip
            _say_note(notes[0], stacklevel=3)
        polarity = recorded
    elif polarity is None:
        raise InputError(
            f"{path}: the file does not say which way its depth runs; pass {polarity_option} "
            f"({' | '.join(POLARITIES)})"
        )
    # by its absolute path (as typed, it was found only from the folder the run was started in)
    return _depth_map(values, polarity, path, source=os.path.abspath(path), invalid=invalid, valid=valid,
                      depth_scale=depth_scale, notes=notes, kind="disparity" if disparity else None)  # fmt: skip


def _disparity_range(text, path) -> tuple[float, float]:
    """The lowest and highest disparity our 16-bit PNG of a disparity records (``RANGE_TEXT_KEY``), or one line."""
    try:
        lo, hi = (float(v) for v in text.split())
    except (AttributeError, ValueError):
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise InputError(f"{path}: the file records disparity, and its {RANGE_TEXT_KEY} text chunk must hold its "
                         f"lowest and highest disparity (two numbers), got {text!r}")  # fmt: skip
    return lo, hi


def check_polarity(polarity, name: str, *, missing: str | None = None) -> None:
    """``polarity`` None (not given) or one of ``POLARITIES``; one line naming ``name`` for anything else.
    ``missing``: the depth it would say how to read, where none was given (then a polarity given is refused: it
    was accepted and did nothing)."""
    # (a list was no key of POLARITIES: "unhashable type")
    if polarity is not None and not (isinstance(polarity, str) and polarity in POLARITIES):
        raise InputError(f"{name} must be one of {', '.join(POLARITIES)}, got {polarity!r}")
    if polarity is not None and missing:
        raise InputError(f"{name} {polarity} says how to read {missing}; none was given")


def _depth_values(values, where, valid=None) -> tuple[np.ndarray, np.ndarray | None]:
    """A depth's values as a 2-D float64 array (a copy), and ``valid`` (an .npz's mask of the pixels that hold a
    depth: theirs must be finite, a NaN or inf elsewhere is set to 0) as a bool array, or one line saying what is
    wrong."""
    values = np.asarray(values)
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 2:
        raise InputError(f"{where}: depth must be a 2-D array, got shape {values.shape}")
    if min(values.shape) < 1:
        raise InputError(f"{where}: depth array is empty (shape {values.shape})")
    if not (np.issubdtype(values.dtype, np.number) and not np.issubdtype(values.dtype, np.complexfloating)):
        raise InputError(f"{where}: depth must hold real numbers, got dtype {values.dtype}")
    values = values.astype(np.float64)  # a copy
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != values.shape or not (valid.dtype == bool or np.isin(valid, (0, 1)).all()):
            raise InputError(f"{where}: 'valid' must be a mask of the depth's shape {values.shape} (bool, or 0 and 1), "
                             f"got {valid.dtype} of shape {valid.shape}")  # fmt: skip
        valid = valid.astype(bool)
        values[~valid & ~np.isfinite(values)] = 0  # a hole's NaN: no value
    nonfinite = int((~np.isfinite(values)).sum())
    if nonfinite:
        raise InputError(
            f"{where}: {nonfinite} depth values are NaN or infinite; in metric depth mark missing pixels as 0 (no "
            "measurement); in the other polarities 0 is a depth (the nearest far-bright one): give an .npz with a "
            "'valid' mask, or a DepthMap with one"
        )
    if np.abs(values).max(initial=0) > np.finfo(np.float32).max:
        raise InputError(f"{where}: depth values reach {np.abs(values).max():.3g}, beyond float32's range")
    return values, valid


def _depth_map(values: np.ndarray, polarity: str, where, *, source: str, invalid=None, valid=None,
               depth_scale: float = 1.0, notes=(), kind: str | None = None):  # fmt: skip
    """A DepthMap of checked ``values`` (``_depth_values``) that run as ``polarity`` says (``kind``: the DepthMap
    kind where it is another of that polarity's, disparity): metric depth has no negative value and 0 marks no
    measurement; ``invalid`` (our 16-bit PNG's chunk) the value of a hole; ``valid`` (an .npz's) the mask of the
    pixels that hold a depth. ``source``: what outputs record it came from."""
    from .depthmap import DepthMap

    kind = kind or POLARITIES[polarity]
    valid = np.ones(values.shape, bool) if valid is None else valid.copy()
    if invalid == "0":  # our 16-bit PNG of a depth with holes: they hold 0, its depth 1..65535
        valid = values != 0
    if kind == "metric_depth":
        _check_no_negative(values, valid, where)
        valid &= values > 0  # 0 = no measurement (KITTI / sensor convention)
        values = values * depth_scale
        if values.max(initial=0) > np.finfo(np.float32).max:
            raise InputError(
                f"{where}: depth scale {depth_scale:g} takes depth values beyond float32's range"
            )
    return DepthMap(values.astype(np.float32), kind, valid, source=source,
                    meta={"polarity": polarity}, notes=_with_flat_note(values, valid, kind, where, notes))  # fmt: skip


def _check_no_negative(values: np.ndarray, valid: np.ndarray, where) -> None:
    """Metric depth holds no negative value where it holds a depth (``valid``)."""
    negative = int(((values < 0) & valid).sum())
    if negative:
        raise InputError(f"{where}: metric depth has {negative} negative values")


_FLAT_NOTE = ", so it carries no structure and the outputs keep none of its geometry"


def _with_flat_note(values, valid, kind: str, where, notes=()) -> list[str]:
    """``notes`` and, for a blank or saturated depth (its control image is black, which a user would only see in the
    outputs), a warning, also given."""
    flat = _flat(values, valid, kind)
    if not flat:
        return list(notes)
    note = f"{where}: {flat}{_FLAT_NOTE}"
    _say_note(note, stacklevel=5)
    return [*notes, note]


# a caller that says a depth's notes itself (run_transform, with the input they are of) sets it: they were said twice
_NOTES_UNSAID: contextvars.ContextVar[bool] = contextvars.ContextVar("depth2img_notes_unsaid", default=False)


@contextlib.contextmanager
def notes_unsaid():
    """Within it (this thread), the notes a DepthMap is made with (a flat depth, a recorded polarity kept) are only
    recorded, for the caller to say: not warned (a thread-safe stand-in for catch_warnings, whose filters are the
    process's)."""
    token = _NOTES_UNSAID.set(True)
    try:
        yield
    finally:
        _NOTES_UNSAID.reset(token)


def _say_note(note: str, stacklevel: int) -> None:
    """Warn of a DepthMap's note, unless within ``notes_unsaid``."""
    if not _NOTES_UNSAID.get():
        from .errors import Depth2ImgWarning

        warnings.warn(note, Depth2ImgWarning, stacklevel=stacklevel)


def _flat(values: np.ndarray, valid: np.ndarray, kind: str) -> str | None:
    """What makes a depth carry no structure (no valid pixel, or one value on all of them), or None."""
    if not valid.any():
        return (
            "no pixel holds a measurement (metric 0 marks none)"
            if kind == "metric_depth"
            else "no pixel is valid"
        )
    low, high = (values.min(), values.max()) if valid.all() else (values[valid].min(), values[valid].max())
    if low == high:
        return f"every {'valid ' if not valid.all() else ''}depth value is {low:g}"
    return None


ASPECT_TOLERANCE = 0.01  # depth and image aspect ratios may differ by 1% (rounding of odd sizes)


def depth_for_image(
    depth, size: tuple[int, int], polarity: str | None = None, polarity_option: str = "a polarity"
):
    """A user-given depth (DepthMap, (H, W) array, or file path) as a DepthMap at ``size`` (width, height).

    An array needs ``polarity``; a file needs it unless it records it. An aspect ratio other than the image's
    is refused (resizing it would bend the geometry); the same aspect at another resolution is resized."""
    from dataclasses import replace

    from .conditioning import usable
    from .depthmap import DepthMap

    where = ""
    if isinstance(depth, (str, os.PathLike)):
        where = f"{depth}: "  # the file
        depth = read_depth_file(depth, polarity, polarity_option=polarity_option)
    elif not isinstance(depth, DepthMap):  # an array: a NumPy array, a torch tensor, nested lists...
        if not (hasattr(depth, "__array__") or isinstance(depth, (list, tuple))):
            raise InputError(
                f"depth must be a DepthMap, an (H, W) array or a depth file's path, got {type(depth).__name__}"
            )
        if not (isinstance(polarity, str) and polarity in POLARITIES):
            raise InputError(
                f"depth array: depth_polarity must be one of {', '.join(POLARITIES)} (got {polarity!r})"
            )
        if str(getattr(depth, "dtype", "")) == "torch.bfloat16":  # NumPy has none ("unsupported ScalarType")
            depth = depth.float()
        try:
            values = np.asarray(depth)
        except Exception as err:  # a tensor on a GPU or needing grad, ragged lists
            raise InputError(f"depth array: cannot be read as numbers ({first_line(err)})") from None
        # checked as a file's values are (metric: no negative value, 0 = no measurement), and copied: the caller
        # may refill its buffer for the next frame, which changed the earlier result's depth
        # (recorded as "", it said nothing of where the depth came from)
        depth = _depth_map(_depth_values(values, "depth array")[0], polarity, "depth array", source="array")
    else:  # a DepthMap (its own arrays, copied when made): checked as an array is, they were not
        held = _POLARITY_OF_KIND.get(depth.kind)
        if polarity is not None and polarity != held:  # (ignored without a word)
            note = (f"depth: the DepthMap is {depth.kind} ({held}), which it keeps; the polarity given ({polarity}) "
                    "is for arrays and files that record none")  # fmt: skip
            _say_note(note, stacklevel=3)
            depth = replace(depth, notes=[*depth.notes, note])
        if depth.kind == "metric_depth":
            _check_no_negative(depth.values, depth.valid, "depth")
        # (once: one made from a flat array or file, or here, holds its note; variations passes its depth on)
        if not any(n.endswith(_FLAT_NOTE) for n in depth.notes):
            notes = _with_flat_note(depth.values, depth.valid, depth.kind, "depth", depth.notes)
            depth = depth if notes == depth.notes else replace(depth, notes=notes)
    w, h = size
    if abs(depth.width / depth.height - w / h) > ASPECT_TOLERANCE * (w / h):
        raise InputError(
            f"{where}depth is {depth.width}x{depth.height} but the image is {w}x{h}: aspect ratios differ; "
            "give a depth map of the image's shape"
        )
    if not usable(depth.values, depth.kind, depth.valid).any():  # it generated from a blank control image
        raise InputError(
            f"{where or 'depth: '}no pixel holds a depth (all marked invalid, or metric depth all 0)"
        )
    return depth if depth.size == (w, h) else depth.resized(w, h)


def _grey(path: Path, rgb, img=None) -> np.ndarray:
    """The grey values of a depth stored as colour (``rgb``, or ``img`` converted), or one line: a colour image is no
    depth map."""
    rgb = np.asarray(img.convert("RGB")) if rgb is None else rgb
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
        raise InputError(
            f"{path}: a colour image is not a depth map (colour-mapped previews cannot be read back); "
            "give a greyscale 8/16-bit PNG, a float TIFF or a .npy"
        )
    return rgb[..., 0]


def _opencv_read(path: Path) -> np.ndarray | None:
    """``path``'s pixels as stored (no EXIF turn; colour as BGR(A)), read by OpenCV, or None where it cannot read
    them; OpenCV's own error lines on stderr are silenced."""
    import cv2

    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)


def _tiff_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a TIFF's first directory, read without its pixels; None where it cannot be read so."""
    from PIL import TiffImagePlugin

    try:
        with open(path, "rb") as fh:
            ifd = TiffImagePlugin.ImageFileDirectory_v2(fh.read(8))
            fh.seek(ifd.next)
            ifd.load(fh)
        return int(ifd[256]), int(ifd[257])
    except Exception:  # noqa: BLE001  a BigTIFF, a damaged directory: OpenCV says what it makes of it
        return None


def _opencv_tiff(path: Path) -> np.ndarray | None:
    """A TIFF that Pillow cannot open, read by OpenCV (a float64 depth), or None where OpenCV cannot either.
    The pixel limit is checked from its header first: a 1.2 MB file of 12000x12000 float64 zeros was decoded (14 s,
    2.3 GB) before it was refused, OpenCV's own limit being 2**30 pixels; and again once read."""

    def check(w: int, h: int) -> None:
        if w * h > pixel_limit():
            raise _over_pixel_limit(path, pixel_limit(), f"{w}x{h} is {w * h:,} pixels")

    if size := _tiff_size(path):
        check(*size)
    pixels = _opencv_read(path)
    if pixels is None:
        return None
    check(pixels.shape[1], pixels.shape[0])
    return _grey(path, pixels[..., 2::-1]) if pixels.ndim == 3 else pixels


def _wide_rgb(path: Path, img) -> np.ndarray | None:
    """A 16-bit (48/64-bit colour) PNG or TIFF as a (H, W, 3) uint16 array, or None for any other file: Pillow opens
    those at 8 bits per channel, which would cut a grey depth stored in RGB to 256 levels. The header says which,
    so an 8-bit file is not decoded twice."""
    if img.format == "PNG":
        with open(path, "rb") as fh:
            head = fh.read(26)
        wide = len(head) == 26 and head[24] == 16  # IHDR's bit depth
    elif img.format == "TIFF":
        bits = getattr(img, "tag_v2", {}).get(258, 8)  # BitsPerSample
        wide = max(bits if isinstance(bits, tuple) else (bits,)) > 8
    else:
        wide = False
    if not wide:
        return None
    pixels = _opencv_read(path)
    if pixels is None or pixels.dtype == np.uint8 or pixels.ndim != 3:
        # Pillow's 8 bits would cut it to 256 levels, silently (OpenCV fails on a 16-bit colour TIFF turned by its
        # EXIF orientation 5-8)
        raise InputError(
            f"{path}: a 16-bit colour image that cannot be read at its full precision; give the depth as a "
            "one-channel 16-bit PNG or TIFF, a float TIFF or a .npy"
        )
    return pixels[..., 2::-1]  # BGR(A) -> RGB


def _npy_shape(fh) -> tuple[int, ...] | None:
    """The shape an .npy stream's header declares, read without its data; None for a stream that is no .npy."""
    from numpy.lib import format as npy_format

    try:
        version = npy_format.read_magic(fh)
    except ValueError:
        # not an .npy (a zip, a pickle, a short file): np.load says what it is
        return None
    if version == (1, 0):
        return npy_format.read_array_header_1_0(fh)[0]
    return npy_format.read_array_header_2_0(fh)[0]


def _check_array_pixels(path: Path, shape: tuple[int, ...] | None, max_pixels: int) -> None:
    """Refuse an array over the decompression-bomb limit from its header (a tiny .npz can hold gigabytes)."""
    if shape is not None and math.prod(shape) > max_pixels:
        size = f"{shape[1]}x{shape[0]}" if len(shape) == 2 else f"shape {shape}"
        raise _over_pixel_limit(path, max_pixels, f"{size} is {math.prod(shape):,} pixels")


def _read_numpy(path: Path, max_pixels: int):
    import tokenize
    import zipfile

    _check_file(path)
    # A damaged .npz fails at opening (not a zip) or only when a member is read (bad deflate data, an object array);
    # a header cut short fails in NumPy's tokenizer (an internal error: "TokenError: EOF in multi-line statement")
    unreadable = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, tokenize.TokenError)
    try:
        with open(path, "rb") as fh:
            _check_array_pixels(path, _npy_shape(fh), max_pixels)
        data = np.load(path, allow_pickle=False)
    except InputError:
        # the pixel guard's own line (an InputError is a ValueError too)
        raise
    except unreadable as err:
        raise InputError(f"{path}: not a readable NumPy file ({_npy_problem(err, path)})") from None
    if isinstance(data, np.ndarray):
        return data, None, None
    with data:
        # 'valid': the mask of the pixels that hold a depth (it was ignored, silently: holes read as depths)
        names = [k for k in data.keys() if k not in ("kind", "valid")]
        key = "depth" if "depth" in names else (names[0] if len(names) == 1 else None)
        if key is None:
            raise InputError(f"{path}: .npz must hold a 'depth' array (or exactly one array), found {names}")
        try:
            # each member's header before its data; np.load names the zip entry "depth.npy" "depth"
            for name in [key, *(k for k in ("kind", "valid") if k in data)]:
                member = f"{name}.npy" if f"{name}.npy" in data.zip.namelist() else name
                with data.zip.open(member) as fh:
                    _check_array_pixels(path, _npy_shape(fh), max_pixels)
            recorded = str(data["kind"]) if "kind" in data else None
            return data[key], recorded, data["valid"] if "valid" in data else None
        except InputError:
            raise
        except unreadable as err:
            raise InputError(f"{path}: .npz member unreadable ({_npy_problem(err)})") from None


def _npy_problem(err: BaseException, path: Path | None = None) -> str:
    """NumPy's reason, without its advice to load a file with no array header (or an array of Python objects)
    unsafely, which a web visitor was shown. ``path``: the .npy read, whose header says which (a .npz member's
    had one)."""
    text = first_line(err)
    if "pickle" not in text:
        return text
    headed = True  # a .npz member had its header
    if path is not None:
        try:
            with open(path, "rb") as fh:
                headed = fh.read(6) == b"\x93NUMPY"
        except OSError:
            headed = False
    if headed:
        return "an array of Python objects, which is never loaded (loading runs code)"
    return "no NumPy array header: is it a .npy file?"


# zlib level of every PNG depth2img writes (lossless at any level). Measured on this project's 2-core x86_64,
# Pillow: a 1024x683 photo took 183 ms at Pillow's default (6) and 47 ms at 1, for a 10 % larger file; a
# 1024x512 16-bit depth map 173 ms and 20 ms (+5 %). At 6, one writer thread would cap a dataset run near
# 5 images/s at that size, about the GPU target's rate.
PNG_COMPRESS_LEVEL = 1


# atomic_path's temporary names: ".NAME.<8 hex>.part<NAME's suffix>"
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.part(?P<suffix>.*)")


def stale_temp_files(root: Path, recursive: bool = True) -> list[Path]:
    """The temporary files ``atomic_path`` left under ``root`` (and its subfolders, if ``recursive``) when its process
    was killed: files named as it names them, nothing else (a user's ``.notes.partial.txt`` or a folder
    ``.cache.parts`` is no temp file)."""
    found = []
    for p in (root.rglob if recursive else root.glob)(".*.part*"):
        m = _TEMP_NAME.fullmatch(p.name)
        if m and Path(m["name"]).suffix == m["suffix"] and p.is_file() and not p.is_symlink():
            found.append(p)
    return found


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``, on error removed. Inside
    ``write_all_or_none`` the rename waits until every one of its writes has succeeded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.part{path.suffix}"
        try:  # mode 0666 less the umask, as open() gives (mkstemp's private 0600 stayed on every output)
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
        except OSError as err:  # (a read-only folder's error named the hidden temporary file)
            raise _as_asked(err, tmp, path) from None
    pending = _PENDING.get()
    try:
        yield Path(tmp)
        _sync(tmp)
        if pending is None:
            _replace(Path(tmp), path)
        else:
            pending.append((Path(tmp), path))
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        asked = _as_asked(err, tmp, path)
        if asked is err:
            raise
        raise asked from err


# The writes of a write_all_or_none in progress: (temporary file, path) pairs renamed once all have succeeded
_PENDING: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "depth2img_pending_writes", default=None
)


def _sync(path: Path) -> None:
    """Flush a written file's data to disk before it takes its name: the manifest line that follows it is flushed,
    and after a power cut a renamed file whose data had not reached the disk can read back empty (ext4's delayed
    allocation), which a resume would take as made. A missing file it makes again. Best effort (about 1 ms a 600 KB
    file on this CI machine's ext4)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as err:
        asked = _as_asked(err, tmp, path)
        if asked is err:
            raise
        raise asked from err


def _as_asked(err: BaseException, tmp, path: Path) -> BaseException:
    """``err`` naming the file the caller asked for, not the temporary one (a folder in its place, a full disk);
    OSError makes the subclass its errno names (a library's own subclass may take other arguments)."""
    if isinstance(err, OSError) and err.errno is not None and err.filename in (None, str(tmp), tmp):
        return OSError(err.errno, err.strerror, str(path))
    return err


def write_depth_png16(depth, path) -> Path:
    """16-bit PNG, near = bright, full 0..65535 range; the polarity is recorded in a text chunk. A depth with holes
    (invalid pixels, metric zeros) keeps them: they hold 0 and its depth 1..65535, as a second text chunk says (they
    were 0 like the farthest depth, read back as valid, and a geometry check of the file scored them). Stereo
    disparity records that it is, and its range in pixels, so it reads back as that disparity."""
    from PIL import Image, PngImagePlugin

    from .conditioning import usable

    info = PngImagePlugin.PngInfo()
    info.add_text(KIND_TEXT_KEY, "near-bright")
    if depth.kind == "relative_depth":
        info.add_text(FROM_TEXT_KEY, "far-bright")
    valid = usable(depth.values, depth.kind, depth.valid)
    if depth.kind == "disparity":
        # the disparities that the pixels' 0..1 stand for (normalise's min and max)
        known = depth.values[valid] if valid.any() else np.zeros(1)
        lo, hi = float(known.min()), float(known.max())
        info.add_text(FROM_TEXT_KEY, "disparity")
        info.add_text(RANGE_TEXT_KEY, f"{lo!r} {hi!r}")
    if valid.all():
        pixels = depth.to_uint16()
    else:
        pixels = np.where(valid, 1 + np.round(depth.normalized().astype(np.float64) * 65534), 0).astype(
            np.uint16
        )
        info.add_text(INVALID_TEXT_KEY, "0")
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return Path(path)


def write_depth_npy(depth, path) -> Path:
    """float32 .npy with the raw values (their meaning is ``depth.kind``); a metric depth's holes (invalid pixels)
    as 0, its mark of no measurement, read back as holes (a hole's placeholder, e.g. a rendered scene's sky at
    300 m, was read back as a measurement). Other kinds have no such mark (0 is the nearest far-bright depth): their
    holes keep their values."""
    from .conditioning import usable

    values = depth.values.astype(np.float32)
    if depth.kind == "metric_depth":
        values[~usable(depth.values, depth.kind, depth.valid)] = 0
    from io import BytesIO

    # encoded first, then written as one write: NumPy writes a file with tofile, whose OSError carries no errno ("6144
    # requested and 3040 written"), so a full disk went on to every later input instead of stopping the run
    encoded = BytesIO()
    np.save(encoded, values)
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.getbuffer())
    return Path(path)


def depth_preview(depth) -> np.ndarray:
    """Colour-mapped (inferno) 8-bit RGB preview, near = bright."""
    import cv2

    grey = np.round(depth.normalized() * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def write_depth_preview(depth, path) -> Path:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(depth_preview(depth)).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return Path(path)


DEPTH_WRITERS = {"png16": ("_depth16.png", write_depth_png16), "npy": ("_depth.npy", write_depth_npy),
                 "preview": ("_depth_preview.png", write_depth_preview)}  # fmt: skip
# the control image a transform writes beside its depth products (NAME_control.png)
CONTROL_SUFFIX = "_control.png"


def check_depth_products(stem, formats, out_dir=".") -> tuple[str, ...]:
    """``formats`` (names of ``DEPTH_WRITERS``) as a tuple, ``stem`` a file name stem and ``out_dir`` a path; one line
    for anything else (a raw KeyError 'png'; a string of formats was read letter by letter; a None stem named files
    None_s3.png; a None folder failed as pathlib's TypeError)."""
    if not isinstance(out_dir, (str, os.PathLike)):
        raise InputError(f"out_dir must be a folder's path (str or os.PathLike), got {out_dir!r}")
    if not isinstance(stem, str) or not stem or "/" in stem or os.sep in stem or stem in (".", ".."):
        raise InputError(f"stem must be a file name without its suffix, got {stem!r}")
    # what is added to it (a preset's 60, a seed's 19, a temp file's 19 bytes...) must stay within a file name's 255:
    # a 300-byte stem failed as a raw OSError "File name too long"
    size = len(stem.encode(errors="surrogateescape"))
    if size > MAX_GIVEN_STEM_BYTES:
        raise InputError(
            f"stem must take at most {MAX_GIVEN_STEM_BYTES} bytes (the file names made from it stay within 255), got "
            f"{size}: {stem[:40]!r}...; depth2img.outputs.shortened(stem) cuts one to its start and a hash"
        )
    return check_depth_formats(formats)


MAX_GIVEN_STEM_BYTES = 150


def check_depth_formats(
    formats, label: str = "depth formats", *, at_least_one: bool = False
) -> tuple[str, ...]:
    """``formats``, names of ``DEPTH_WRITERS`` (``at_least_one``: not none), as a tuple; one line naming ``label``
    for anything else."""
    # (a string was read letter by letter; None, a number: TypeError)
    if (
        not isinstance(formats, (list, tuple))
        or not all(isinstance(f, str) and f in DEPTH_WRITERS for f in formats)
        or (at_least_one and not formats)
    ):
        raise InputError(f"{label} must be a list of {', '.join(DEPTH_WRITERS)}, got {formats!r}")
    return tuple(formats)


def write_depth_products(depth, out_dir, stem: str, formats=("png16", "npy", "preview")) -> list[Path]:
    """Write the chosen depth products for one input; if any write fails, none is left behind."""
    from .depthmap import DepthMap

    formats = check_depth_products(stem, formats, out_dir)
    if not isinstance(depth, DepthMap):  # an array failed as "no attribute 'values'"
        raise InputError(f"depth must be a DepthMap, got {type(depth).__name__}")
    jobs = []
    for fmt in formats:
        suffix, writer = DEPTH_WRITERS[fmt]
        jobs.append(partial(writer, depth, Path(out_dir) / f"{stem}{suffix}"))
    return write_all_or_none(jobs)


def write_all_or_none(jobs: list[Callable], threads: int = 1, fresh: list | None = None) -> list[Path]:
    """Run file writes (each returns a Path or a list of them; each through ``atomic_path``), on up to ``threads``
    threads; their files take their names only once every write has succeeded. If any fails, its error is raised
    and no file is touched: a rerun into a folder that failed for one input had removed the files it wrote over,
    an earlier run's finished depth and control files. ``fresh``, if given, gets the paths that did not exist
    before (what a caller may remove again). Inside another write_all_or_none, the writes join the outer one's."""
    from concurrent.futures import ThreadPoolExecutor

    written: list[Path] = []

    def add(paths):
        written.extend([paths] if isinstance(paths, Path) else paths)

    pending = _PENDING.get()
    outer = pending is not None
    if not outer:
        pending = []
    token = None if outer else _PENDING.set(pending)
    try:
        if threads > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(min(threads, len(jobs)), thread_name_prefix="depth2img-png") as pool:
                # each write sees the pending list (a thread does not inherit the caller's context)
                futures = [pool.submit(contextvars.copy_context().run, job) for job in jobs]
            for future in futures:  # all done: then raise the first error
                if future.exception() is not None:
                    raise future.exception()
                add(future.result())
        else:
            for job in jobs:
                add(job())
        if outer:
            return written
        for _, path in pending:  # what os.replace would refuse, before any file is touched
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        while pending:
            tmp, path = pending[0]
            if fresh is not None and not os.path.lexists(path):
                fresh.append(path)
            _replace(tmp, path)
            pending.pop(0)
    finally:
        if token is not None:
            _PENDING.reset(token)
            for tmp, _ in pending:  # those not renamed: a write (or a rename) failed
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    return written
