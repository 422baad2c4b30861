"""``run_depth``: depth products for many inputs (what ``depth2img depth`` calls).

Inputs that cannot be used are reported one line each and skipped; nothing is written for them, and
the others still run. A full disk (or quota, or read-only file system) stops the run with an InputError.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from .errors import Depth2ImgError, InputError
from .io import (
    any_loadable,
    check_depth_formats,
    expand_inputs,
    glob_files,
    load_image,
    stale_temp_files,
    write_depth_products,
)
from .knobs import check_batch_size
from .outputs import CPU_THREADS, BackgroundWriter, progress_bar, status_line, writer_threads

CHUNK_IMAGES = 16  # images decoded and held in memory at once


# write errors no later input would escape: a full disk, a quota, a read-only file system
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


@dataclass
class RunReport:
    done: list[Path] = field(default_factory=list)  # inputs whose products were written
    written: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one line each
    on_error: Callable[[str], None] | None = field(default=None, repr=False)

    def fail(self, msg: str) -> None:
        self.failed.append(msg)
        if self.on_error:
            self.on_error(msg)

    def settle_write(self, path, out_dir, future, *, paths=lambda result: result) -> None:
        """Record one input's finished background write (a ``BackgroundWriter`` ``then``): done, with the files
        ``paths(result)``, or one failure line naming the input."""
        try:
            result = future.result()
        except OSError as err:
            where = f"cannot write {err.filename}" if err.filename else f"cannot write to {out_dir}"
            # a full disk: the next inputs' files would not fit either; stop, as a batch job does
            if err.errno in DISK_FULL:
                raise InputError(f"{path}: {where} ({err.strerror}); stopped, no partial file left") from None
            self.fail(f"{path}: {where} ({err.strerror or err})")
            return
        self.done.append(path)
        self.written += paths(result)

    def collect(self, inputs, out_dir=None) -> list[Path]:
        """Expand files, directories and globs; each input that matches nothing is recorded as a failure.
        ``out_dir``: the run's output folder (not named among an input folder's subfolders left out)."""
        # (a bad out_dir: output_dir_for says so)
        outputs = [out_dir] if isinstance(out_dir, (str, os.PathLike)) else ()
        paths, problems = expand_inputs([str(i) for i in inputs], outputs=outputs, leave_out_outputs=True)
        for msg in problems:
            self.fail(msg)
        return paths

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        return f"{len(self.done)} done, {len(self.failed)} failed"

    def check_paired(self, given: int, found: int, name: str, what: str, inputs: str = "inputs") -> None:
        """``given`` files, one per input (right images, depth files), against the ``found`` inputs: refused where
        the counts differ, or where an input was not found (the files then pair with other inputs than meant: with
        the counts equal, a right image was matched with the next left input, exit 0)."""
        if given != found or self.failed:
            n = len(self.failed)
            unknown = (
                f" ({n} input{'s' if n > 1 else ''} not found, above: the pairs are unknown)" if n else ""
            )
            raise InputError(f"{name}: {given} {what} for {found} {inputs}; give one per input{unknown}")


def _stems(paths: Sequence[Path], kept: dict | None = None, reserved=()) -> list[str]:
    """Output stems from input names, one per input and no two alike (also not by case, for case-insensitive disks):
    a repeated name gets the first free of -2, -3..., never another input's own name (``a.png``, ``a.jpg`` and
    ``a-2.png`` give ``a``, ``a-3``, ``a-2``), so no output overwrites another. ``kept``: the stems some paths
    already have (a resumed run's); ``reserved``: names no other path takes (an earlier run's sources')."""
    from .outputs import shortened

    kept = kept or {}
    held = {s.casefold() for s in (*kept.values(), *reserved)}
    own = {p: shortened(p.stem) for p in paths}  # a long name cut (outputs add to it)
    taken = {s.casefold() for s in own.values()} | held
    first = set(held)
    stems = []
    for p in paths:
        if p in kept:
            stems.append(kept[p])
            continue
        key = own[p].casefold()
        if key not in first:
            first.add(key)
            stems.append(own[p])
            continue
        n = 2
        while f"{key}-{n}" in taken:
            n += 1
        taken.add(f"{key}-{n}")
        stems.append(f"{own[p]}-{n}")
    return stems


# a temporary file this old in an output folder is a killed run's (a younger one may be a concurrent run's, mid-write)
STALE_TEMP_S = 600


def as_paths(items, name: str, *, at_least_one: bool = False) -> list:
    """``items`` (one path, or a sequence of paths: str or os.PathLike) as a list; one line naming ``name`` for
    anything else. A lone str had been walked letter by letter: "/data/a.png" ran the current folder's images."""
    if isinstance(items, (str, os.PathLike)):
        return [items]
    if isinstance(items, Iterable) and not isinstance(items, bytes):
        items = list(items)
        # (a None among them is named too: taken as "none bad", depth=[None] had estimated the depth instead)
        for i in items:
            if not isinstance(i, (str, os.PathLike)):
                raise InputError(
                    f"{name} must hold file paths (str or os.PathLike), got {i!r} ({type(i).__name__})"
                )
        if at_least_one and not items:  # an empty run reported "0 done, 0 failed", ok
            raise InputError(f"{name} is empty: give at least one file, folder or pattern")
        return items
    raise InputError(f"{name} must be a file path or a list of them, got {type(items).__name__}")


def check_callback(fn, name: str) -> None:
    """``fn`` None or callable: one that is not failed as a TypeError at the first message, mid-run."""
    if fn is not None and not callable(fn):
        raise InputError(f"{name} must be a function taking one line of text, or None, got {fn!r}")


def _quietly(check) -> bool:
    """A path check (``Path.is_dir``, ``exists``) that is False where the path cannot be looked at."""
    try:
        return check()
    except OSError:
        return False


def output_dir(out_dir, inputs: Sequence) -> Path:
    """``out_dir`` created for a run's outputs, checked before any model loads: one line if it is a file, cannot be
    created, or is one of the input folders (whose next run would read these outputs as inputs)."""
    import glob
    import tempfile

    if not isinstance(out_dir, (str, os.PathLike)):
        raise InputError(f"output folder must be a path (str or os.PathLike), got {out_dir!r}")
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        # an input folder, or the folder of a pattern's matches ("out/*.png", "out/**/*.png"; "**/*.png" leaves out
        # the matches in out_dir)
        # (an input under a folder that cannot be searched raised PermissionError here: it fails as an input)
        folders = {Path(i) for i in inputs if _quietly(Path(i).is_dir)}
        folders |= {q.parent for i in inputs if not _quietly(Path(i).exists) and glob.has_magic(str(i))
                    for q in glob_files(str(i), [out_dir])[0]}  # fmt: skip
        if any(f.resolve() == out_dir.resolve() for f in folders):
            raise InputError(
                f"output folder {out_dir} is also an input folder: a later run would read its outputs as inputs; "
                "choose another output folder"
            )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        if out_dir.is_symlink():  # (said to be a file)
            raise InputError(
                f"output folder {out_dir} is a link to {os.readlink(out_dir)}, which is not there"
            ) from None
        raise InputError(f"output folder {out_dir} is a file") from None
    except OSError as err:
        raise InputError(f"output folder {out_dir} cannot be created ({err.strerror or err})") from None
    try:  # an existing folder that cannot be written failed every input only after the whole run
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=".depth2img-write-check-")
        try:
            os.close(fd)
        finally:
            os.unlink(probe)
    except OSError as err:
        raise InputError(f"output folder {out_dir} cannot be written ({err.strerror or err})") from None
    return out_dir


