"""Writing generation results: PNGs carrying their metadata, depth products, and ``manifest.jsonl``.

Files are written atomically (temp file + rename); a manifest line is appended only after its files exist.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

from .errors import InputError, one_line
from .io import (
    CONTROL_SUFFIX,
    DEPTH_WRITERS,
    PNG_COMPRESS_LEVEL,
    atomic_path,
    check_depth_products,
    open_image,
    write_all_or_none,
    write_depth_products,
)
from .knobs import check_batch_size

METADATA_KEY = "depth2img"  # PNG text chunk holding the JSON metadata
MANIFEST = "manifest.jsonl"
# Writes queued behind the writer threads (their images stay in memory) before submit waits
MAX_PENDING_WRITES = 8
# PNG encoding (zlib) releases the GIL, so writer threads encode in parallel: a 1920x1080 PNG takes ~120 ms on
# one core, which at a GPU's rate (~190 ms per image) would make one thread the limit. A quarter of the cores, 1-4,
# unless the environment variable DEPTH2IMG_WRITER_THREADS says otherwise.
WRITER_THREADS = max(1, min(4, (os.cpu_count() or 1) // 4))
# CPU work that the caller (or the GPU) waits on runs on all cores, up to 8: a batch's images resized back to their
# inputs' sizes, a result's PNGs encoded for the app, and the writes of a depth run, which is write-bound (~90 ms
# to encode the three products of a 1024x683 input on one core, ~13 ms to estimate it with a small model)
CPU_THREADS = max(1, min(8, os.cpu_count() or 1))
# where stderr is no terminal (a log file, CI), progress bars refresh at most this often
LOG_REFRESH_S = 30


def writer_threads(default: int | None = None) -> int:
    """The writer thread count: ``DEPTH2IMG_WRITER_THREADS`` if set, else ``default`` (``WRITER_THREADS``)."""
    given = os.environ.get("DEPTH2IMG_WRITER_THREADS", "").strip()
    if not given:
        return default or WRITER_THREADS
    if not (given.isascii() and given.isdigit()) or int(given) < 1:  # '²' is a digit int() refuses
        raise InputError(f"DEPTH2IMG_WRITER_THREADS must be an integer >= 1, got {given!r}")
    return int(given)


def progress_bar(**kwargs):
    """A tqdm bar (Jupyter's widget in a notebook). Where stderr is no terminal it refreshes at most every
    ``LOG_REFRESH_S`` seconds: a run's nested bars wrote every step, with cursor movements, into its log."""
    import sys

    from tqdm.auto import tqdm

    stream = kwargs.get("file") or sys.stderr
    # (a notebook's widget bar writes to no terminal either; in a notebook tqdm.auto's class derives from it)
    notebook = any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__)
    if not notebook and not (hasattr(stream, "isatty") and stream.isatty()):
        kwargs.setdefault("mininterval", LOG_REFRESH_S)
    return tqdm(**kwargs)


def status_line(enabled: bool = True) -> Callable[[str], None]:
    """How a run says what it does between its progress bars (a model loads for a minute, or downloads for longer,
    with no bar of ours): ``say(msg)`` writes ``depth2img: MSG`` to stderr, above any bar, on one line (a line break
    in it, from a file's name, escaped: the error split in two); silent where ``enabled`` is false (progress off)."""
    import sys

    from tqdm.auto import tqdm

    def say(msg: str) -> None:
        if enabled:
            tqdm.write(one_line(f"depth2img: {msg}"), file=sys.stderr)

    return say


