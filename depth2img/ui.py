"""The Gradio web app: a thin shell over ``Service`` (which calls the Python API).

``create_demo(service)`` builds the page; it never loads a model itself, so it can be built and tested
without one. Every event has an ``api_name``, so the page is also an HTTP API (``gradio_client``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import secrets
import sys
import tempfile
import threading
import traceback
import weakref
from pathlib import Path

from .errors import Depth2ImgError, first_line
from .io import DEPTH_SUFFIXES, open_image
from .scene import SCENE_SIZE

# the page's seed field: the largest whole number a browser's number holds exactly (past it a typed seed would change
# silently; the HTTP API's seed too, through this field); the Variations seeds (text) too, so that any variation can be
# made again in Generate; the Python API and CLI take up to knobs.MAX_SEED (2**63-1)
MAX_SEED = 2**53 - 1
VARIATIONS_MAX = 16  # images in one Variations request (presets x seeds)
# Each request's files (one folder each), in this user's private folder; removed once older than APP_KEEP_S seconds,
# as is Gradio's own cache
APP_DIR = Path(tempfile.gettempdir()) / f"depth2img-app-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
APP_KEEP_S = 3600
# ... and, oldest first, while they hold more than APP_MAX_BYTES: one 7000x5000 upload of 114 KB (one colour) made
# ~160 MB of outputs and zip, so age alone let a visitor repeating it fill the disk within the hour. A folder younger
# than APP_BUSY_S may be one a request is still writing, and is kept (what a handler returned is Gradio's copy)
APP_MAX_BYTES = 2 * 1024**3
APP_BUSY_S = 120
_APP_DIR_LOCK = threading.Lock()
# the pages made (create_demo), whose files in Gradio's cache _workdir caps by size as well
_PAGES: weakref.WeakSet = weakref.WeakSet()


def _as_uploaded(text: str) -> str:
    """``text`` with each upload's server path (gradio's cache: ``/tmp/gradio/<hash>/depth.npy``) as the visitor's own
    file name."""
    import re

    from gradio.utils import get_upload_folder

    return re.sub(re.escape(str(get_upload_folder())) + r"/[0-9a-f]+/", "", text)


class StopFlag:
    """A page session's Stop button: it sets the event of the session's latest run, which that run reads at the end
    of each denoising step (``transformer.stop_when_set``). Each run has an event of its own: with one shared event,
    cleared as a run started, a Generate pressed right after Stop (gradio frees the queue's slot at once, while the
    stopped run still ends its step) cleared it, and the stopped run went on to its end. Gradio's State deep-copies
    its value once per session and hands that copy to each event; this one is handed as itself."""

    def __init__(self):
        self._lock = threading.Lock()
        self._latest: threading.Event | None = None

    def __deepcopy__(self, memo):
        return self

    def start(self, undelivered=None) -> threading.Event:
        """A new run's event (a Stop pressed before it, while nothing ran, stops nothing); ``undelivered()`` (if
        given) true reads as set too."""
        with self._lock:
            self._latest = _RunStop(undelivered or (lambda: False))
            return self._latest

    def stop(self) -> None:
        with self._lock:
            if self._latest is not None:
                self._latest.set()


class _RunStop(threading.Event):
    """One run's stop: set by the Stop button, or read as set once ``undelivered()`` is true."""

    def __init__(self, undelivered):
        super().__init__()
        self._undelivered = undelivered

    def is_set(self) -> bool:
        return super().is_set() or self._undelivered()


def _undelivered():
    """For the gradio event this thread runs: a callable, true once gradio will hand its result to no one, so that it
    stops at its next denoising step as Stop does. A client's cancel alone (gradio_client's ``Job.cancel()``) or a
    closed tab let the run go on to its last step, holding the device, and write a request folder nobody received;
    only Stop and then cancel stopped it. Read from gradio's queue: a cancelled run's event is dropped from
    ``event_ids_to_events`` (its task ended; it stays there while a run goes on), and the events of a client whose
    result stream closed are marked not ``alive`` (gradio sends them nothing more). Never true where gradio's
    internals are not found as read here (another gradio, no queue): Stop alone stops then, as before."""
    try:
        from gradio.context import LocalContext

        event_id = LocalContext.event_id.get()
        held = LocalContext.blocks.get()._queue.event_ids_to_events
        event = held[event_id]
        if not isinstance(event.alive, bool):
            return lambda: False
    except Exception:
        return lambda: False

    def undelivered() -> bool:
        try:
            return held.get(event_id) is not event or not event.alive
        except Exception:  # (a gradio changed under a running server: as before)
            return False

    return undelivered


