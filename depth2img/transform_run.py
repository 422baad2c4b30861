"""``run_transform``: transform many inputs and write their outputs (what ``depth2img transform`` calls)."""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from . import presets as presets_mod
from .depth_run import RunReport, _stems, as_paths, check_callback, output_dir_for, read_ahead, refuse_unused
from .errors import Depth2ImgError, Depth2ImgWarning, InputError
from .io import CONTROL_SUFFIX, any_loadable, check_polarity, file_key, load_image, notes_unsaid
from .knobs import DEFAULT_KNOBS, check_batch_size, check_knobs, check_num_images, plain_number, request_seeds
from .outputs import (
    MANIFEST,
    BackgroundWriter,
    append_manifest,
    compact_manifest,
    progress_bar,
    read_manifest,
    status_line,
    write_transform_result,
)


def _load_options(model, estimator, load_options: dict | None, label) -> dict:
    """What ``run_transform`` passes to ``SceneTransformer.from_pretrained`` beside the model and estimator, checked
    before anything loads, its presets read: a key it does not take failed with Python's TypeError once the estimator
    had loaded; given with a loaded model, they and the estimator were ignored without a word."""
    from .transformer import SceneTransformer

    if isinstance(model, SceneTransformer):
        refuse_unused(f"{label('model')} is a loaded SceneTransformer", label, " and ", " (give them to its "
                      "from_pretrained, or give the model's name)", estimator=estimator,
                      load_options=load_options or None)  # fmt: skip
        return {}
    options = dict(load_options or {})
    parameters = inspect.signature(SceneTransformer.from_pretrained).parameters
    takes = [k for k in parameters if k not in ("cls", "name")]
    # (one that takes any keyword, a stand-in's, is not checked)
    any_key = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    for key in options:
        if key == "estimator" or not (any_key or key in takes):
            known = ", ".join(k for k in takes if k != "estimator")
            raise InputError(f"load_options: {key!r} is not an argument it takes ({known})"
                             + (f"; the estimator is {label('estimator')}" if key == "estimator" else ""))  # fmt: skip
    if options.get("presets") is None:
        options["presets"] = presets_mod.load_presets(options.pop("preset_files", ()))
    else:
        presets_mod.check_presets(options["presets"], "load_options['presets']")
    return options


def plan_request(model, ref, lora, controlnet, options: dict, prompt, preset, negative_prompt, given: dict, scheduler,
                 label=str) -> None:  # fmt: skip
    """Each input's knobs planned as ``prepare`` plans them, and what the backbone can take checked, before any model
    loads where its kind is known (a registry entry, a folder at hand, a loaded ``model``): a preset's or LoRA's knob
    that fails with the ones given, a preset's feature cache under ``compile``, a negative prompt, control knob,
    scheduler, LoRA or ControlNet the backbone cannot take. Through the API they failed each input once the models
    had loaded (the CLI checked them itself). ``ref``, ``lora``, ``controlnet``: the resolved names (None with a
    loaded model). Serves ``run_transform`` and ``Service`` before it replaces the backbone it holds."""
    from .backends import (
        check_backbone_knobs,
        check_companions,
        check_memory_options,
        knob_sources,
        known_traits,
        plan_knobs,
    )
    from .knobs import check_compile, check_lora_scale, check_native_size
    from .loading import resolve_device
    from .transformer import SceneTransformer, backbone_knobs

    # the scheduler run where none is given: a loaded model's, or a few-step LoRA's (a backbone's own takes any count)
    if isinstance(model, SceneTransformer):
        traits, name, presets = model.backend.traits, model.name, model.presets
        model_knobs, runs_with = model.model_knobs, scheduler or model.backend.default_scheduler
    else:
        check_lora_scale(options.get("lora_scale", 1.0), lora, label("lora_scale"))
        if options.get("native_size") is not None:
            check_native_size(options["native_size"], label("native_size"))
        traits, name, presets = known_traits(ref), ref.name, options["presets"]
        # (before the knobs: a LoRA of another family was blamed for the steps it sets)
        check_companions(traits, name, lora=lora, controlnet=controlnet is not None, label=label)
        model_knobs = backbone_knobs(traits and traits.kind, lora)
        runs_with = scheduler or (
            lora.entry.scheduler if lora is not None and lora.entry is not None else None
        )
    preset_knobs = presets_mod.resolve(prompt, preset, presets)[2]
    # (a knob given wins over the backbone's or LoRA's, which wins over the preset's)
    sources = [(f"{label('preset')} {preset}", preset_knobs),
               (f"{label('lora')} {options['lora']}" if lora is not None else None, model_knobs)]  # fmt: skip
    blame = knob_sources(sources, given)
    # a preset's feature cache where the backbone has no UNet is not used
    planned = plan_knobs(
        traits, preset_knobs, model_knobs, given, label=label, blame=blame, scheduler=runs_with
    )
    if ref is not None:  # (a loaded model's were checked as it loaded)
        try:  # the feature cache a preset sets too (it failed each input, after compiling)
            check_compile(options.get("compile"), label("compile"), options.get("offload"), planned["feature_cache"],
                          offload_name=label("offload"), cache_name=label("feature_cache"))  # fmt: skip
        except InputError as err:
            raise blame(err, ("feature_cache",)) from None
        # (they failed after the estimator had loaded)
        device = resolve_device(options.get("device"), label("device"))
        check_memory_options(device=device, offload=options.get("offload"), attention=options.get("attention", "sdpa"),
                             label=label)  # fmt: skip
    if traits is not None:
        check_backbone_knobs(traits, name, given, negative_prompt, scheduler, label=label)