class BackgroundWriter:
    """File writes in background threads, so that generation does not wait on disk.

    ``submit(fn, *args, in_order=step, then=...)`` queues ``fn(*args)``, which may run in parallel with other
    writes (``threads``, default ``writer_threads()``). ``step(result)`` then runs in one ordering thread, in
    submission order, as soon as this write and every earlier one are done: what must stay in order and follow
    its files (manifest lines) goes there. ``then(future)`` runs in the caller's thread, in submission order,
    within that or a later ``submit``, or at ``flush``; the default, ``Future.result``, re-raises the write's (or
    the step's) error there. ``submit`` waits while more than ``max_pending`` writes are queued, at least two
    ``burst``s (the writes a caller submits at once, a batch's: submit had waited for half of each batch of 16 to be
    written, the GPU idle meanwhile). ``close`` (or
    leaving a ``with`` block) waits for the threads to finish. ``stop_on_error``: once a write with an ordered step
    has failed, no later ordered step runs (for a run that stops at any write error: a later manifest line would
    claim what the failed write left out)."""

    def __init__(
        self,
        max_pending: int = MAX_PENDING_WRITES,
        threads: int | None = None,
        stop_on_error=False,
        burst: int = 1,
    ):
        self.stop_on_error = stop_on_error
        self._stopped = False  # an ordered write failed (with stop_on_error)
        self.threads = threads or writer_threads()
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="depth2img-writer")
        self._sequencer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="depth2img-writer-order")
        self._pending: deque[tuple[Future, Callable]] = deque()
        self.max_pending = max(max_pending, 2 * burst)

    def submit(
        self, fn, *args, in_order: Callable | None = None, then: Callable[[Future], object] = Future.result
    ):
        work = self._pool.submit(fn, *args)
        if in_order is not None:
            work = self._sequencer.submit(self._then_step, work, in_order)
        self._queue(work, then)

    def after(self, step: Callable[[], object]) -> None:
        """Run ``step()`` in the ordering thread after the ordered steps of the writes submitted so far."""
        self._queue(self._sequencer.submit(self._then_step, None, lambda _: step()), Future.result)

    def _then_step(self, work: Future | None, step: Callable):
        """In the ordering thread: wait for ``work`` (a write; None: nothing to wait for), then run ``step`` on its
        result. A failed write's step is not run; with ``stop_on_error`` no later step runs either."""
        if self._stopped:
            return work.result() if work is not None else None
        try:
            result = work.result() if work is not None else None
            step(result)
        except BaseException:
            self._stopped = self.stop_on_error
            raise
        return result

    def _queue(self, future: Future, then: Callable[[Future], object]) -> None:
        self._pending.append((future, then))
        while len(self._pending) > self.max_pending or (self._pending and self._pending[0][0].done()):
            self._settle()

    def flush(self) -> None:
        """Wait for every queued write and run its ``then``."""
        while self._pending:
            self._settle()

    def _settle(self) -> None:
        future, then = self._pending.popleft()
        then(future)  # waits for it if needed

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._sequencer.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def save_png(image, path, metadata: dict | None = None) -> Path:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if metadata is not None:
        info.add_text(METADATA_KEY, json.dumps(metadata, sort_keys=True))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return Path(path)


def read_png_metadata(path) -> dict:
    # (under the pixel limit its image was made with: Pillow's own guard refused an output over 179 MP)
    with open_image(path) as img:
        return json.loads(img.info[METADATA_KEY])


@contextlib.contextmanager
def locked_manifest(path, mode: str):
    """``path`` opened in ``mode`` (binary) with an exclusive lock held (``flock``; none where the platform has
    none), on the file the path names once the lock is held: a compaction renames a new file over it while others
    wait. Two runs writing into one folder had lost lines: one's compaction read the manifest and renamed its
    rewrite over it, so the lines the other appended in between went to the file replaced."""
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    path = Path(path)
    while True:
        # unbuffered: nothing is left to write at close, after a failed write was cut off
        fh = open(path, mode, buffering=0)
        try:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            here, there = os.fstat(fh.fileno()), os.stat(path)
            if (here.st_ino, here.st_dev) == (there.st_ino, there.st_dev):
                break
        except FileNotFoundError:  # replaced or removed while this waited: open it again
            pass
        except BaseException:
            fh.close()
            raise
        fh.close()
    try:
        yield fh
    finally:
        fh.close()  # and the lock with it


def append_manifest(path, records: list[dict], files=()) -> None:
    """Append one JSON line per record to the manifest file ``path`` and flush them to disk, under its lock. If that
    fails, the ``files`` the records describe are removed too: no file is left without its line."""
    lines = "".join(json.dumps(rec, sort_keys=True) + "\n" for rec in records).encode("utf-8")
    try:
        with locked_manifest(path, "ab") as fh:
            size = os.fstat(fh.fileno()).st_size
            try:
                view = memoryview(lines)
                while view:
                    view = view[fh.write(view) :]
                os.fsync(fh.fileno())
            except BaseException:
                # no line, or part of one (a full disk), is left for them: the next would join it
                with contextlib.suppress(OSError):
                    os.ftruncate(fh.fileno(), size)
                raise
    except BaseException:
        for f in files:
            Path(f).unlink(missing_ok=True)
        raise