def _friendly(fn):
    """Errors reach the page as one friendly line (gr.Error), never as a stack trace; the server's log gets that line
    for a visitor's mistake, and the cause's traceback for an internal error."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import gradio as gr

        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Depth2ImgError as err:
            raise _visitors_error(_as_uploaded(str(err))) from None
        except Exception as err:  # an unexpected failure still gets one line
            traceback.print_exc()  # (gradio's own would show only the gr.Error raised here)
            raise gr.Error(f"internal error: {type(err).__name__}: {err}", print_exception=False) from None

    return wrapper


def _visitors_error(text: str):
    """A visitor's mistake as a gr.Error, said in one line in the server's log too: gradio printed a 30-line traceback
    for each (53 in one session), in which the internal errors went unseen."""
    import gradio as gr

    sys.stderr.write(f"depth2img app: {text}\n")
    return gr.Error(text, print_exception=False)


def _workdir() -> Path:
    """A new folder for one request's files under ``APP_DIR``. Gradio copies what a handler returns into its own
    cache, so folders older than ``APP_KEEP_S`` are removed here: a long-running demo does not fill the disk."""
    import shutil
    import stat
    import time

    global APP_DIR
    with _APP_DIR_LOCK:  # requests run concurrently: one of them replaces APP_DIR, once
        try:
            APP_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = APP_DIR.lstat()
            ours = stat.S_ISDIR(info.st_mode) and (not hasattr(os, "getuid") or info.st_uid == os.getuid())
        except OSError:  # a file or a dangling link of that name
            ours = False
        if not ours:
            # a link, a file, or another user's folder (a shared /tmp): not ours to write into or clean
            APP_DIR = Path(tempfile.mkdtemp(prefix="depth2img-app-"))
        app_dir = APP_DIR
    now = time.time()
    folders = []  # (mtime, bytes, path) of each request folder (never a link) kept by age
    for old in app_dir.iterdir():
        try:
            info = old.lstat()
            if not stat.S_ISDIR(info.st_mode):
                continue
            if info.st_mtime < now - APP_KEEP_S:
                shutil.rmtree(old, ignore_errors=True)
            else:
                folders.append((info.st_mtime, _bytes_in(old), old))
        except OSError:  # removed by a concurrent request
            pass
    _drop_oldest(folders, now, lambda old: shutil.rmtree(old, ignore_errors=True))
    for page in list(_PAGES):
        _cap_gradio_cache(page, now)
    return Path(tempfile.mkdtemp(prefix="request-", dir=app_dir))


def _cap_gradio_cache(page, now: float) -> None:
    """Gradio's copies of the files ``page`` received and returned (the sets its ``delete_cache`` empties by age
    alone, a visitor's uploads among them), oldest first, while they hold more than APP_MAX_BYTES: a visitor
    repeating huge uploads filled the disk within the hour. Files younger than APP_BUSY_S, and those a component keeps
    (examples), stay; ages are Gradio's own (ctime, which it refreshes when it hands a cached file out again)."""
    keep = set()
    for component in list(page.blocks.values()):
        keep.update(getattr(component, "keep_in_cache", ()))
    # path -> (ctime, bytes); path -> the sets that hold it (a result shown twice: two)
    files, holders = {}, {}
    for held in list(getattr(page, "temp_file_sets", ())):
        for path in list(held):
            try:
                info = os.lstat(path)
            except OSError:  # removed already
                held.discard(path)
                continue
            if path not in keep:
                files[path] = (info.st_ctime, info.st_size)
                holders.setdefault(path, []).append(held)

    def drop(path):
        with contextlib.suppress(OSError):
            os.remove(path)
        for held in holders[path]:
            held.discard(path)

    _drop_oldest([(ctime, size, path) for path, (ctime, size) in files.items()], now, drop)


def _drop_oldest(entries, now: float, remove) -> None:
    """``remove(item)`` for ``entries`` (time, bytes, item), oldest first, while they hold more than APP_MAX_BYTES;
    none younger than APP_BUSY_S (one a request may still be writing). Serves the request folders and Gradio's copies."""
    total = sum(size for _, size, _ in entries)
    for when, size, item in sorted(entries, key=lambda entry: entry[:2]):
        if total <= APP_MAX_BYTES or when >= now - APP_BUSY_S:
            break
        remove(item)
        total -= size


def _bytes_in(folder: Path) -> int:
    """The bytes of the files in a request folder (and its subfolders), links not followed."""
    total = 0
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            total += _bytes_in(Path(entry.path))
        elif entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_size
    return total


def _file_path(f) -> str | None:
    if f is None:
        return None
    return f if isinstance(f, str) else getattr(f, "name", None) or getattr(f, "path", None)


def _named_input(component, name: str):
    """``component`` (a slider, a choice or the depth file) whose refusals name ``name``, in one line in the server's
    log too: over the HTTP API, strength=5 was told "Value 5 is greater than maximum value 1.0.", estimator="nope"
    "Value: nope is not in the list of choices: [...]" and a depth file notes.txt "Invalid file type. ...", each
    naming no input, with gradio's 28-line traceback in the log; and a null an opaque error (gradio's Slider compared
    None with its minimum, a TypeError). A null now reaches the handler, which names it or takes the default. On the
    instance, as ``_readable_upload``. A slider's value that is no number (steps="abc") reaches the handler too, which
    names it as it names a null ("steps must be a number, got 'abc'"): gradio's Slider compared it with its minimum,
    "steps: '<' not supported between instances of 'str' and 'int'"."""
    import gradio as gr

    gradio_preprocess = component.preprocess
    numeric = isinstance(component, (gr.Slider, gr.Number))

    def preprocess(payload):
        if payload is None:
            return None
        if numeric and (isinstance(payload, bool) or not isinstance(payload, (int, float))):
            return payload
        try:
            return gradio_preprocess(payload)
        except Exception as err:
            said = getattr(err, "message", None) or first_line(err)
            upload = getattr(payload, "orig_name", None) or Path(getattr(payload, "path", None) or "").name
            if upload:  # (gradio's refusal of a file type names no file)
                said = f"{upload}: {said}"
            raise _visitors_error(f"{name}: {said}") from None

    component.preprocess = preprocess
    return component