def run_transform(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    prompt: str | None = None,
    preset: str | None = None,
    model=None,
    estimator=None,
    depth: Sequence[str | os.PathLike] | None = None,
    depth_polarity: str | None = None,
    negative_prompt: str | None = None,
    seed: int | None = None,
    num_images: int = 1,
    scheduler: str | None = None,
    knobs: Mapping | None = None,
    load_options: dict | None = None,
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    batch_size: int = 1,
    label: Callable[[str], str] = str,
) -> RunReport:
    """``model`` is a loaded SceneTransformer or a name for ``SceneTransformer.from_pretrained``. ``batch_size``
    photos share one denoising batch (all of their ``num_images``); on a GPU a few photos per batch keep it
    busier, at the memory of batch_size x num_images images. An input that fails is reported and skipped; a full
    disk (or quota, or read-only file system) stops the run with an InputError. ``label``: how the caller's user
    spells an argument in messages (the CLI's flags; the Python name by default)."""
    from .backends import check_at_hand, check_scheduler_name
    from .estimators import DepthEstimator
    from .loading import resolve_device
    from .registry import default_estimator_for, resolve_backbone, resolve_companions, resolve_estimator
    from .transformer import SceneTransformer

    check_batch_size(batch_size, label("batch_size"))
    # (a str was read as its letters: "'e' is not a knob")
    if knobs is not None and not isinstance(knobs, Mapping):
        raise InputError(f"knobs must be a dict of knob names to values, got {knobs!r}")
    # any mapping (a config's, a read-only view): a copy, which a later change of the caller's cannot reach
    knobs = dict(knobs) if knobs is not None else None
    unknown = sorted(set(knobs or {}) - set(DEFAULT_KNOBS))
    if unknown:  # they failed as a TypeError from prepare, once both models had loaded
        raise InputError(f"knobs: {unknown[0]!r} is not a knob ({', '.join(DEFAULT_KNOBS)}); scheduler is its own "
                         "argument")  # fmt: skip
    # each request checks them again with the presets' knobs; a bad one failed every input, after the models loaded
    given = {k: plain_number(v) for k, v in (knobs or {}).items() if v is not None}
    check_knobs({**DEFAULT_KNOBS, **given}, label)
    request_seeds(seed, check_num_images(num_images, label), label)
    check_scheduler_name(scheduler, label("scheduler"))  # a typo was found once the models had loaded
    if load_options is not None and not isinstance(load_options, dict):
        raise InputError(
            f"load_options must be a dict of SceneTransformer.from_pretrained arguments, got {load_options!r}"
        )
    options = _load_options(model, estimator, load_options, label)
    check_callback(on_error, "on_error")
    check_callback(on_warning, "on_warning")
    inputs = as_paths(inputs, "inputs", at_least_one=True)
    report = RunReport(on_error=on_error)
    paths = report.collect(inputs, out_dir)
    depth = as_paths(depth, label("depth")) if depth is not None else None
    check_polarity(
        depth_polarity,
        label("depth_polarity"),
        missing=None if depth is not None else f"{label('depth')} files",
    )
    if depth is not None:
        report.check_paired(len(depth), len(paths), label("depth"), "depth files")
    # the words, and the presets named, before anything loads (they failed each input, after the models loaded)
    presets_mod.check_words(prompt, preset, negative_prompt, label)
    if isinstance(model, SceneTransformer):
        ref = lora = controlnet = None
    else:
        ref = resolve_backbone(model)
        lora, controlnet = resolve_companions(options.get("lora"), options.get("controlnet"))
    plan_request(
        model, ref, lora, controlnet, options, prompt, preset, negative_prompt, given, scheduler, label
    )
    if not paths:
        return report
    with output_dir_for(out_dir, inputs) as out_dir:
        manifest = out_dir / MANIFEST
        # the outputs an earlier run recorded here (reading cuts a torn last line of a killed run)
        # of each record, only what _warn_of_replaced_files compares (a whole record held ~8 KB: a run of 1M images
        # into a folder grew by GBs)
        before = [_depth_source(r) for r in read_manifest(manifest)]
        earlier = {r.get("output") for r in before}
        made: list[dict] = []  # this run's records, where a rerun needs them
        if isinstance(model, SceneTransformer):
            st = model
        else:
            check_at_hand(ref, local_files_only=options.get("local_files_only", False), controlnet=controlnet,
                          lora=lora)  # fmt: skip
            say = status_line(progress)
            loads_estimator = depth is None and isinstance(estimator, (str, os.PathLike, type(None)))
            if loads_estimator:
                estimator = estimator or default_estimator_for(model)
                named = resolve_estimator(estimator).name  # a bad name is refused, readable inputs or not
            st = None  # where no input is readable: each fails below, with its reason
            if any_loadable(paths):
                if loads_estimator:
                    # the estimator (small) loads first: weights missing offline fail before the backbone
                    # (gigabytes) loads
                    say(f"loading depth estimator {named}")
                    estimator = DepthEstimator.from_pretrained(
                        estimator, device=resolve_device(options.get("device")),
                        dtype=options.get("dtype"), local_files_only=options.get("local_files_only", False),
                    )  # fmt: skip
                say(f"loading model {ref.name}")
                st = SceneTransformer.from_pretrained(model, estimator=estimator, **options)
        kept, reserved = _earlier_stems(before, paths)
        stems = _stems(paths, kept, reserved)
        _say_renamed(paths, stems, kept, reserved, out_dir, on_warning)
        bar = progress_bar(
            total=len(paths), unit="img", desc="transform", disable=not progress or len(paths) == 1
        )

        def outputs_of(written):
            return [out_dir / r["output"] for r in written[0]]

        # While a batch is denoised, the next batch's photos are read and their depth estimated (the depth thread, the
        # only one that runs the estimator) and the previous batch's outputs are written (the writer threads); each
        # input's manifest lines follow its files, in input order

        def write(result, stem, source):
            # the paths it wrote that were not there before (a failed write leaves none, and touches no file)
            files: list = []
            records = write_transform_result(
                result, out_dir, stem, source=source, manifest=False, files=files
            )
            return records, files

        def add_lines(written):
            """An input's manifest lines, after its files; if they cannot be written, neither are its files."""
            append_manifest(manifest, *written)
            if earlier:
                # (an image whose file was not there before wrote over nothing: an earlier one deleted since)
                fresh = {os.path.basename(f) for f in written[1]}
                made.extend({**_depth_source(r), "replaced": r["output"] not in fresh} for r in written[0])

        def load(batch: range) -> list:
            """A batch's photos, read and decoded, with their depths (estimated in one estimator call, batched on a
            GPU, or the given files read) and both at generation size, in the depth thread while the previous batch is
            denoised: a Sized or the error, per photo."""
            with notes_unsaid():  # (the run says them, naming the input: they came twice)
                got: dict[int, object] = {}  # index -> PIL image, then DepthMap, then Sized; or the error
                for i in batch:
                    try:
                        got[i] = load_image(paths[i])
                    except Depth2ImgError as err:
                        got[i] = err
                images = {i: im for i, im in got.items() if not isinstance(im, Depth2ImgError)}
                estimated = depth is None and images
                depths = dict(zip(images, st.estimator.isolated(list(images.values())))) if estimated else {}
                for i, image in images.items():
                    try:
                        d = (
                            depths[i]
                            if depth is None
                            else st.depth_for(image, depth[i], depth_polarity=depth_polarity)
                        )
                        got[i] = d if isinstance(d, Depth2ImgError) else st.at_generation_size(image, d)
                    except Depth2ImgError as err:
                        got[i] = err
                return [got[i] for i in batch]

        batches = [range(s, min(s + batch_size, len(paths))) for s in range(0, len(paths), batch_size)]
        depth_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="depth2img-depth")
        try:
            with BackgroundWriter(burst=batch_size) as writer:
                for batch, loaded in zip(batches, read_ahead(partial(depth_worker.submit, load), batches)):
                    prepared = []  # (index, path, Request) of the photos of this batch that passed their checks
                    for i, got in zip(batch, loaded):
                        path = paths[i]
                        try:
                            if isinstance(got, Depth2ImgError):
                                raise got
                            # its prompt notes are forwarded below from result.warnings (catch_warnings here would
                            # race the loader threads' own, which share the process's filter list)
                            with notes_unsaid():
                                prepared.append((i, path, st.prepare(
                                    got.image, prompt, preset=preset, negative_prompt=negative_prompt, depth=got.depth,
                                    seed=seed, num_images=num_images, scheduler=scheduler, reuse=got,
                                    _stacklevel=None, **(knobs or {}),
                                )))  # fmt: skip
                        except Depth2ImgError as err:
                            _fail(report, path, err)
                    for (i, path, _), result in zip(
                        prepared,
                        st.run_isolated([r for *_, r in prepared], progress=progress) if prepared else [],
                    ):
                        if isinstance(result, Depth2ImgError):
                            _fail(report, path, result)
                            continue
                        # the depth's (read within notes_unsaid: they came twice) and the prompt's (without an
                        # on_warning they went unsaid), with the input they are of
                        for note in result.warnings:
                            _warn(f"{path}: {note}", on_warning)
                        writer.submit(
                            partial(write, result, stems[i], os.path.abspath(path)),
                            in_order=add_lines,
                            then=partial(report.settle_write, path, out_dir, paths=outputs_of),
                        )
                    bar.update(len(batch))
                writer.flush()
        finally:
            depth_worker.shutdown(wait=True, cancel_futures=True)
            bar.close()
            if earlier:  # one line per file: a rerun's replaced files replace their lines, interrupted or not
                try:
                    compact_manifest(manifest)
                except OSError as err:  # a full disk: not in place of the run's own error or Ctrl-C
                    _warn(
                        f"{manifest}: not compacted ({err.strerror or err}); the next run here does it",
                        on_warning,
                    )
                _warn_of_replaced_files(before, made, out_dir, on_warning)
    return report