def read_manifest(path: Path, *, keep=None, fields=None) -> list[dict]:
    """Lines of a manifest; a torn last line (a run killed mid-write) is dropped and cut off the file (under its lock:
    it may be a line another run is writing, which is then whole), and a line that is no JSON record (a torn line
    that later runs appended after) is skipped. ``keep`` and ``fields``: as ``manifest_records``."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    if not data.endswith(b"\n") and data:
        with locked_manifest(path, "r+b") as fh:
            data = read_whole_lines(fh)
    return manifest_records(data, keep=keep, fields=fields)


def read_whole_lines(fh) -> bytes:
    """A manifest's bytes, read from ``fh`` (opened by ``locked_manifest``, its lock held), with a torn last line (a
    run killed mid-write) cut off the file."""
    fh.seek(0)
    data = fh.read()
    if data and not data.endswith(b"\n"):
        os.ftruncate(fh.fileno(), data.rfind(b"\n") + 1)
    return data


def _parsed_lines(lines):
    """(offset, line, record) for each whole line of ``lines`` (a binary file's lines), ``record`` None where the line
    holds no JSON object (a torn line that later lines were appended after, no UTF-8); stops at a torn last line."""
    offset = 0
    for line in lines:
        if not line.endswith(b"\n"):
            return
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            record = None
        yield offset, line, record if isinstance(record, dict) else None
        offset += len(line)


def manifest_records(data: bytes, *, keep=None, fields=None) -> list[dict]:
    """The JSON records of a manifest's whole lines: those ``keep(record)`` is true of (all by default), each with
    only its ``fields`` (all by default). Parsed a line at a time (a whole record held ~10 KB: a caller that needs a
    few fields of a 1M-line manifest would hold GBs)."""
    import io

    return [record if fields is None else {k: record[k] for k in fields if k in record}
            for _, _, record in _parsed_lines(io.BytesIO(data))
            if record is not None and (keep is None or keep(record))]  # fmt: skip


def manifest_index(fh, fields) -> list[dict]:
    """The JSON records of the manifest open as ``fh`` (``locked_manifest``'s, its lock held), each with only its
    ``fields`` and, as ``"_at"``, where its line lies for ``write_lines``; a torn last line (a run killed mid-write)
    is cut off the file where ``fh`` may write. A rewrite copies the lines it keeps: parsed whole, a 1M-line
    multi-process run's merge held ~10 GB."""
    index, end = [], 0
    with os.fdopen(os.dup(fh.fileno()), "rb") as reader:  # buffered: ``fh`` is not (a line a byte at a time)
        reader.seek(0)
        for offset, line, record in _parsed_lines(reader):
            end = offset + len(line)
            if record is not None:
                index.append(
                    {**{k: record[k] for k in fields if k in record}, "_at": (fh, offset, len(line))}
                )
        if reader.seek(0, os.SEEK_END) > end and fh.writable():
            os.ftruncate(fh.fileno(), end)
    return index


def write_lines(path, entries) -> None:
    """Write to ``path`` the lines that ``entries`` (``manifest_index``'s records, their files still open) point to,
    in order, byte for byte."""
    with open(path, "wb") as out:
        for entry in entries:
            fh, offset, length = entry["_at"]
            fh.seek(offset)
            out.write(fh.read(length))


def compact_manifest(path) -> None:
    """Keep one line per output file that exists, its last: a run that replaced an earlier run's file (same name,
    same folder) replaced its line too, and a file removed leaves no line."""
    path = Path(path)
    if not path.is_file():
        return
    # under the manifest's lock, so that no line another run appends meanwhile is lost
    # (a manifest the user made read-only is still rewritten, as the folder allows: its torn line is left)
    with locked_manifest(path, "r+b" if os.access(path, os.W_OK) else "rb") as fh:
        records = manifest_index(fh, ("output",))
        last = {r.get("output"): i for i, r in enumerate(records)}
        kept = [r for i, r in enumerate(records)
                if last[r.get("output")] == i and (r.get("output") is None or (path.parent / r["output"]).is_file())]  # fmt: skip
        if len(kept) != len(records):
            with atomic_path(path) as tmp:
                write_lines(tmp, kept)


# An output stem's most UTF-8 bytes: what is added to it (batch: "__" + a variation's 100 + "__s" + a 19-digit seed
# + ".png", and a temp file's 19) stays within a file name's 255
MAX_STEM_BYTES = 100


def shortened(name: str, limit: int = MAX_STEM_BYTES) -> str:
    """``name`` if it takes at most ``limit`` UTF-8 bytes, else its start and a hash of the whole (two long names
    that share a start stay apart): a 240-byte photo name made output names past 255 ("File name too long" once
    files were written)."""
    # (a name not in UTF-8, Latin-1 from an old archive, holds surrogates: its bytes as the disk has them)
    data = name.encode(errors="surrogateescape")
    if len(data) <= limit:
        return name
    import hashlib

    head = data[: limit - 9].decode(errors="ignore")  # never half a character
    return f"{head}-{hashlib.sha1(data).hexdigest()[:8]}"


def safe_name(text: str, limit: int = 60) -> str:
    """A file-name fragment: ASCII letters, digits, '+', '-' and '_' only, at most ``limit`` characters. Accents
    are dropped ("été" -> "ete"); a text that holds any other non-ASCII character (another script, a symbol) or is
    cut ends in a hash of the whole: presets "冬" and "夏" were both "x", one's images written over the other's."""
    import unicodedata

    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    name = re.sub(r"[^A-Za-z0-9+_-]+", "-", folded).strip("-")
    if len(name) <= limit and folded.isascii():
        return name or "x"
    import hashlib

    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    head = name[: limit - 9].rstrip("-")
    return f"{head}-{digest}" if head else digest


def write_transform_result(
    result,
    out_dir,
    stem: str,
    *,
    source: str = "",
    depth_formats=("png16", "preview"),
    manifest: bool = True,
    threads: int = 1,
    files: list | None = None,
) -> list[dict]:
    """Images (metadata in their PNG text), depth products and the control image, encoded on up to ``threads``
    threads; if any fails, none is left. Then manifest lines (unless ``manifest`` is False: a caller writing
    several results in parallel appends the returned records in order). ``files``, if given, gets every path
    written that did not exist before (for the caller's ``append_manifest``, which removes them should the lines
    fail; one written over, such as an input's depth files that an earlier run's lines name too, stays)."""
    depth_formats = check_depth_products(stem, depth_formats, out_dir)  # before anything is written
    if not all(hasattr(result, a) for a in ("images", "metadata", "depth", "control_image")):
        raise InputError(f"result must be a TransformResult, got {type(result).__name__}")
    # (a tuple failed once every file was written, and left them without a manifest line; threads None after the
    # folder was made)
    check_batch_size(threads, "threads")
    if files is not None and not isinstance(files, list):
        raise InputError(
            f"files must be a list (it gets the paths written), got {type(files).__name__} {files!r}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [partial(write_depth_products, result.depth, out_dir, stem, depth_formats),
            partial(save_png, result.control_image, out_dir / f"{stem}{CONTROL_SUFFIX}")]  # fmt: skip
    records, saved = [], {id(result.control_image)}
    # the files an input's images share, made from its depth: a later run into the folder may write over them
    depth_files = [f"{stem}{DEPTH_WRITERS[f][0]}" for f in depth_formats] + [f"{stem}{CONTROL_SUFFIX}"]
    for img, meta in zip(result.images, result.metadata):
        tag = f"_{safe_name(meta['preset'])}" if meta.get("preset") else ""
        path = out_dir / f"{stem}{tag}_s{meta['seed']}.png"
        meta = {**meta, "source": source, "output": path.name, "depth_files": depth_files}
        # Pillow's save sets attributes on the image: one object is never saved by two threads at once
        img = img.copy() if id(img) in saved else img
        saved.add(id(img))
        jobs.append(partial(save_png, img, path, meta))
        records.append(meta)
    fresh: list[Path] = []
    write_all_or_none(jobs, threads, fresh=fresh)
    if files is not None:
        files += fresh
    if manifest:
        append_manifest(out_dir / MANIFEST, records, fresh)
    return records