def _named_file_inputs(demo, names: dict) -> None:
    """``demo``'s file inputs (``names``: component -> the name the HTTP API gives it) refused in one line naming the
    input when a client sends no file: a path as a plain string (gradio_client without ``handle_file``), a number, or
    a file's record with no path got "The upstream Gradio app has raised an exception" and, in the server's log, a
    19-line traceback ending in pydantic's "1 validation error for FileData". Gradio checks the payload (its
    data_model) in ``Blocks.preprocess_data``, before the component's preprocess (``_named_input``); that step is
    wrapped here, on this page alone. A gradio without it (another version) keeps its own error."""
    import reprlib

    import pydantic

    given = getattr(demo, "preprocess_data", None)
    if not inspect.iscoroutinefunction(given):
        return
    by_id = {component._id: name for component, name in names.items()}
    short = reprlib.Repr()
    short.maxstring = short.maxother = 80

    def no_file(block, value) -> bool:
        model = getattr(block, "data_model", None)
        if value is None or model is None:
            return False
        try:
            model.model_validate(value, context={"validate_meta": True})
        except pydantic.ValidationError:
            return True
        return False

    @functools.wraps(given)
    async def preprocess_data(block_fn, inputs, *args, **kwargs):
        try:
            return await given(block_fn, inputs, *args, **kwargs)
        except pydantic.ValidationError:
            for block, value in zip(block_fn.inputs, inputs):
                if block._id in by_id and no_file(block, value):
                    raise _visitors_error(f"{by_id[block._id]}: give a file (gradio_client.handle_file(path)), "
                                          f"got {short.repr(value)}") from None  # fmt: skip
            raise

    demo.preprocess_data = preprocess_data


def _readable_upload(image):
    """``image`` (a gr.Image of file paths), naming an unreadable upload in one line as ``load_image`` does, where
    gradio itself opened it first and the page showed a bare "Error". On the instance: a subclass of a gradio
    component makes gradio write a .pyi file beside this module."""

    from .io import load_image, pixel_guard

    gradio_preprocess = image.preprocess

    def preprocess(payload):
        try:
            # gradio opens the upload (its header: type="filepath", image_mode=None); Pillow's two-line warning over
            # 89.5 MP came in the server's log before the refusal's own line (load_image's limit)
            with pixel_guard():
                return gradio_preprocess(payload)
        except Exception as err:
            path = getattr(payload, "path", None)
            name = getattr(payload, "orig_name", None) or "the photo"
            if not path:
                raise _visitors_error(f"{name}: not a readable image ({first_line(err)})") from None
            try:  # why, in our reader's words; or read (a size over Pillow's guard that DEPTH2IMG_MAX_PIXELS allows)
                load_image(path)
            except Depth2ImgError as ours:
                raise _visitors_error(_as_uploaded(str(ours))) from None
            return str(path)

    image.preprocess = preprocess
    return image


def _stem(image_path) -> str:
    """The upload's name as an output stem, a long one cut (a 180-character name with presets and a large seed made
    "File name too long")."""
    from .outputs import shortened

    return shortened(Path(image_path).stem)


def _combined(service, ticked) -> str | None:
    """The ticked presets joined in the order the page lists them: in the order they were clicked, the same boxes
    gave another prompt, knobs and file name (templates apply left to right), and the page does not show that
    order."""
    if not ticked:
        return None
    from .presets import load_presets

    listed = list(service.presets or load_presets(service.preset_files))
    return "+".join(sorted(ticked, key=lambda n: listed.index(n) if n in listed else len(listed)))


def _viewable(image_path, image, out: Path) -> str:
    """The photo for the before/after slider: the upload where a browser shows it as the model saw it, else a PNG of
    what was loaded (a TIFF showed as a broken image; an RGBA one as transparent where the model saw white)."""
    with open_image(image_path) as raw:
        shown = raw.format in ("PNG", "JPEG", "WEBP") and raw.mode == "RGB" and raw.size == image.size
        shown = shown and raw.getexif().get(0x0112, 1) == 1  # no EXIF turn
    if shown:
        return str(image_path)
    path = out / f"{_stem(image_path)}_before.png"
    image.save(path, compress_level=1)
    return str(path)


def _image(path):
    from .errors import InputError
    from .io import load_image

    if not path:
        raise InputError("upload a photo first (or pick the driving-scene sample)")
    return load_image(path)


# ------------------------------------------------------------------------------------------------ handlers
# Each takes the service first; create_demo binds it. Tests call them directly.


def make_sample(width: int = SCENE_SIZE[0], height: int = SCENE_SIZE[1], seed: int = 0) -> tuple[str, str]:
    """The procedural driving scene: its photo and its exact metric depth (.npz that records its polarity)."""
    import numpy as np

    from .scene import render_driving_scene

    scene = render_driving_scene(width, height, seed=seed)
    out = _workdir()
    scene.image.save(out / "driving_scene.png")
    np.savez(
        out / "driving_scene_depth.npz",
        depth=np.where(scene.depth.valid, scene.depth.values, 0),
        kind="metric",
    )
    return str(out / "driving_scene.png"), str(out / "driving_scene_depth.npz")


def depth_file_given(has_photo, depth_file):
    """The depth file paired with a photo: this one where a photo is there; None where it came before any (it is
    then for the next photo)."""
    return depth_file if has_photo else None