@contextlib.contextmanager
def output_dir_for(out_dir, inputs: Sequence) -> Iterator[Path]:
    """``output_dir``, for a run's block: a folder it created is removed again if still empty at the end (a bad
    model name, or a run whose every input failed, left an empty output folder)."""
    # (output_dir names a bad one)
    existed = isinstance(out_dir, (str, os.PathLike)) and Path(out_dir).exists()
    path = output_dir(out_dir, inputs)
    now = time.time()
    for stale in stale_temp_files(path, recursive=False):  # of a killed run, old enough
        with contextlib.suppress(OSError):
            if now - stale.stat().st_mtime > STALE_TEMP_S:
                stale.unlink()
    try:
        yield path
    finally:
        if not existed:
            with contextlib.suppress(OSError):
                path.rmdir()  # only if still empty


def read_ahead(submit: Callable, items: Sequence) -> Iterator:
    """``submit(item).result()`` for each item, in order, with the next item's work already submitted while the
    caller works on this one (``submit`` hands the work to a background thread and returns its Future)."""
    pending = submit(items[0]) if len(items) else None
    for i in range(len(items)):
        result = pending.result()
        pending = submit(items[i + 1]) if i + 1 < len(items) else None
        yield result


def refuse_unused(what: str, label, joint: str, advice: str = "", **given) -> None:
    """One line where any of ``given`` is set beside ``what``, which makes them not apply (they were ignored)."""
    unused = [label(k) for k, value in given.items() if value is not None]
    if unused:
        verb = "does" if len(unused) == 1 else "do"
        raise InputError(f"{what}: {joint.join(unused)} {verb} not apply to it{advice}")