def _depth_source(record: dict) -> dict:
    return {k: record.get(k) for k in ("output", "source", "preset", "depth", "depth_files")}


def _earlier_stems(before: list[dict], paths) -> tuple[dict, set]:
    """(``kept``, ``reserved``) for ``_stems``, from the records of earlier runs into the folder: a photo keeps the name
    a run gave it, and no other photo takes a name given: names came from the sorted inputs alone, so a rerun with
    a.PNG beside a.png gave a.png's name to a.PNG and wrote over a.png's images (a warning said so afterwards). A
    record's stem is its control image's (NAME_control.png, written with every image)."""
    given, reserved = {}, set()  # source -> its first recorded stem; every stem recorded
    for r in before:
        files = r.get("depth_files") or ()
        control = next((f for f in files if isinstance(f, str) and f.endswith(CONTROL_SUFFIX)), "")
        stem = control[: -len(CONTROL_SUFFIX)]
        # (a hand-edited line names no path)
        if not stem or "/" in stem or "\\" in stem or stem.startswith("."):
            continue
        reserved.add(stem)
        if isinstance(r.get("source"), str) and r["source"]:
            given.setdefault(r["source"], stem)
    # by the file, whatever the spelling of its path (file_key once per source: a photo has a line per image)
    by_file = {}
    for source, stem in given.items():
        by_file.setdefault(file_key(source), stem)
    kept, claimed = {}, set()
    for p in paths:
        stem = by_file.get(file_key(p))
        # (two photos recorded with one name: the first keeps it)
        if stem is not None and stem.casefold() not in claimed:
            kept[p] = stem
            claimed.add(stem.casefold())
    return kept, reserved