def depth_file_for_new_photo(depth_file, polarity, paired):
    """(depth file, polarity, paired) on a new photo, ``paired`` being the depth file that went with the last one.
    That one is dropped with its polarity (the sample's street depth was used for the next photo); one given since,
    before this photo, is for this one and stays (it was dropped too). Keyed by the file, not by an event's order: a
    photo dropped in right after a depth file came before the event that paired it. Not the photo itself as an
    input: an unreadable one raised here, in an event with no notice on the page, and the preview's error line
    never came."""
    import gradio as gr

    if depth_file and depth_file != paired:
        return gr.skip(), gr.skip(), depth_file
    return None, "", None


def handle_depth_if_photo(service, image_path, estimator, depth_file, polarity, progress=None):
    """``handle_depth`` once a photo is there; nothing (an empty preview) before."""
    if not image_path:
        return None, None
    return handle_depth(service, image_path, estimator, depth_file, polarity, progress)


def handle_depth(service, image_path, estimator, depth_file, polarity, progress=None):
    """Depth preview (colour-mapped) and the 16-bit depth PNG, both at the photo's size."""
    import gradio as gr

    from .io import write_depth_products

    image = _image(image_path)
    depth = service.depth(image, estimator=estimator, depth_file=_file_path(depth_file), polarity=polarity or None,
                          progress=progress)  # fmt: skip
    for note in depth.notes:  # a depth file's recorded polarity kept over the one picked
        gr.Warning(_as_uploaded(note))
    out = _workdir()
    png16, preview = write_depth_products(depth, out, _stem(image_path), ("png16", "preview"))
    return str(preview), str(png16)


def _number(value, name: str, kind=float):
    """A slider's value as ``kind``; one line naming the slider for anything else (an API client's null)."""
    from .errors import InputError

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number, got {value!r}")
    if kind is int and not float(value).is_integer():
        raise InputError(f"{name} must be a whole number, got {value!r}")
    return kind(value)


def _knobs(
    steps,
    strength,
    guidance,
    control_scale=None,
    control_start=None,
    control_end=None,
    scheduler=None,
    exact=False,
):
    """The knobs to send: only sliders moved off their defaults, so that a slider left alone lets the preset, the
    backbone (Flux: guidance 10) or a few-step LoRA (LCM: 4 steps, guidance 1) choose, and backbones without
    control knobs (sd2, flux) still run. ``exact`` (the page's "use every slider as set"): all of them, so a
    slider at its default can be asked for too (30 steps with LCM, guidance 7.5 on Flux)."""
    from .errors import InputError
    from .knobs import DEFAULT_KNOBS

    sliders = {"steps": (steps, int), "strength": (strength, float), "guidance_scale": (guidance, float),
               "control_scale": (control_scale, float), "control_start": (control_start, float),
               "control_end": (control_end, float)}  # fmt: skip
    if not isinstance(exact, bool):
        raise InputError(f"exact must be true or false, got {exact!r}")
    knobs = {"scheduler": scheduler or None}
    for name, (value, kind) in sliders.items():
        if value is None and name.startswith("control"):
            continue  # the variations tab has no control sliders
        value = _number(value, name, kind)
        if exact or value != DEFAULT_KNOBS[name]:
            knobs[name] = value
    return knobs


def _seed(seed, what: str = "seed") -> int:
    """A seed as the page takes it: 0..MAX_SEED, what the Generate tab's field holds exactly (a variation made with a
    larger one could not be made again there). Checked here, not by the field's bounds, whose gradio messages named
    no seed ("Value -1 is less than minimum value 0.")."""
    from .errors import InputError

    given = seed  # as the field sent it (1e30 was shown as 1000000000000000019884624838656)
    if isinstance(seed, float) and seed.is_integer():
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"{what} must be a whole number in 0..{MAX_SEED}, got "
                         f"{'an empty field' if seed is None else repr(seed)}")  # fmt: skip
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"{what} must be in 0..{MAX_SEED} here (what the Generate tab's seed field holds exactly), "
                         f"got {given!r}")  # fmt: skip
    return seed


def _zip(folder: Path, path: Path) -> str:
    """``folder``'s files in a zip, stored: PNGs are compressed already (deflating a 3.9 MB result again took
    ~75 ms and left it at 3.92 MB)."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder))
    return str(path)


def _show_warnings(results) -> None:
    """Each result's warning lines (a truncated prompt, an unused negative prompt) as a notice on the page; they
    were only in the metadata, inside a closed panel."""
    import gradio as gr

    for note in dict.fromkeys(n for r in results for n in r.warnings):
        gr.Warning(_as_uploaded(note))


def _public(name: str) -> str:
    """A model as a public page names it: a folder by its name, not the server's path."""
    return Path(name).name if isinstance(name, str) and os.path.isdir(name) else name


def _name_uploads(result) -> None:
    """An uploaded depth file is recorded by the visitor's file name, and the models served from folders by their
    names (the metadata panel and the files' metadata showed the server's paths)."""
    for meta in result.metadata:
        depth, backbone = meta.get("depth", {}), meta.get("backbone", {})
        if isinstance(depth.get("source"), str):
            depth["source"] = _as_uploaded(depth["source"])
        for part, key in ((depth, "id"), (depth, "source"), (backbone, "name"), (backbone, "id"),
                          (backbone, "controlnet"), (backbone, "lora"), (backbone, "speed_lora")):  # fmt: skip
            if key in part:
                part[key] = _public(part[key])