def run_depth(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    estimator=None,
    right: Sequence[str | os.PathLike] | None = None,
    num_disparities: int | None = None,
    formats: Sequence[str] = ("png16", "npy", "preview"),
    batch_size: int | None = None,
    device=None,
    dtype=None,
    local_files_only: bool = False,
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
    label: Callable[[str], str] = str,
) -> RunReport:
    """Estimate (or match, with ``right``) depth for each input and write the chosen products to ``out_dir``.

    ``estimator`` is a ``DepthEstimator`` or anything ``DepthEstimator.from_pretrained`` takes.
    ``right`` gives one right image per input for rectified stereo pairs (SGBM), instead of an estimator;
    ``num_disparities``: their disparity search range (``stereo_depth``'s, default an eighth of each pair's width).
    ``label``: how the caller's user spells an argument in messages (the CLI's flags; the Python name by default).
    """
    formats = check_depth_formats(formats, "formats", at_least_one=True)
    if batch_size is not None:
        check_batch_size(batch_size, label("batch_size"))
    check_callback(on_error, "on_error")
    if num_disparities is not None:
        from .stereo import check_num_disparities

        if right is None:
            raise InputError(f"{label('num_disparities')} is the disparity range of stereo pairs: give "
                             f"{label('right')} too (an estimator was to be used, {num_disparities!r} "
                             "ignored)")  # fmt: skip
        check_num_disparities(num_disparities, option=label("num_disparities"))
    if right is not None:  # they were ignored without a word (a missing estimator, no GPU: exit 0)
        refuse_unused(f"{label('right')} matches stereo pairs (OpenCV SGBM, on the CPU)", label, ", ",
                      estimator=estimator, batch_size=batch_size, device=device, dtype=dtype)  # fmt: skip
    elif hasattr(estimator, "processor"):  # (they were ignored: it ran where and as it was loaded)
        refuse_unused(f"{label('estimator')} is a loaded DepthEstimator", label, " and ", " (give them to its "
                      "from_pretrained)", device=device, dtype=dtype)  # fmt: skip
    elif device is not None:  # (said as 'device', not the flag, once the estimator's loader read it)
        from .loading import resolve_device

        resolve_device(device, label("device"))
    inputs = as_paths(inputs, "inputs", at_least_one=True)
    report = RunReport(on_error=on_error)
    paths = report.collect(inputs, out_dir)
    right_paths: list[Path] | None = None
    if right is not None:
        right_paths = [Path(r) for r in as_paths(right, label("right"))]
        report.check_paired(len(right_paths), len(paths), label("right"), "right images", "left inputs")
    if not paths:
        return report
    with output_dir_for(out_dir, inputs) as out_dir:
        if right_paths is None and not hasattr(estimator, "processor"):
            from .estimators import DepthEstimator
            from .registry import resolve_estimator

            named = resolve_estimator(estimator).name  # a bad name is refused, readable inputs or not
            if any_loadable(paths):  # else each input fails below, with its reason
                status_line(progress)(f"loading depth estimator {named}")
                estimator = DepthEstimator.from_pretrained(
                    estimator, device=device, dtype=dtype, local_files_only=local_files_only
                )
        stems = _stems(paths)
        bar = progress_bar(total=len(paths), unit="img", desc="depth", disable=not progress)

        # A chunk's products are written by the writer threads while the next chunk is read and estimated
        writer = BackgroundWriter(threads=writer_threads(CPU_THREADS))
        try:
            for start in range(0, len(paths), CHUNK_IMAGES):
                chunk = range(start, min(start + CHUNK_IMAGES, len(paths)))
                depths = {}
                images = {}
                for i in chunk:
                    try:
                        images[i] = load_image(paths[i])
                        if right_paths is not None:
                            from .stereo import stereo_depth

                            right_img = load_image(right_paths[i])
                            # which pair a warning or an error is of (there was no telling, with several)
                            where = str(paths[i])
                            try:
                                depths[i] = stereo_depth(
                                    images[i],
                                    right_img,
                                    num_disparities=num_disparities,
                                    name=f"{where}: stereo",
                                    option=label("num_disparities"),
                                )
                            except InputError as err:
                                # the pair's own checks (sizes, kinds, width) name no file
                                if str(err).startswith(where):
                                    raise
                                raise InputError(f"{where}: {err}") from None
                            bar.update(1)
                    except Depth2ImgError as err:
                        report.fail(str(err))
                        bar.update(1)
                if right_paths is None and images:
                    keys = list(images)
                    for i, depth in zip(
                        keys,
                        estimator.isolated(
                            [images[k] for k in keys], batch_size=batch_size, progress=bar.update
                        ),
                    ):
                        if isinstance(depth, Depth2ImgError):
                            report.fail(f"{paths[i]}: {depth}")
                        else:
                            depths[i] = depth
                for i in chunk:
                    if i not in depths:
                        continue
                    write = partial(write_depth_products, depths[i], out_dir, stems[i], formats)
                    writer.submit(write, then=partial(report.settle_write, paths[i], out_dir))
            writer.flush()
        finally:
            writer.close()
            bar.close()
    return report