def _warn_of_replaced_files(before: list[dict], made: list[dict], out_dir: Path, on_warning) -> None:
    """A rerun into a folder writes over an input's depth files (NAME_depth16.png, NAME_control.png), which the earlier
    run's other images of that input (another preset or seed) were made from: say so where the depth differs. Say
    so too where it wrote over an earlier image of another photo or preset (same name)."""

    def made_from(record: dict):
        """The photo and the depth, paths compared as files (a relative and an absolute spelling are one)."""

        def real(value):
            return os.path.realpath(value) if isinstance(value, str) and os.path.exists(value) else value

        depth = {k: real(v) if k in ("source", "id") else v for k, v in (record.get("depth") or {}).items()}
        return real(record.get("source")), depth

    # an image written over one of another photo or preset: names join stem, preset and seed with "_", so
    # a_b.png with no preset and a.png with preset b are both a_b_s0.png (compaction then dropped the earlier line)
    theirs = {r.get("output"): r for r in before}
    clash = sorted(r["output"] for r in made if r["replaced"] and r["output"] in theirs and (made_from(
                   theirs[r["output"]])[0], theirs[r["output"]].get("preset")) != (made_from(r)[0], r.get("preset")))  # fmt: skip
    if clash:
        shown = ", ".join(clash[:3]) + (f" and {len(clash) - 3} more" if len(clash) > 3 else "")
        _warn(f"{out_dir}: this run wrote {len(clash)} image(s) over an earlier run's of another photo or preset "
              f"({shown}); write one of them to another folder to keep both", on_warning)  # fmt: skip
    ours = {f: made_from(r) for r in made for f in r.get("depth_files") or ()}
    outputs = {r["output"] for r in made}
    kept = [
        r for r in before if r.get("output") not in outputs and (out_dir / str(r.get("output"))).is_file()
    ]
    stale = sorted({r["output"] for r in kept for f in r.get("depth_files") or () if f in ours
                    and made_from(r) != ours[f]})  # fmt: skip
    if stale:
        shown = ", ".join(stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
        note = (f"{out_dir}: this run wrote its depth and control files over those that {len(stale)} earlier "
                f"image(s) were made from ({shown}), with another depth or source")  # fmt: skip
        _warn(note, on_warning)


def _say_renamed(paths, stems, kept: dict, reserved: set, out_dir: Path, on_warning) -> None:
    """Once: the photos named otherwise than their files because an earlier run into the folder gave those names to
    other photos (by path: a moved folder's photos are new ones, and got ``-2`` names beside the old without a word)."""
    from .outputs import shortened

    held = {s.casefold() for s in reserved}
    renamed = [(p, s) for p, s in zip(paths, stems) if p not in kept and shortened(p.stem).casefold() in held]
    if renamed:
        shown = ", ".join(f"{p.name} as {s}" for p, s in renamed[:3])
        more = f" and {len(renamed) - 3} more" if len(renamed) > 3 else ""
        _warn(f"{out_dir}: {len(renamed)} photo(s) named otherwise than their files ({shown}{more}): an earlier run "
              "here gave those names to other photos (known by their paths: moved photos are new ones)", on_warning)  # fmt: skip


def _warn(note: str, on_warning) -> None:
    if on_warning:
        on_warning(note)
    else:
        warnings.warn(note, Depth2ImgWarning, stacklevel=4)


def _fail(report: RunReport, path, err: Depth2ImgError) -> None:
    msg = str(err)
    report.fail(msg if str(path) in msg else f"{path}: {msg}")