def handle_generate(service, image_path, model, estimator, depth_file, polarity, prompt, presets, negative, steps,
                    strength, guidance, control_scale, control_start, control_end, scheduler, seed, num_images,
                    exact=False, progress=None):  # fmt: skip
    """Transform the photo; returns gallery items, a before/after pair, a zip of everything, and the metadata."""
    from .outputs import CPU_THREADS, write_transform_result

    image = _image(image_path)
    result = service.transform(
        image, model=model, estimator=estimator, depth_file=_file_path(depth_file), polarity=polarity or None,
        progress=progress, prompt=prompt or None, preset=_combined(service, presets),
        negative_prompt=negative or None, seed=_seed(seed), num_images=_number(num_images, "num_images", int),
        **_knobs(steps, strength, guidance, control_scale, control_start, control_end, scheduler, exact),
    )  # fmt: skip
    _name_uploads(result)
    _show_warnings([result])
    out = _workdir()
    stem = _stem(image_path)
    records = write_transform_result(result, out / "results", stem, source=Path(image_path).name,
                                     threads=CPU_THREADS)  # fmt: skip
    archive = _zip(out / "results", out / f"{stem}_depth2img.zip")
    paths = [str(out / "results" / r["output"]) for r in records]
    gallery = [(p, f"seed {r['seed']}") for p, r in zip(paths, records)]
    return gallery, (_viewable(image_path, image, out), paths[0]), archive, records


def handle_variations(service, image_path, model, estimator, depth_file, polarity, prompt, presets, seeds_text,
                      steps, strength, guidance, exact=False, negative="", control_scale=None, control_start=None,
                      control_end=None, scheduler="", progress=None):  # fmt: skip
    """Presets x seeds from one depth (at most ``VARIATIONS_MAX`` images): a grid in the gallery, captioned
    'preset / seed', and a zip of the images, depth files and manifest. The negative prompt, control sliders and
    scheduler are the Generate tab's."""
    from .errors import InputError
    from .outputs import CPU_THREADS, write_transform_result

    image = _image(image_path)
    try:
        seeds = [int(s) for s in str(seeds_text).replace(",", " ").split()]
    except ValueError:
        raise InputError(f"seeds must be integers separated by commas, got {seeds_text!r}") from None
    if not seeds:
        raise InputError("give at least one seed")
    seeds = [_seed(s, "seeds") for s in seeds]
    if not presets and not (prompt or "").strip():
        raise InputError("choose at least one preset (or give a prompt)")
    count = len(presets or [None]) * len(seeds)
    if count > VARIATIONS_MAX:  # one request holds the device's single queue slot
        raise InputError(f"variations: {count} images ({len(presets or [None])} row(s) x {len(seeds)} seed(s)) is more "
                         f"than {VARIATIONS_MAX} per request; choose fewer presets or seeds")  # fmt: skip
    rows = service.variations(
        image, presets=list(presets or []) or None, seeds=seeds, model=model, estimator=estimator,
        depth_file=_file_path(depth_file), polarity=polarity or None, prompt=prompt or None, progress=progress,
        negative_prompt=negative or None,
        **_knobs(steps, strength, guidance, control_scale, control_start, control_end, scheduler, exact=exact),
    )  # fmt: skip
    for row in rows:
        _name_uploads(row)
    _show_warnings(rows)
    out = _workdir()
    gallery = []
    for i, row in enumerate(rows):  # one depth for all rows: write its products once
        records = write_transform_result(row, out / "results", _stem(image_path), source=Path(image_path).name,
                                         depth_formats=("png16", "preview") if i == 0 else (),
                                         threads=CPU_THREADS)  # fmt: skip
        gallery += [
            (str(out / "results" / r["output"]), f"{r['preset'] or 'prompt'} / seed {r['seed']}")
            for r in records
        ]
    # everything, as the Generate tab offers it (the page gave the images one at a time, and no depth or metadata)
    return gallery, _zip(out / "results", out / f"{_stem(image_path)}_variations.zip")


# ------------------------------------------------------------------------------------------------ page


def _backbone_choices(tiny: bool = False):
    """The registry's backbones; ``tiny`` (a page serving a tiny model, offline): their tiny builds instead."""
    from .registry import backbones

    if tiny:
        return [(f"tiny/{n} (random weights)", f"tiny/{n}") for n, e in backbones().items() if e.tiny]
    return [
        (f"{n} — {e.licence}{'' if e.commercial else ' (non-commercial)'}", n) for n, e in backbones().items()
    ]


def _licence_text(name: str) -> str:
    from .registry import resolve_backbone

    try:
        e = resolve_backbone(name).entry
    except Depth2ImgError:
        e = None
    if e is None:
        return f"**{_public(name)}**: licence not in the registry; check the model card."
    use = "commercial use allowed" if e.commercial else "**non-commercial only**"
    gated = "; gated: accept the licence on huggingface.co first" if e.gated else ""
    return f"**{e.name}** (`{e.id}`): licence `{e.licence}`, {use}{gated}."


def _takes(model: str) -> tuple[bool, tuple[str, ...]]:
    """Whether backbone ``model`` takes a negative prompt, and its control knobs; (True, all of them) where that is
    not known before it loads (a hub id not in the local cache: the run says what it refuses)."""
    from .backends import known_traits
    from .knobs import CONTROL_KNOBS
    from .registry import resolve_backbone

    try:
        traits = known_traits(resolve_backbone(model))
    except Depth2ImgError:
        traits = None
    return (True, CONTROL_KNOBS) if traits is None else (traits.takes_negative_prompt, traits.control_knobs)


def backbone_controls(model):
    """The negative prompt and the control sliders, shown where backbone ``model`` takes them and hidden elsewhere
    (sd2-depth has no control knobs, Flux no negative prompt): hidden at their defaults, since a value moved for the
    last backbone, out of sight, would be refused by this one."""
    import gradio as gr

    from .knobs import CONTROL_KNOBS, DEFAULT_KNOBS

    negative, knobs = _takes(model)
    return (
        gr.update(visible=True) if negative else gr.update(visible=False, value=""),
        *(gr.update(visible=True) if k in knobs else gr.update(visible=False, value=DEFAULT_KNOBS[k])
          for k in CONTROL_KNOBS),
    )  # fmt: skip


def create_demo(service):
    """The page, bound to ``service``. Nothing here loads a model."""
    import gradio as gr

    from .backends import SCHEDULERS
    from .knobs import DEFAULT_KNOBS
    from .presets import load_presets
    from .registry import estimators, is_tiny

    presets = load_presets(service.preset_files)
    if service.presets is None:  # the page's list is what runs (and the order ticked presets combine in)
        service.presets = presets

    def bound(fn, stoppable=False):
        """``fn(service, *inputs, progress=say)`` as an event's function. A stoppable event's last input is the
        session's StopFlag."""

        @_friendly
        def run(*args):
            from .transformer import stop_when_set

            *args, progress = args  # (gradio's, for this call: see the signature below)
            guard = contextlib.nullcontext()
            if stoppable:
                *args, flag = args
                guard = stop_when_set(flag.start(_undelivered()))
            with guard:
                return fn(service, *args, progress=lambda msg: progress(0, desc=msg))

        # Gradio reads this signature: a positional parameter whose default is a Progress gets a tracker of its own
        # for each call, and our tqdm bars (denoise) show on the page. Behind *args it found none: the page showed
        # the loading lines only, and every call shared the default Progress.
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        params = [p.replace(kind=kind) for p in list(inspect.signature(fn).parameters.values())[1:]
                  if p.name != "progress"]  # fmt: skip
        if stoppable:
            params.append(inspect.Parameter("stop", kind, default=None))
        params.append(inspect.Parameter("progress", kind, default=gr.Progress(track_tqdm=True)))
        run.__signature__ = inspect.Signature(params)
        run.__name__ = fn.__name__
        return run

    # a model served from a folder has the value '' (the service's default) on the page: gradio publishes the values
    # (the page's config, its API page), and the server's paths were there
    model_value = "" if os.path.isdir(service.default_model) else service.default_model
    est_value = "" if os.path.isdir(service.default_estimator) else service.default_estimator
    model_choices = _backbone_choices(tiny=is_tiny(service.default_model))
    if service.default_model not in [v for _, v in model_choices]:
        model_choices.insert(0, (f"{_public(service.default_model)} (configured)", model_value))
    # (a folder by its name: not the server's paths on a public page)
    served = [f"{what} {_public(name)}" for what, name in (("LoRA", service.lora), ("ControlNet", service.controlnet))
              if name]  # fmt: skip
    if served:  # (made for the configured backbone: the service loads any other with them too)
        model_choices = [(f"{_public(service.default_model)} + {' + '.join(served)}", model_value)]
    # (label, name): a non-commercial estimator is marked, as a backbone is
    est_choices = [(f"{n}{'' if e.commercial else ' (non-commercial)'}", n) for n, e in estimators().items()]
    if is_tiny(service.default_estimator):  # offline: the estimators' tiny builds
        est_choices = [(f"tiny/{n}", f"tiny/{n}") for n, e in estimators().items() if e.tiny]
    if service.default_estimator not in [v for _, v in est_choices]:
        est_choices.insert(0, (_public(service.default_estimator), est_value))

    # Gradio's cache (uploads, and the copies of what handlers return) is emptied of files older than APP_KEEP_S (and
    # capped by size in _workdir)
    with gr.Blocks(title="depth2img", delete_cache=(APP_KEEP_S, APP_KEEP_S)) as demo:
        gr.Markdown("# depth2img\nChange a photo's style, lighting, season or weather by prompt; its depth keeps the "
                    "geometry, and the output has the photo's exact size.")  # fmt: skip
        with gr.Row():
            with gr.Column():
                # image_mode None: the upload's own file, as load_image reads it (gradio's default "RGB" converted it
                # first: transparent areas came out black, not white, and a 16-bit grey photo almost all white)
                image = _readable_upload(
                    gr.Image(type="filepath", image_mode=None, label="Photo", elem_id="photo")
                )
                sample = gr.Button("Use the driving-scene sample (with exact depth)", size="sm")
                with gr.Accordion("Depth", open=False):
                    estimator = _named_input(
                        gr.Dropdown(est_choices, value=est_value, label="Depth estimator"), "estimator"
                    )
                    depth_file = _named_input(
                        gr.File(label="…or your own depth file (16-bit PNG, .npy, .npz, float TIFF)",
                                file_types=list(DEPTH_SUFFIXES), type="filepath", elem_id="depth-file"),
                        "depth_file",
                    )  # fmt: skip
                    polarity = _named_input(
                        gr.Radio(["", "near-bright", "far-bright", "metric"], value="",
                                 label="Depth file polarity (leave empty if the file records it)"),
                        "polarity",
                    )  # fmt: skip
                    depth_btn = gr.Button("Preview depth", size="sm")
                depth_preview = gr.Image(
                    label="Depth (near = bright)", interactive=False, elem_id="depth-preview"
                )
                depth16 = gr.File(label="16-bit depth PNG", interactive=False)
            with gr.Column():
                model = _named_input(gr.Dropdown(model_choices, value=model_value, label="Backbone"), "model")
                licence = gr.Markdown(_licence_text(service.default_model))
                prompt = gr.Textbox(label="Prompt", placeholder="a city street", elem_id="prompt")
                preset_box = _named_input(
                    gr.CheckboxGroup(list(presets), label="Presets (combine several)", elem_id="presets"),
                    "presets",
                )
                takes_negative, control_knobs = _takes(service.default_model)
                negative = gr.Textbox(label="Negative prompt", visible=takes_negative)
                with gr.Accordion("Advanced", open=False):
                    steps = _named_input(
                        gr.Slider(1, 100, value=DEFAULT_KNOBS["steps"], step=1, label="Steps"), "steps"
                    )
                    strength = _named_input(gr.Slider(0.05, 1.0, value=DEFAULT_KNOBS["strength"], step=0.05,
                                                      label="Strength (1 = from depth alone; SD2: nearly)"),
                                            "strength")  # fmt: skip
                    guidance = _named_input(
                        gr.Slider(
                            0.0, 20.0, value=DEFAULT_KNOBS["guidance_scale"], step=0.5, label="Guidance"
                        ),
                        "guidance",
                    )
                    control_scale, control_start, control_end = (
                        _named_input(gr.Slider(0.0, top, value=DEFAULT_KNOBS[k], step=0.05, label=label,
                                               visible=k in control_knobs), k)
                        for k, top, label in (("control_scale", 2.0, "Control scale"),
                                              ("control_start", 1.0, "Control start"),
                                              ("control_end", 1.0, "Control end"))
                    )  # fmt: skip
                    scheduler = _named_input(
                        gr.Dropdown(
                            [""] + list(SCHEDULERS), value="", label="Scheduler (empty = model default)"
                        ),
                        "scheduler",
                    )
                    exact = gr.Checkbox(
                        False,
                        label="Use every slider as set (off: a slider left at its default lets the preset, "
                        "the backbone or a few-step LoRA choose)",
                        elem_id="exact",
                    )
                    with gr.Row():
                        # (no precision: gradio rounded 2.5 to seed 2, silently; _seed checks it)
                        seed = gr.Number(value=0, label="Seed")
                        randomize = gr.Button("🎲", size="sm", scale=0)
                    num_images = _named_input(gr.Slider(1, 8, value=1, step=1, label="Images"), "num_images")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate", scale=3)
                    stop = gr.Button("Stop", variant="stop", elem_id="stop", scale=1)
        with gr.Tab("Results"):
            gallery = gr.Gallery(label="Results", columns=2, format="png", elem_id="gallery")
            compare = gr.ImageSlider(label="Before / after", type="filepath", format="png")
            archive = gr.File(label="Download images + depth + metadata (zip)")
            metadata = gr.JSON(label="Metadata")
        with gr.Tab("Variations"):
            var_seeds = gr.Textbox(value="1, 2", label="Seeds (comma-separated)")
            var_button = gr.Button("Generate variations (checked presets x seeds)", variant="secondary")
            var_gallery = gr.Gallery(label="Variations", columns=4, format="png", elem_id="variations")
            var_archive = gr.File(label="Download variations + depth + metadata (zip)")

        depth_inputs, preview = [image, estimator, depth_file, polarity], [depth_preview, depth16]
        device = dict(concurrency_id="device", concurrency_limit=1)  # one job at a time on the device
        # the preview follows what Generate will use: the sample, another depth file, estimator or polarity
        # the depth file paired with the photo, so that a new photo keeps only a depth file given for it; and whether
        # a photo is there, kept on the server: the page's own photo value, sent with the depth file's event, could
        # already be a photo dropped in right after it, which paired the file with that photo, and its own event
        # then dropped it (seen in CI, once in four runs)
        paired_depth, has_photo = gr.State(None), gr.State(False)
        stop_flag = gr.State(StopFlag)  # (called once per session)
        # the sample's depth file is paired as the page holds it: gradio serves a copy of the file the sample wrote
        # (its own cache's path), and a pairing by the written path never matched, so the street's depth stayed for
        # the next photo
        # a depth that is refused (a depth file of another shape, one with no polarity) clears the preview: the last
        # one stayed, with its 16-bit PNG to download, for a depth Generate would refuse
        sample.click(
            lambda: (*make_sample(), True), None, [image, depth_file, has_photo], api_name="sample"
        ).then(lambda held: held, depth_file, paired_depth, api_name="sample_depth_paired", queue=False).then(
            bound(handle_depth_if_photo), depth_inputs, preview, api_name="depth_on_sample", **device
        ).failure(lambda: (None, None), None, preview, api_name="depth_on_sample_refused", queue=False)
        for event, name in ((depth_file.upload, "depth_on_depth_file"), (depth_file.clear, "depth_on_no_depth_file"),
                            (estimator.input, "depth_on_estimator"), (polarity.input, "depth_on_polarity")):  # fmt: skip
            event(bound(handle_depth_if_photo), depth_inputs, preview, api_name=name, **device).failure(
                lambda: (None, None), None, preview, api_name=f"{name}_refused", queue=False
            )
        depth_file.upload(
            depth_file_given, [has_photo, depth_file], paired_depth, api_name="depth_file_photo", queue=False
        )
        image.clear(lambda: (None, None), None, preview, api_name="no_photo", queue=False)
        image.clear(lambda: False, None, has_photo, api_name="photo_gone", queue=False)
        model.change(lambda m: _licence_text(m or service.default_model), model, licence, api_name="licence")
        model.change(lambda m: backbone_controls(m or service.default_model), model,
                     [negative, control_scale, control_start, control_end], api_name="backbone_controls",
                     queue=False)  # fmt: skip
        randomize.click(lambda: secrets.randbelow(MAX_SEED), None, seed, api_name="random_seed")
        image.upload(
            lambda *now: (*depth_file_for_new_photo(*now), True),
            [depth_file, polarity, paired_depth],
            [depth_file, polarity, paired_depth, has_photo],
            api_name="new_photo",
            queue=False,
        ).then(bound(handle_depth), depth_inputs, preview, api_name="depth_on_upload", **device)
        depth_btn.click(bound(handle_depth), depth_inputs, preview, api_name="depth", **device)
        generating = generate.click(
            bound(handle_generate, stoppable=True),
            [image, model, estimator, depth_file, polarity, prompt, preset_box, negative, steps, strength, guidance,
             control_scale, control_start, control_end, scheduler, seed, num_images, exact, stop_flag],
            [gallery, compare, archive, metadata], api_name="transform", **device,
        )  # fmt: skip
        varying = var_button.click(
            bound(handle_variations, stoppable=True),
            [image, model, estimator, depth_file, polarity, prompt, preset_box, var_seeds, steps, strength, guidance,
             exact, negative, control_scale, control_start, control_end, scheduler, stop_flag],
            [var_gallery, var_archive], api_name="variations", **device,
        )  # fmt: skip
        # Stop: a waiting request leaves the queue; a running one ends at the end of its denoising step (the page
        # stops waiting for it at once: gradio cancels the event and frees the queue's slot; the service's lock
        # keeps the next request off the device until the stopped run has ended)
        stop.click(
            StopFlag.stop, stop_flag, None, api_name="stop", queue=False, cancels=[generating, varying]
        )
    _named_file_inputs(demo, {image: "image_path", depth_file: "depth_file"})
    _PAGES.add(demo)
    return demo


def check_serving(port, auth: str | None, *, port_name: str = "--port") -> tuple[str, str] | None:
    """The port checked and ``auth`` (USER:PASSWORD) as credentials: before a model loads or warms up.
    ``port_name``: the port's setting as its user gives it."""
    from .errors import InputError

    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InputError(f"{port_name} must be in 1..65535, got {port!r}")
    if not auth:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise InputError(f"--auth must be USER:PASSWORD, got {auth!r}")
    return user, password


def launch(service, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False, auth: str | None = None,
           max_upload_mb: int = 20, queue_size: int = 32, block: bool = True):  # fmt: skip
    """Serve the app: loopback by default, optional basic auth, upload limit, bounded queue."""
    from .errors import InputError

    credentials = check_serving(port, auth)
    demo = create_demo(service)
    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    try:
        # quiet: gradio's own lines end with a hint to set share=True in launch(), which is --share here
        demo.launch(server_name=host, server_port=port, share=share, auth=credentials,
                    max_file_size=f"{max_upload_mb}mb", prevent_thread_lock=True, quiet=True,
                    show_error=False)  # fmt: skip
    except OSError as err:  # the port is taken, or the host is not an address of this machine
        raise InputError(f"cannot serve on {host}:{port} ({first_line(err).split('. ')[0]}); choose another --port "
                         "or --host") from None  # fmt: skip
    if block:
        # (a public --share link is printed by gradio itself)
        print(f"depth2img app: serving on {demo.local_url} (Ctrl+C stops it)", file=sys.stderr, flush=True)
        demo.block_thread()
    return demo


def _env_int(name: str, default: int) -> int:
    from .errors import InputError

    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name} must be an integer, got {value!r}") from None


def settings_from_env() -> dict:
    """App settings from environment variables (Spaces-style), each with a default."""
    return {
        "model": os.environ.get("DEPTH2IMG_MODEL"),
        "estimator": os.environ.get("DEPTH2IMG_ESTIMATOR"),
        "host": os.environ.get("DEPTH2IMG_HOST", "127.0.0.1"),
        "port": _env_int("DEPTH2IMG_PORT", 7860),
        "max_upload_mb": _env_int("DEPTH2IMG_MAX_UPLOAD_MB", 20),
        "queue_size": _env_int("DEPTH2IMG_QUEUE_SIZE", 32),
        "compile": os.environ.get("DEPTH2IMG_COMPILE") or None,
        "lora": os.environ.get("DEPTH2IMG_LORA") or None,
        "controlnet": os.environ.get("DEPTH2IMG_CONTROLNET") or None,
    }


__all__ = ["create_demo", "launch", "handle_depth", "handle_generate", "handle_variations", "make_sample"]
