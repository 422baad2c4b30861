"""Scene-variation batches and synthetic datasets: ``depth2img batch JOB.yaml`` and ``run_job``.

One source -> its depth once -> every variation x seed, each re-checked for geometry (and regenerated with
another seed when it falls under the threshold) -> images, carried labels and one manifest line per attempt.
The manifest is the record of truth: ``--resume`` skips items it lists as final, and the dataset index files
(COCO JSON, imagefolder metadata) are rebuilt from it at the end. Files are written atomically, by a
background writer, manifest line after the files. Several processes (``accelerate launch`` / ``torchrun``)
shard the sources deterministically and each writes its own manifest; the main process merges them.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
import math
import os
import re
import shutil
import string
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import NamedTuple

import yaml

from .errors import Depth2ImgError, Depth2ImgWarning, InputError, OutOfMemory, first_line
from .io import (
    DEPTH_WRITERS,
    any_loadable,
    atomic_path,
    expand_inputs,
    file_key,
    image_header,
    load_image,
    open_image,
    stale_temp_files,
    write_all_or_none,
    write_depth_products,
)
from .knobs import DEFAULT_KNOBS, MAX_SEED, check_batch_size, check_distinct_seeds
from .outputs import (
    MANIFEST,
    BackgroundWriter,
    append_manifest,
    locked_manifest,
    manifest_index,
    progress_bar,
    read_manifest,
    safe_name,
    save_png,
    shortened,
    status_line,
    write_lines,
)
from .transformer import _batchable

LAYOUTS = {"files": "images", "imagefolder": "train", "coco": "images"}  # layout -> image folder
MAX_VARIATIONS = 10_000  # a matrix's combinations: each is a variation, listed in job.resolved.yaml
SEED_STRIDE = 1_000_003  # a retry uses seed + attempt * SEED_STRIDE: never another item's seed
KNOB_KEYS = (*DEFAULT_KNOBS, "scheduler", "negative_prompt")  # what a job's `knobs:` may hold


@dataclass
class Geometry:
    metric: str = "delta1"
    threshold: float | None = None  # None: scores are recorded, nothing is rejected
    retries: int = 2

    def __post_init__(self):
        from .metrics import METRICS

        if self.metric not in METRICS:
            raise InputError(
                f"job key geometry.metric must be one of {', '.join(METRICS)}, got {self.metric!r}"
            )
        t = self.threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)):
            raise InputError(f"job key geometry.threshold must be a finite number, got {t!r}")
        # one no output can meet: every item ran all its retries, then was rejected
        lower = METRICS[self.metric] == "lower"
        if t is not None and (t < 0 if lower else t > 1):
            raise InputError(f"job key geometry.threshold {t!r} can never be met: {self.metric} lies in "
                             f"{'0 and up' if lower else '0..1'}")  # fmt: skip
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or not 0 <= self.retries <= 20:
            raise InputError(f"job key geometry.retries must be an integer in 0..20, got {self.retries!r}")


@dataclass
class Job:
    inputs: str | list[str]
    output: str
    prompt: str | None = None
    presets: list[str] = field(default_factory=list)
    presets_files: list[str] = field(default_factory=list)  # presets YAML files, after $DEPTH2IMG_PRESETS'
    matrix: dict | None = None  # {"template": "... {season} ...", "axes": {"season": [...], ...}}
    seeds: int | list[int] = 1  # an int n: seeds 0..n-1 for each variation; or the list itself
    model: str | None = None
    estimator: str | None = None
    lora: str | None = None  # a few-step LoRA (see `depth2img models`)
    lora_scale: float = 1.0
    controlnet: str | None = None  # a depth ControlNet instead of the model's own (`transform --controlnet`)
    compile: str | None = None  # a torch.compile mode: the fast path (see `transform --compile`)
    dtype: str | None = None  # the weights' dtype (see `transform --dtype`); None: the device's default
    native_size: int | None = None  # the pixel count n x n to generate at (`transform --native-size`)
    knobs: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)  # {"coco": FILE, "yolo": DIR, "masks": {name: DIR}}
    layout: str = "files"
    geometry: Geometry = field(default_factory=Geometry)
    depth_batch_size: int = 4
    batch_size: int = 8  # images per denoising batch, across sources, variations and seeds
    base_dir: str = "."  # relative paths in the job are taken from here (the job file's folder)

    def __post_init__(self):
        from .knobs import check_compile, check_seed

        if self.geometry is None:  # `geometry:` left empty: the defaults
            self.geometry = Geometry()
        if isinstance(self.geometry, dict):
            unknown = set(self.geometry) - set(Geometry.__dataclass_fields__)
            if unknown:
                raise InputError(
                    f"job key geometry.{sorted(unknown)[0]} is unknown (allowed: metric, threshold, retries)"
                )
            self.geometry = Geometry(**self.geometry)
        if not isinstance(self.geometry, Geometry):
            raise InputError(
                f"job key geometry must be a mapping (metric, threshold, retries), got {self.geometry!r}"
            )
        for key in ("knobs", "labels"):  # left empty: none
            if getattr(self, key) is None:
                setattr(self, key, {})
            if not isinstance(getattr(self, key), dict):
                raise InputError(
                    f"job key {key} must be a mapping of names to values, got {getattr(self, key)!r}"
                )
        if self.layout not in LAYOUTS:
            raise InputError(f"job key layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if isinstance(self.inputs, os.PathLike) or (
            isinstance(self.inputs, list) and any(isinstance(i, os.PathLike) for i in self.inputs)
        ):  # a Path (from Python) is a path as well as a string is
            self.inputs = (
                os.fspath(self.inputs)
                if isinstance(self.inputs, os.PathLike)
                else [os.fspath(i) if isinstance(i, os.PathLike) else i for i in self.inputs]
            )
        items = self.inputs if isinstance(self.inputs, list) else [self.inputs]
        if not self.inputs or not all(isinstance(i, str) and i.strip() for i in items):
            raise InputError(
                f"job key inputs must be a path, glob, list file or list of them, got {self.inputs!r}"
            )
        if isinstance(self.output, os.PathLike):
            self.output = os.fspath(self.output)
        if not isinstance(self.output, str) or not self.output.strip():
            raise InputError(f"job key output must be a directory, got {self.output!r}")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise InputError(f"job key prompt must be a string, got {self.prompt!r}")
        if not isinstance(self.presets, list):
            raise InputError(f"job key presets must be a list, got {self.presets!r}")
        files = (
            [self.presets_files]
            if isinstance(self.presets_files, (str, os.PathLike))
            else (self.presets_files if self.presets_files is not None else [])  # left empty: none, as knobs
        )
        if not isinstance(files, list) or not all(
            isinstance(f, (str, os.PathLike)) and str(f).strip() for f in files
        ):
            raise InputError(
                f"job key presets_files must be a path or a list of paths, got {self.presets_files!r}"
            )
        self.presets_files = [str(self.path(os.fspath(f))) for f in files]
        for key in ("model", "estimator", "lora", "controlnet"):
            setattr(self, key, self._model_path(key))
        from .knobs import check_lora_scale

        try:
            check_lora_scale(self.lora_scale, self.lora)
        except InputError as err:
            raise InputError(f"job key {err}") from None
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, (int, list)):
            raise InputError(f"job key seeds must be a count or a list of integers, got {self.seeds!r}")
        if isinstance(self.seeds, int) and not 1 <= self.seeds <= 1000:
            raise InputError(f"job key seeds must be a count in 1..1000, got {self.seeds}")
        if self.seeds == []:
            raise InputError("job key seeds must be a count or a non-empty list of integers, got []")
        for s in self.seed_list():
            try:
                check_seed(s)
            except InputError as err:
                raise InputError(f"job key seeds: {err}") from None
        check_distinct_seeds(self.seed_list(), "job key seeds")
        self._check_retry_seeds()
        unknown = set(self.knobs) - set(KNOB_KEYS)
        if unknown:
            raise InputError(
                f"job key knobs.{sorted(unknown)[0]} is unknown (allowed: {', '.join(KNOB_KEYS)})"
            )
        negative = self.knobs.get("negative_prompt")
        if negative is not None and not isinstance(negative, str):
            raise InputError(f"job key knobs.negative_prompt must be a string, got {negative!r}")
        self._check_values()
        from .backends import check_backbone_knobs

        ref, traits = self._backbone
        if traits is not None:  # a hub id's or folder's backbone is checked once loaded
            check_backbone_knobs(traits, ref.name, self.knobs, negative, self.knobs.get("scheduler"),
                                 label=lambda key: f"job key knobs.{key}")  # fmt: skip
            from .backends import check_companions
            from .registry import resolve_lora

            check_companions(traits, ref.name, lora=resolve_lora(self.lora) if self.lora is not None else None,
                             controlnet=self.controlnet is not None, label=lambda key: f"job key {key}")  # fmt: skip
        check_compile(self.compile, "job key compile", feature_cache=self.knobs.get("feature_cache", 1))
        from .knobs import DTYPES

        if self.dtype not in (None, *DTYPES):
            raise InputError(f"job key dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.native_size is not None:  # (a job had no such key: transform --native-size had no batch twin)
            from .knobs import check_native_size

            self.native_size = check_native_size(self.native_size, "job key native_size")
        self._check_labels()
        if self.matrix is not None:
            if not isinstance(self.matrix, dict) or set(self.matrix) != {"template", "axes"}:
                raise InputError("job key matrix must hold exactly 'template' and 'axes'")
            axes = self.matrix["axes"]
            if (
                not isinstance(axes, dict)
                or not axes
                or not all(isinstance(v, list) and v for v in axes.values())
            ):
                raise InputError("job key matrix.axes must map each {name} to a non-empty list")
            for axis, values in axes.items():
                # True, None and lists became "True", "None" and "['a', 'b']" in the prompts
                odd = [v for v in values if isinstance(v, bool) or not isinstance(v, (str, int, float))]
                if odd:
                    raise InputError(
                        f"job key matrix.axes.{axis}: {odd[0]!r} is not a word or a number; quote it as text"
                    )
            # counted before it is expanded: 10**9 combinations filled memory, with no word
            count = math.prod(len(v) for v in axes.values())
            if count > MAX_VARIATIONS:
                raise InputError(
                    f"job key matrix.axes make {count:,} variations (the product of the axes' lengths), over "
                    f"{MAX_VARIATIONS:,}; split the job"
                )
            named = self._check_template(self.matrix["template"], axes, self.prompt)
            if (self.prompt or "").strip() and not self.presets and "prompt" not in named:
                # it was used by nothing, silently
                raise InputError(
                    f"job key prompt {self.prompt!r} is used by no variation: the matrix template has no {{prompt}} "
                    "and the job no presets; put {prompt} in matrix.template, or leave prompt out"
                )
            unused = [axis for axis in axes if axis not in named]
            if unused:
                raise InputError(
                    f"job key matrix.axes: {', '.join(unused)} not in matrix.template "
                    f"{self.matrix['template']!r}; its values would all give the same prompt"
                )
        if not self.presets and self.matrix is None and not (self.prompt or "").strip():
            raise InputError("job needs variations: presets, a matrix, or at least a prompt")
        for key in ("depth_batch_size", "batch_size"):
            check_batch_size(getattr(self, key), f"job key {key}")
        self._check_denoising_steps()

    @staticmethod
    def _check_template(template, axes: dict, prompt: str | None) -> set[str]:
        """The axes a matrix template names, each as a plain ``{axis}`` (and ``{prompt}``, the job's prompt, where it
        has one): a format spec or conversion was tried on the first value only (``{n:d}`` with values [5, many]: an
        internal error), and ``{axis.upper}`` put a method's memory address in every prompt (so a resumed run never
        matched the first)."""
        if not isinstance(template, str):
            raise InputError(f"job key matrix.template must be text, got {type(template).__name__}")
        try:
            fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                      if name is not None]  # fmt: skip
        except ValueError as err:
            raise InputError(f"job key matrix.template is not a valid template ({err})") from None
        for name, spec, conversion in fields:
            if name == "" or name.isdigit():
                raise InputError(
                    f"job key matrix.template has a positional {{{name}}}; name an axis in each: {template!r}"
                )
            if not re.fullmatch(r"\w+", name) or spec or conversion:
                written = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
                raise InputError(
                    f"job key matrix.template field {{{written}}}: give an axis by its name alone, as "
                    "{name}; an index, attribute, conversion or format spec fails on some values"
                )
            if name == "prompt" and name not in axes and (prompt or "").strip():
                continue
            if name not in axes:
                raise InputError(f"job key matrix.template names {name!r} which is not an axis")
        return {name for name, _, _ in fields}

    def _model_path(self, key: str) -> str | None:
        """``model``, ``estimator``, ``lora`` or ``controlnet`` as the loader should get it: a local folder given
        relative to the job file (``./x``, ``../x``, ``~/x``, or a relative path that exists there) becomes that path;
        registry names, ``tiny/...`` and hub ids stay as they are. Checked with the registry's resolver, before anything is
        written or loaded."""
        from . import registry

        value = getattr(self, key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            takes = "a hub id or folder" if key == "controlnet" else "a registry name, hub id or folder"
            raise InputError(f"job key {key} must be {takes}, got {value!r}")
        section = {"model": "backbones", "estimator": "estimators", "lora": "loras", "controlnet": None}[key]
        named = section is not None and (
            registry.is_tiny(value) or value in registry.load_registry()[section]
        )
        if not named and not Path(value).is_absolute():
            if value.startswith(("./", "../", "~")) or value in (".", "..") or self.path(value).exists():
                value = str(self.path(value))
            elif Path(value).exists():  # the resolver would take it from the current directory, not the job's
                raise InputError(
                    f"job key {key} {value!r} is no path under the job file's folder {self.base_dir}, but one in "
                    f"the current directory {Path.cwd()}; give it from the job file's folder (or absolute)"
                )
        resolve = {"model": registry.resolve_backbone, "estimator": registry.resolve_estimator,
                   "lora": registry.resolve_lora, "controlnet": registry.resolve_controlnet}[key]  # fmt: skip
        try:
            resolve(value)
        except InputError as err:
            raise InputError(f"job key {key}: {err}") from None
        return value

    def _check_retry_seeds(self) -> None:
        """A retry uses seed + attempt x SEED_STRIDE (only with a threshold): it must stay a valid seed and must not
        be another listed seed, whose image it would repeat."""
        if self.geometry.threshold is None or not self.geometry.retries:
            return
        seeds, retries = self.seed_list(), self.geometry.retries
        for s in seeds:
            if s + retries * SEED_STRIDE > MAX_SEED:
                raise InputError(
                    f"job key seeds: seed {s} would be retried with seed {s + retries * SEED_STRIDE} "
                    f"(geometry.retries {retries}), past 2**63-1; use seeds up to {MAX_SEED - retries * SEED_STRIDE}"
                )
        listed = set(seeds)
        for s in seeds:
            for attempt in range(1, retries + 1):
                if s + attempt * SEED_STRIDE in listed:
                    raise InputError(
                        f"job key seeds: seed {s}'s retry {attempt} would use seed {s + attempt * SEED_STRIDE}, "
                        "which the list also holds (the same image twice); choose other seeds"
                    )

    def _check_labels(self) -> None:
        unknown = set(self.labels) - {"coco", "yolo", "masks"}
        if unknown:
            raise InputError(f"job key labels.{sorted(unknown)[0]} is unknown (allowed: coco, yolo, masks)")
        for key in ("coco", "yolo"):
            value = self.labels.get(key)
            if key in self.labels and (not isinstance(value, str) or not value.strip()):
                what = "a COCO JSON file" if key == "coco" else "a folder of YOLO txt files"
                raise InputError(f"job key labels.{key} must be {what}, got {value!r}")
        masks = self.labels.get("masks") or {}
        if not isinstance(masks, dict) or not all(isinstance(v, str) and v.strip() for v in masks.values()):
            raise InputError(f"job key labels.masks must map a mask name to a directory, got {masks!r}")
        # a mask's name names the folder masks/NAME: '' and '..' both went to masks/x (safe_name's name for a text
        # that keeps no character), without a word
        for name in masks:
            if safe_name(str(name)) == "x" != str(name):
                raise InputError(f"job key labels.masks: mask name {name!r} must hold a letter or digit (it names "
                                 "the folder masks/NAME its copies go to)")  # fmt: skip

    def _check_values(self) -> None:
        """Knob values, scheduler and preset names are checked here, before any model loads."""
        from . import presets as presets_mod
        from .backends import check_scheduler_name
        from .knobs import check_knobs

        check_knobs({**DEFAULT_KNOBS, **{k: v for k, v in self.knobs.items() if k in DEFAULT_KNOBS}},
                    label=lambda key: f"job key knobs.{key}")  # fmt: skip
        check_scheduler_name(self.knobs.get("scheduler"), "job key knobs.scheduler")
        known = self._presets
        for name in self.presets:
            # "" ran as a variation named x with no preset (or failed once files were written); 1 or null became
            # "unknown preset '1'"
            if not isinstance(name, str) or not name.strip():
                raise InputError(f"job key presets: each entry is a preset's name, got {name!r}")
            try:
                presets_mod.resolve(None, str(name), known)
            except InputError as err:
                raise InputError(f"job key presets: {err}") from None

    @functools.cached_property
    def _backbone(self):
        """(ModelRef, BackboneTraits or None) of the job's model, for the checks before it loads."""
        from .backends import known_traits
        from .registry import resolve_backbone

        ref = resolve_backbone(self.model)
        return ref, known_traits(ref)

    @functools.cached_property
    def _presets(self) -> dict:
        """The presets a job's names resolve against, read once for the checks."""
        from . import presets as presets_mod

        # the error names the file, and $DEPTH2IMG_PRESETS where that gave it (never 'job key presets_files' then)
        return presets_mod.load_presets(self.presets_files)

    @functools.cached_property
    def _model_knobs(self) -> dict:
        """The knobs the backbone or the LoRA sets over a preset's, as ``SceneTransformer`` does: Flux's guidance
        (where the backbone's kind is known before loading), then a few-step LoRA's (steps, guidance)."""
        from .registry import resolve_lora
        from .transformer import backbone_knobs

        traits = self._backbone[1]
        return backbone_knobs(
            traits and traits.kind, resolve_lora(self.lora) if self.lora is not None else None
        )

    def _check_denoising_steps(self) -> None:
        """Each variation's knobs must hold together and its steps x strength leave a denoising step. Resolved as
        ``prepare`` resolves them (the job's knobs, over its LoRA's, over a preset's, over the defaults), so a job
        that would fail every item fails here, before anything is written: a preset's control_start past the job's
        control_end, or its feature_cache under the job's compile, failed once files were written."""
        from . import presets as presets_mod
        from .backends import knob_sources, plan_knobs
        from .knobs import check_compile
        from .registry import resolve_lora

        traits = self._backbone[1]
        # the scheduler run: the job's, else a few-step LoRA's (whose 50-step limit was found once models had loaded)
        lora = resolve_lora(self.lora) if self.lora is not None else None
        scheduler = self.knobs.get("scheduler") or (lora.entry.scheduler if lora and lora.entry else None)
        given = {k: self.knobs.get(k) for k in DEFAULT_KNOBS}
        for var in variations(self):
            preset_knobs = presets_mod.resolve(None, var.preset, self._presets)[2] if var.preset else {}
            # the preset named only where its knobs gave the failing one (it was named whenever there was one: a
            # preset of no knobs blamed for the job's own steps)
            named = f"preset {var.preset}, variation {var.name}" if var.preset else None
            blame = knob_sources([(named, preset_knobs), (None, self._model_knobs)], given)
            try:
                knobs = plan_knobs(
                    traits, preset_knobs, self._model_knobs, given, blame=blame, scheduler=scheduler
                )
                try:  # (a preset's feature cache where the backbone has no UNet is not used: plan_knobs)
                    check_compile(self.compile, "compile", feature_cache=knobs["feature_cache"])
                except InputError as err:
                    raise blame(err, ("feature_cache",)) from None
            except InputError as err:
                raise InputError(f"job key knobs: {err}") from None

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def path(self, p: str) -> Path:
        q = Path(os.path.expanduser(p))
        return q if q.is_absolute() else Path(self.base_dir) / q


@dataclass(frozen=True)
class Variation:
    name: str
    prompt: str | None
    preset: str | None


def _variation_name(text: str) -> str:
    """A variation's part of an output name, never holding "__", which separates a name's parts, nor starting or
    ending with "_": source "a__b" with preset "c" and source "a" with preset "b__c" both gave a__b__c__s0 (and "a_"
    with "c" and "a" with "_c" a___c__s0), one image over the other."""
    return re.sub("_{2,}", "_", safe_name(text)).strip("_") or "x"


def variations(job: Job) -> list[Variation]:
    out = [Variation(_variation_name(p), job.prompt, p) for p in job.presets]
    if job.matrix is not None:
        axes = job.matrix["axes"]
        for combo in itertools.product(*axes.values()):
            values = dict(zip(axes, combo))
            # at most MAX_VARIATION_NAME characters (ASCII): the axes' parts joined made names too long for a file
            # name (the run failed once files were written); a cut name ends in a hash of the whole
            name = shortened("-".join(_variation_name(str(v)) for v in combo), MAX_VARIATION_NAME)
            text = job.matrix["template"].format(**{"prompt": job.prompt, **values})
            out.append(Variation(name, text, None))
    if not out:
        out.append(Variation("prompt", job.prompt, None))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        origins = [v.preset if v.preset is not None else v.prompt for v in out if v.name == twice[0]]
        raise InputError(
            f"job variations have duplicate names: {twice} ({twice[0]!r} is the name of "
            f"{' and '.join(map(repr, origins[:3]))}; names keep ASCII letters, digits, '+', '-' and '_', and "
            "other characters become '-'; accents are dropped and a name cut at 60 characters or losing other "
            "letters ends in a hash)"
        )
    return out


MAX_VARIATION_NAME = 100


def load_job(path: str | os.PathLike, *, extra_presets_files=(), **overrides) -> Job:
    """Read a job YAML; unknown keys and bad values are errors naming the key, malformed YAML names the line.
    ``extra_presets_files`` (a command line's ``--presets-file``, from the current directory) come after the job's
    own ``presets_files`` (from the job file's folder)."""
    from .io import _path
    from .registry import read_yaml_file

    path = _path(path, "job file (a Job or its YAML's path)")
    raw = read_yaml_file(path, f"job file {path}", "job")
    if not isinstance(raw, dict):
        raise InputError(f"job file {path}: must be a mapping of keys (inputs, output, presets, ...)")
    raw = {**raw, **overrides}
    if isinstance(extra_presets_files, (str, os.PathLike)):  # one file (a str was read letter by letter)
        extra_presets_files = [extra_presets_files]
    if extra_presets_files:
        from .presets import _load_file

        for f in extra_presets_files:  # a command line's file, checked before the job's name is put on errors
            _load_file(Path(f))
        own = raw.get("presets_files") or []
        own = [own] if isinstance(own, str) else own
        if isinstance(own, list):  # else the job's own value is refused as it is
            raw["presets_files"] = own + [str(Path(f).resolve()) for f in extra_presets_files]
    unknown = set(raw) - (set(Job.__dataclass_fields__) - {"base_dir"})
    if unknown:
        raise InputError(
            f"job file {path}: unknown key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(set(Job.__dataclass_fields__) - {'base_dir'}))})"
        )
    missing = {"inputs", "output"} - set(raw)
    if missing:
        raise InputError(f"job file {path}: missing key {sorted(missing)[0]!r}")
    try:
        return Job(**raw, base_dir=str(path.resolve().parent))
    except (TypeError, InputError) as err:
        raise InputError(f"job file {path}: {err}") from None


# ---------------------------------------------------------------------------------------------- inputs & labels


def job_inputs(job: Job) -> tuple[list[Path], list[str]]:
    items = job.inputs if isinstance(job.inputs, list) else [job.inputs]
    expanded: list[str] = []
    for item in items:
        p = job.path(str(item))
        if p.suffix.lower() == ".txt" and p.is_file():  # a list file: one path per line, relative to itself
            try:  # as the file system spells names (bytes): a Latin-1 name is a name too
                # (a BOM, as some editors save UTF-8, is no part of the first name)
                text = os.fsdecode(p.read_bytes()).removeprefix("\ufeff")
            except UnicodeDecodeError as err:  # Windows decodes names as UTF-8, strictly
                raise InputError(
                    f"job key inputs: list file {p} is not UTF-8 text (byte {err.start}); save it as UTF-8"
                ) from None
            except OSError as err:
                raise InputError(
                    f"job key inputs: list file {p} cannot be read ({err.strerror or err})"
                ) from None
            lines = [ln for ln in map(str.strip, text.splitlines()) if ln and not ln.startswith("#")]
            expanded += [str((p.parent / ln) if not Path(ln).is_absolute() else Path(ln)) for ln in lines]
        else:
            expanded.append(str(p))
    return expand_inputs(expanded, outputs=job_folders(job))


def job_folders(job: Job) -> list[Path]:
    """The folders a job writes: its output folder, and in it its images', depths', labels' and masks'."""
    root = job.path(job.output)
    return [root, *(root / name for name in (LAYOUTS[job.layout], "depth", "labels", "masks"))]


class Labels:
    """A source's labels, carried unchanged to each of its variations (sizes are equal, so they stay aligned)."""

    def __init__(self, job: Job):
        self.coco = None
        self.yolo = job.path(job.labels["yolo"]) if "yolo" in job.labels else None
        self.masks = {}
        for key, folder in (job.labels.get("masks") or {}).items():
            name = safe_name(str(key))
            if name in self.masks:  # one set of copies went over the other's
                first = next(k for k in job.labels["masks"] if safe_name(str(k)) == name)
                raise InputError(
                    f"job key labels.masks: {first!r} and {key!r} would both be copied to masks/{name}; rename one"
                )
            self.masks[name] = job.path(folder)
        # per-file label folders: (job key, folder, where under the output their copies go, file suffix)
        self.folders = [("labels.yolo", self.yolo, "labels", ".txt")] if self.yolo is not None else []
        self.folders += [
            (f"labels.masks.{name}", path, f"masks/{name}", ".png") for name, path in self.masks.items()
        ]
        # a misspelt folder would give a dataset without those labels, silently
        for key, path, _, _ in self.folders:
            if not path.is_dir():
                raise InputError(f"{key} {path}: {'not a folder' if path.exists() else 'no such folder'}")
            try:  # listed and searched (one that cannot be was an internal error, naming a path of its lookup)
                with os.scandir(path) as entries:
                    next(entries, None)
                (path / ".depth2img-probe").exists()
            except OSError as err:
                raise InputError(f"{key} {path}: cannot be read ({err.strerror or err})") from None
        # two kinds of mask from one folder: a typo (said as a mask file shared by two sources, one named twice)
        mask_folders: dict[str, str] = {}
        for key, path, _, _ in self.folders:
            first = (
                mask_folders.setdefault(os.path.realpath(path), key)
                if key.startswith("labels.masks.")
                else key
            )
            if first != key:
                raise InputError(
                    f"job key {first} and {key} name one folder, {path}; give each kind of mask its own"
                )
        self._coco_by_name: dict[str, list[tuple[tuple[str, ...], dict]]] = {}
        # (label folder, a source's folder) -> _mirror's answer
        self._mirrors: dict[tuple[Path, str], Path] = {}
        if "coco" in job.labels:
            path = job.path(job.labels["coco"])
            try:
                # NaN and Infinity are not JSON: Python's reader takes them, and annotations.json would carry them;
                # 1e999 is, but reads as infinity (annotations.json failed to be written once every image was made)
                self.coco = json.loads(path.read_text(encoding="utf-8"), parse_constant=_not_json,
                                       parse_float=_finite_float, parse_int=_json_int)  # fmt: skip
                by_id: dict = {}
                for im in self.coco.get("images", []):
                    parts = _parts(im["file_name"])
                    if by_id.setdefault(im["id"], im) is not im:  # an unhashable id is a TypeError here
                        raise InputError(
                            f"labels.coco {path}: image id {im['id']!r} is given to {by_id[im['id']]['file_name']!r} "
                            f"and {im['file_name']!r}; each image needs its own id"
                        )
                    _check_coco_size(path, im)
                    self._coco_by_name.setdefault(parts[-1], []).append((parts, im))
                self._anns: dict = {}
                for ann in self.coco.get("annotations", []):
                    self._anns.setdefault(ann["image_id"], []).append(ann)
                unknown = [i for i in self._anns if i not in by_id]
                if unknown:  # their annotations were dropped ("1" against 1 too)
                    n = sum(len(self._anns[i]) for i in unknown)
                    shown = ", ".join(map(repr, unknown[:3])) + (", ..." if len(unknown) > 3 else "")
                    raise InputError(
                        f"labels.coco {path}: {n} annotation(s) name image ids that no image has ({shown}); "
                        "an annotation's image_id must be one of its images' ids, of the same type"
                    )
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
                raise InputError(f"labels.coco {path}: cannot be read ({first_line(err)})") from None
            except _NotJSON as err:
                raise InputError(f"labels.coco {path}: holds {err}; give numbers") from None
            except (AttributeError, KeyError, TypeError, IndexError) as err:
                raise InputError(
                    f"labels.coco {path}: not COCO (images need an id and a file_name, annotations an "
                    f"image_id; {type(err).__name__}: {err})"
                ) from None

    def _coco_matches(self, source: Path) -> tuple[list[dict], bool]:
        """The COCO image entries naming ``source``, and whether they fit it only in part. First those whose
        ``file_name`` is the longest path suffix of the source's path (whole components: ``x/img.png`` names
        ``.../x/img.png``, not ``.../y/img.png``); where none is, the one entry that shares the most trailing
        components with it (an export's `train2017/img.png`, the annotator's absolute `/home/a/x/img.png` for
        `frames/x/img.png`), none where several share as many."""
        src = _parts(os.path.abspath(source))
        same_name = self._coco_by_name.get(src[-1], [])
        best, found = 0, []
        for parts, im in same_name:
            n = len(parts)
            if n > best and src[-n:] == parts:
                best, found = n, [im]
            elif n == best and src[-n:] == parts:
                found.append(im)
        if found or not same_name:
            return found, False
        shared = [(_shared_tail(parts, src), im) for parts, im in same_name]
        most = max(n for n, _ in shared)
        found = [im for n, im in shared if n == most]
        return (found, True) if len(found) == 1 else ([], False)

    def coco_for(self, source: Path):
        if self.coco is None:
            return None, []
        found, _ = self._coco_matches(source)
        im = found[0] if len(found) == 1 else None  # several: refused up front by check()
        return (im, self._anns.get(im["id"], [])) if im else (None, [])

    def check(self, sources: list[Path], warn: bool = True) -> None:
        """Refuse, before anything is written or loaded, labels that would not stay valid: a COCO entry that names
        several sources (or a source named by several entries), labels that do not fit their source as
        ``load_image`` gives it (EXIF orientation applied), from the files' headers, and YOLO lines that are not
        YOLO. With ``warn``, say which sources the labels may not be meant for: matched to a COCO entry in part,
        with no COCO entry, or, where a YOLO or mask folder names none of the sources, all of them."""
        owners: dict[int, list[Path]] = {}
        problems = []
        partial: list[tuple[Path, dict]] = []
        unlabelled: list[Path] = []
        # each source's YOLO and mask files, looked up once (the checks below each stat'ed them again)
        files = {p: self._label_files(p) for p in sources} if self.folders else {}
        # a YOLO or mask file found for several sources (by their file name, in no folder that tells them apart)
        shared: dict[Path, list[Path]] = {}
        for p, found_files in files.items():
            for f in found_files.values():
                shared.setdefault(f, []).append(p)
        for f, same in shared.items():
            if len(same) > 1:
                raise InputError(
                    f"job key labels: {f} would be the labels of {len(same)} sources ({same[0]}, {same[1]}"
                    f"{', ...' if len(same) > 2 else ''}), which share the file name {same[0].stem!r}; give the "
                    "sources distinct names, or put their labels in subfolders named as the sources' own folders"
                )
        for p in sources:
            found, part = self._coco_matches(p) if self.coco is not None else ([], False)
            if part:
                partial.append((p, found[0]))
            elif self.coco is not None and not found:
                unlabelled.append(p)
            if len(found) > 1:
                names = ", ".join(f"{im['file_name']!r} (id {im['id']})" for im in found)
                raise InputError(
                    f"job key labels.coco: {names} all name the source {p}; list each image once"
                )
            for im in found:
                owners.setdefault(id(im), []).append(p)
            if problem := self._fit_problem(p, found[0] if found else None, files.get(p, {})):
                problems.append(f"{p}: {problem}")
        for im in (im for parts_ims in self._coco_by_name.values() for _, im in parts_ims):
            if len(owners.get(id(im), [])) > 1:
                srcs = owners[id(im)]
                raise InputError(
                    f"job key labels.coco: file_name {im['file_name']!r} matches {len(srcs)} sources ({srcs[0]}, "
                    f"{srcs[1]}{', ...' if len(srcs) > 2 else ''}); give its path down to the folder that tells "
                    "them apart"
                )
        if problems:
            more = f" (and {len(problems) - 1} more sources)" if len(problems) > 1 else ""
            raise InputError(f"job key labels: {problems[0]}{more}; the labels would not stay aligned")
        if self.yolo is not None:
            for p in sources:
                if (label := files[p].get("labels")) and (problem := _yolo_problem(label)):
                    raise InputError(f"labels.yolo {label}: {problem}")
        if not warn:
            return
        said = []
        if partial:
            p, im = partial[0]
            said.append(f"{len(partial)} source(s) matched a labels.coco entry by their last folders and file name "
                        f"only ({p} as {im['file_name']!r}); check that the labels are theirs")  # fmt: skip
        if unlabelled:
            said.append(f"{len(unlabelled)} source(s) have no labels.coco entry ({unlabelled[0]}"
                        f"{', ...' if len(unlabelled) > 1 else ''}); their outputs carry no annotations")  # fmt: skip
        for key, folder, dest, suffix in self.folders:
            if sources and not any(dest in found for found in files.values()):
                where = self._mirror(folder, sources[0]) / f"{sources[0].stem}{suffix}"
                said.append(f"{key} {folder} holds no file named after a source (as {where.relative_to(folder)}), "
                            "so no output carries them")  # fmt: skip
            # a file of the source's name at the top, passed over for its mirrored subfolder: a background image of
            # a YOLO tree, or a flat folder that happens to hold a subfolder named as the sources' folder
            passed = [p for p in sources if dest not in files[p] and self._mirror(folder, p) != folder
                      and (folder / f"{p.stem}{suffix}").is_file()]  # fmt: skip
            if passed:
                mirror = self._mirror(folder, passed[0])
                said.append(f"{key}: {len(passed)} source(s) have no file in the subfolder named as their folder "
                            f"({mirror.relative_to(folder)}/ for {passed[0]}) and one of their name at the top "
                            f"({passed[0].stem}{suffix}), which is not taken; their outputs carry none")  # fmt: skip
        for line in said:
            warnings.warn(f"job key labels: {line}", Depth2ImgWarning, stacklevel=3)

    def _fit_problem(self, source: Path, coco_image: dict | None, files: dict[str, Path]) -> str | None:
        """Why ``source``'s labels cannot be carried to outputs of its size, or None. The size is the photo's once
        its EXIF orientation is applied (as ``load_image`` gives it); labels of an EXIF-rotated photo are carried
        only where their size shows that they were made on the rotated photo (YOLO's normalised boxes never can)."""
        files = dict(files)  # ``source``'s YOLO and mask files (_label_files)
        yolo = files.pop("labels", None)
        masks = list(files.values())
        if coco_image is None and not masks and yolo is None:
            return None
        header = image_header(source)
        if header is None:  # unreadable: the loader lists it and skips it
            return None
        _, (w, h), orientation = header
        if orientation != 1 and yolo is not None:
            return (
                f"it is EXIF-rotated (orientation {orientation}), so its YOLO labels {yolo} cannot be known to "
                "match the rotated output; save the photo rotated, with labels to match"
            )
        shown = f"{w}x{h}" + (
            f" once its EXIF orientation {orientation} is applied" if orientation != 1 else ""
        )
        sizes = []
        # masks are copied as stored: an empty, cut or foreign file went into the dataset as a mask
        for m in masks:
            mask_header = image_header(m)
            if mask_header is None or not _intact(m):
                return f"its mask {m} cannot be read as an image (empty, cut short or not an image)"
            sizes.append((f"mask {m}", mask_header[0]))
        if coco_image is not None:
            cw, ch = coco_image.get("width"), coco_image.get("height")
            sizes.append(
                (f"labels.coco image id {coco_image['id']}", (cw, ch) if (cw, ch) != (None, None) else None)
            )
        for what, size in sizes:
            if size is not None and tuple(size) != (w, h):
                return f"its {what} is {size[0]}x{size[1]} but the photo is {shown}"
            # a turn by 90 degrees swaps a photo's sides: labels of the turned size were made on the turned photo
            if orientation != 1 and (size is None or orientation not in (5, 6, 7, 8) or w == h):
                return (
                    f"it is EXIF-rotated (orientation {orientation}) and its {what} "
                    f"{'gives no size' if size is None else 'has the same size either way'}, so it cannot be known "
                    "to match the rotated output; save the photo rotated, with labels to match"
                )
        return None

    def _label_files(self, source: Path) -> dict[str, Path]:
        """The YOLO txt and mask PNGs that exist for ``source``, by the folder (under the output) their copies go
        to: ``labels`` for YOLO, ``masks/NAME`` for each mask; each the file named after the source in its
        ``_mirror`` folder."""
        found = {}
        for _, folder, dest, suffix in self.folders:
            f = self._mirror(folder, source) / f"{source.stem}{suffix}"
            if f.is_file():
                found[dest] = f
        return found

    def _mirror(self, folder: Path, source: Path) -> Path:
        """Where label folder ``folder`` keeps ``source``'s labels: its subfolder named as the most of the source's
        own last folders, as a YOLO tree's ``labels/`` mirrors its ``images/`` (``images/train/a.jpg``:
        ``labels/train/``), else ``folder`` itself. A mirrored subfolder without the source's file means no labels
        (a YOLO background image), not a file of its name higher up, which would be another image's. Looked up
        once a run per label folder and source folder."""
        parent = os.path.dirname(os.path.abspath(source))
        mirror = self._mirrors.get((folder, parent))
        if mirror is None:
            parts = Path(parent).parts[1:]
            tails = (folder.joinpath(*parts[i:]) for i in range(len(parts)))
            mirror = self._mirrors[folder, parent] = next((d for d in tails if d.is_dir()), folder)
        return mirror

    def copy_for(self, source: Path, out_stem: str, root: Path, only_changed: bool = False) -> list[Path]:
        """Copy YOLO txt and mask PNGs of ``source`` for an output named ``out_stem``; returns the copies. A copy
        keeps its file's modification time; ``only_changed`` writes only those missing or unlike their file's
        (size or modification time)."""
        copies = []
        for dest, src in self._label_files(source).items():
            dst = root / dest / f"{out_stem}{src.suffix}"
            copies.append(dst)
            if only_changed and _same_file_state(src, dst):
                continue
            with atomic_path(dst) as tmp:
                shutil.copy2(src, tmp)
        return copies

    def sync(self, records: list[dict], root: Path) -> None:
        """Make the YOLO and mask copies under ``root`` those of the finished outputs ``records`` (manifest lines)
        and their labels now: on --resume, a label file changed since its outputs were made (or a copy deleted)
        was left as it was, and the copies of an output dropped from the index, or of a label file removed, stayed."""
        if not self.folders:
            return
        self._mirrors.clear()  # label subfolders made during the run count
        kept = set()
        for r in records:
            kept.update(self.copy_for(Path(r["source"]), Path(r["output"]).stem, root, only_changed=True))
        for _, _, dest, suffix in self.folders:
            folder = root / dest
            for copy in folder.glob(f"*{suffix}") if folder.is_dir() else ():
                if copy not in kept:
                    copy.unlink(missing_ok=True)


class _NotJSON(ValueError):
    pass


def _intact(path: Path) -> bool:
    """Whether an image file reads to its end (Pillow's verify: a PNG's chunks and their checksums, nothing decoded;
    a mask cut short had a header that read, and was copied into the dataset)."""
    try:
        with open_image(path) as img:
            img.verify()
    except Exception:  # noqa: BLE001  (Pillow raises OSError, SyntaxError, struct.error... for a damaged file)
        return False
    return True


def _json_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # (Python reads at most 4300 digits: an internal error)
        raise _NotJSON(f"a number of {len(text)} digits, more than Python reads") from None


def _not_json(constant: str):
    raise _NotJSON(f"{constant}, which JSON does not allow")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotJSON(f"{text}, a number past the largest a float holds")
    return number


def _shared_tail(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """How many trailing path components ``a`` and ``b`` share."""
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _check_coco_size(path: Path, im: dict) -> None:
    """A COCO image's width and height, where given, are whole numbers (a string "64" was refused later as "64x48
    but the photo is 64x48")."""
    for side in ("width", "height"):
        value = im.get(side)
        # 640.0 (some tools write floats) is whole
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if value is not None and (isinstance(value, bool) or not whole or value < 1):
            raise InputError(
                f"labels.coco {path}: image id {im['id']!r} has {side} {value!r}; give a whole number of pixels"
            )


def _yolo_problem(path: Path) -> str | None:
    """What makes a YOLO txt file not YOLO (per line: a class index, then at least 4 finite numbers, the first
    four, a box or a polygon's first point pair, within [0, 1]), or None. The file is copied unchanged, so a bad
    line would reach the dataset as it is."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return f"cannot be read ({first_line(err)})"
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 5:
            return f"line {n} has {len(fields)} value(s), not a class and 4 or more coordinates: {line.strip()!r}"
        if not fields[0].isdigit():
            return f"line {n}: class {fields[0]!r} is not a whole number >= 0"
        try:
            values = [float(f) for f in fields[1:]]
        except ValueError:
            return f"line {n} holds a value that is not a number: {line.strip()!r}"
        if not all(math.isfinite(v) for v in values):
            return f"line {n} holds a NaN or infinite value: {line.strip()!r}"
        if not all(0 <= v <= 1 for v in values[:4]):
            return f"line {n}: coordinates are normalised to [0, 1], got {line.strip()!r}"
    return None


def _parts(name: str | os.PathLike) -> tuple[str, ...]:
    """Path components, '/' or '\\' separated, without '.' components."""
    return tuple(c for c in Path(str(name).replace("\\", "/")).parts if c != ".")


def _earlier_coco_ids(path: Path) -> tuple[dict[str, int], dict[tuple[str, int], int]]:
    """The ids an earlier ``annotations.json`` of this output gave: image ids by file name, annotation ids by
    (file name, place among its image's annotations). Empty where there is none, or it is not ours to read."""
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        images = {im["id"]: im["file_name"] for im in earlier["images"]}
        image_ids = {name: i for i, name in images.items()}
        ann_ids, seen = {}, collections.Counter()
        for ann in earlier["annotations"]:
            name = images[ann["image_id"]]
            ann_ids[(name, seen[name])] = ann["id"]
            seen[name] += 1
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}, {}
    ints = all(isinstance(i, int) for i in (*image_ids.values(), *ann_ids.values()))
    return (image_ids, ann_ids) if ints else ({}, {})


def _same_file_state(src: Path, dst: Path) -> bool:
    """``dst`` is there with ``src``'s size and modification time (as ``shutil.copy2`` leaves a copy)."""
    try:
        a, b = src.stat(), dst.stat()
    except OSError:
        return False
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


# ---------------------------------------------------------------------------------------------- manifest


JOB_DEPTH_FORMATS = ("png16", "npy")  # each source's depth, under depth/


def _nothing(_):
    pass


def _source_file(path: Path) -> dict:
    """What a manifest line records of its source's file, for a resume to tell a photo replaced under its name."""
    import hashlib

    st, digest = os.stat(path), hashlib.sha256()
    with open(path, "rb") as fh:  # (hashlib.file_digest: Python 3.11 on)
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest.hexdigest()}


def _same_file(path: Path, recorded: dict) -> bool:
    """Whether ``path`` holds the file ``recorded`` (``_source_file``): its size and time alike, else its contents (a
    project copied without its files' times)."""
    try:
        st = os.stat(path)
        if st.st_size != recorded.get("size"):
            return False
        return st.st_mtime_ns == recorded.get("mtime_ns") or _source_file(path)["sha256"] == recorded.get(
            "sha256"
        )
    except OSError:  # unreadable now: its own failure, when it is read
        return True


def _item_key(source_stem: str, variation: str, seed: int) -> str:
    return f"{source_stem}/{variation}/s{seed}"


# ---------------------------------------------------------------------------------------------- run


@dataclass
class JobReport:
    done: int = 0  # outputs accepted and written
    failed: list[str] = field(default_factory=list)
    retried: int = 0  # attempts beyond the first
    rejected: int = 0  # items under the geometry threshold after every retry
    skipped: int = 0  # finished in an earlier run (--resume)
    wall_s: float = 0.0
    diffusion_s: float = 0.0  # time inside the diffusion pipelines
    oom_splits: int = 0  # batches halved after running out of GPU memory
    batch_limit: int | None = None  # the batch size after out-of-memory splits (later batches start there)
    indexed: int | None = None  # images in the dataset once the run ends (earlier runs' too); rank 0 only
    rank: int = 0  # this process, of ``world`` (several: each reports its own share)
    world: int = 1

    def summary(self) -> str:
        per_hour = self.done / self.wall_s * 3600 if self.wall_s > 0 else 0.0
        outside = 1 - self.diffusion_s / self.wall_s if self.wall_s > 0 else 0.0
        who = f"process {self.rank} of {self.world}: " if self.world > 1 else ""
        # the job-wide count, which only the process that merged the manifests knows (each summary is its share)
        n = self.indexed
        whole = f"; the dataset holds {n} image{'s' * (n != 1)}" if self.world > 1 and n is not None else ""
        return (f"{who}{self.done} done, {len(self.failed)} failed, {self.retried} retried, {self.rejected} rejected by "
                f"geometry, {self.skipped} skipped (resume); {per_hour:.0f} images/hour, "
                f"{outside:.1%} of wall time outside diffusion{whole}")  # fmt: skip


BARRIER_TIMEOUT = timedelta(hours=24)


def _distributed():
    """(rank, world size, device, barrier) from accelerate's PartialState when launched with several processes."""
    text = os.environ.get("WORLD_SIZE", "1").strip()
    # (an internal error: "invalid literal for int()"; 0 ran one process without a word)
    if not text.isdigit() or int(text) == 0:
        raise InputError(
            f"WORLD_SIZE must be a number of processes, got {text!r}; it is set by the launcher (torchrun "
            "--nproc_per_node N, accelerate launch): unset WORLD_SIZE to run one process"
        )
    world = int(text)
    if world <= 1:
        return 0, 1, None, lambda: None
    # a stray WORLD_SIZE (left exported from a launcher's shell): accelerate's ValueError on the missing MASTER_ADDR
    # was printed as an internal error, exit 1
    if not os.environ.get("MASTER_ADDR"):
        raise InputError(
            f"WORLD_SIZE is {world} but MASTER_ADDR is not set: a run of several processes is started by a launcher "
            "(torchrun --nproc_per_node N, accelerate launch), which sets both; unset WORLD_SIZE to run one process"
        )
    import signal
    import threading

    import torch
    from accelerate import PartialState

    # The rendezvous blocks in C until every process has joined, where a Python signal handler never runs: a process
    # whose peers never came ignored SIGTERM and Ctrl-C (timeout could not stop it). Nothing is written yet, so
    # the default handlers end it meanwhile
    main = threading.current_thread() is threading.main_thread()
    before = {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        # A process that finishes its chunks waits at the last barrier for the others; chunks are whole units of
        # work (an SDXL chunk with retries can take an hour), so torch's default timeout (10 or 30 minutes) would
        # end good runs (seen with the timeout cut to 4 s)
        state = PartialState(cpu=not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    rank, world = state.process_index, state.num_processes

    def barrier():
        try:
            state.wait_for_everyone()
        except RuntimeError:
            # a process that stopped (its own error, a kill) closes its connections, and the others' barrier raised
            # gloo's "Connection closed by peer", printed as an internal error, exit 1
            raise PeerStopped.of(rank, world) from None

    return rank, world, state.device, barrier


def _gathered(items: list) -> list:
    """Every process's ``items`` (picklable), in one list, where a process group is up (else ``items``): it waits
    for every process, as a barrier does."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return items
    shares = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(shares, items)
    except RuntimeError:  # (as at a barrier)
        raise PeerStopped.of(dist.get_rank(), dist.get_world_size()) from None
    return [item for share in shares for item in share]


class PeerStopped(Depth2ImgError):
    """Another process of a multi-process run stopped while this one waited for it at a barrier."""

    # said by the first process alone: every process left waiting meets it (each said it: 7 lines on 8 GPUs);
    # the one that stopped says its own error (the first's own, where it was the first)
    every_process = True

    @classmethod
    def of(cls, rank: int, world: int) -> PeerStopped:
        return cls(f"process {rank} of {world}: another process of the job stopped; see its error")


@contextlib.contextmanager
def alike():
    """Errors raised inside are ones every process of a run meets alike (the job file, its inputs, labels and output
    folder, read by all): marked ``every_process``, so that one process reports them, not each."""
    try:
        yield
    except Depth2ImgError as err:
        err.every_process = True
        raise


def _inside(root: Path, path: Path) -> Path:
    resolved = path.resolve()
    if root.resolve() not in resolved.parents:
        raise InputError(f"output name {path.name!r} would escape the output directory {root}")
    return path


def run_job(job: Job | str | os.PathLike, *, resume: bool = False, progress: bool = True, service=None,
            on_error=None) -> JobReport:  # fmt: skip
    """Run a job (a Job or a job file). ``service`` (a depth2img Service) lets callers share loaded models."""
    from .depth_run import _stems
    from .metrics import NARROW_FLAT_DELTA1, geometry_reference, geometry_scores, passes
    from .service import Service

    if not isinstance(job, Job):
        with alike():
            job = load_job(job)
    # what the job's images are made with besides its model and estimator (job.resolved.yaml records them): a Service
    # given holds its own, which must be the same
    settings = dict(lora=job.lora, lora_scale=job.lora_scale, controlnet=job.controlnet, compile=job.compile,
                    dtype=job.dtype, native_size=job.native_size, presets=job._presets)  # fmt: skip
    # the model that makes the job's images: the job's, else a Service given's own (else the registry default)
    model = job.model or (service.default_model if service is not None else None)
    if service is not None:
        from .service import image_settings

        ours, theirs = image_settings(model=model, **settings), service.image_settings(model)
        differ = [key for key in ours if ours[key] != theirs[key]]
        if differ:
            raise InputError(f"service: its {', '.join(differ)} {'differs' if len(differ) == 1 else 'differ'} from the "
                             "job's; the images would not be made as job.resolved.yaml records (build the Service "
                             "with the job's settings)")  # fmt: skip
    started = time.perf_counter()
    rank, world, device, barrier = _distributed()
    report = JobReport(rank=rank, world=world)
    say = status_line(progress and rank == 0)  # (the models loading, in one process's words)

    def fail(msg):
        report.failed.append(msg)
        if on_error:
            on_error(msg)

    root = job.path(job.output)
    image_dir = root / LAYOUTS[job.layout]
    manifest = root / (MANIFEST if world == 1 else f"manifest.rank{rank}.jsonl")
    # Sources and labels are checked before anything is written or any model loads (every process checks them
    # all, so all refuse alike). A job's own outputs are never its sources (a recursive glob over a folder that
    # holds the output folder would take them in on --resume).
    with alike():  # errors every process meets alike: one reports them
        paths, problems = job_inputs(job)
        # (it wrote its output folder and job.resolved.yaml, then failed every source)
        if problems and not paths:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise InputError(f"job key inputs: no source image found: {problems[0]}{more}")
        # a job's folders
        written = [d.resolve() for d in job_folders(job)[1:]]
        outside = [p for p in paths if not any(p.resolve().is_relative_to(d) for d in written)]
        if len(outside) < len(paths) and rank == 0:
            warnings.warn(f"{len(paths) - len(outside)} input file(s) in the folders this job writes under {root} "
                          "skipped: a job's outputs are not its sources", Depth2ImgWarning, stacklevel=2)  # fmt: skip
        paths = outside
        labels = Labels(job)
        labels.check(paths, warn=rank == 0)
        # offline, a hub id not in the cache (a ControlNet's, a LoRA's too), or a folder of another model: found once
        # the estimator had loaded, after the output folder was made
        if service is None:
            from .backends import check_at_hand
            from .registry import resolve_companions

            lora, controlnet = resolve_companions(job.lora, job.controlnet)
            check_at_hand(job._backbone[0], controlnet=controlnet, lora=lora)
        earlier_run = any(root.glob("manifest*.jsonl"))
        recorded = _earlier_record(root / "job.resolved.yaml") if earlier_run else None
        # of each line, what names, skips and retries need (whole records, ~10 KB a line, peaked at 1.5 GB for 60k)
        fields = (
            "item",
            "attempt",
            "final",
            "accepted",
            "geometry",
            "output",
            "source",
            "source_in_job",
            "source_file",
            "dtype",
        )
        records = [r for m in root.glob("manifest*.jsonl") for r in read_manifest(m, fields=fields)]
        # a source keeps the name an earlier run gave it: a source added since with the same file name (sorted before
        # it) took that name, and with it the earlier images as its own
        base = (recorded or {}).get("base_dir")
        # a project copied whole: kept in the record, whose base_dir a resume of the copy makes the copy's (a second
        # resume then named the sources anew, beside the images the first had kept: every image made twice)
        copied = _copied_with_its_job(recorded, root, job) or (recorded or {}).get("copied") is True
        names = _EarlierNames(records, base if isinstance(base, str) else job.base_dir, copied)
        # an image removed since is made again, at its attempt (the same seed)
        records = [r for r in records if not _lost(root, r)]
        # each source name's file as its kept images were made from it (the newest line's)
        made_from = {r["item"].split("/")[0]: r["source_file"] for r in records
                     if r.get("output") and isinstance(r.get("source_file"), dict)}  # fmt: skip
        # the dtype the images kept were made in: a job that names none takes the device's default (float32 on a
        # CPU, float16 on a GPU), which job.resolved.yaml records as null
        earlier_dtypes = {r["dtype"] for r in records if r.get("final") and isinstance(r.get("dtype"), str)}
        tried: dict[str, int] = {}  # item -> the highest attempt an earlier run recorded
        for r in records:
            tried[r["item"]] = max(tried.get(r["item"], -1), r.get("attempt", 0))
        # final: kept, or rejected out of retries (a normal run marks its attempt `retries` final whatever its score:
        # a job resumed with more retries tries its rejected items again) or for a flat source (no scores, no retry)
        finished = {r["item"] for r in records if r.get("final") and (
            r.get("accepted") is not False or (r.get("geometry") or {}).get("absrel") is None)}  # fmt: skip
        finished |= {item for item, attempt in tried.items() if attempt >= job.geometry.retries}
        del records  # not held through the run
        # before its temp files are swept: a refused run leaves the earlier one untouched
        if resume and recorded is not None:
            _check_same_run(job, recorded, root / "job.resolved.yaml", earlier_dtypes, model)
        elif resume and earlier_run:
            # nothing to check this job against: it went on with other knobs, silently
            raise InputError(
                f"--resume (resume=True): the run in {root} has no readable job.resolved.yaml, the record of the "
                "settings a batch run's images were made with (a transform run writes none); restore it, or choose "
                "another output folder"
            )
        # (an earlier run is refused, untouched)
        if rank == 0 and root.is_dir() and (resume or not earlier_run):
            for stale in stale_temp_files(root):  # of a killed run
                stale.unlink(missing_ok=True)
        barrier()  # every process has read the manifests, and stale files are gone, before any process writes
        if not resume and earlier_run:  # before anything of the earlier run is touched
            raise InputError(
                f"output directory {root} already holds a run; pass --resume (resume=True) to continue it, or choose "
                "another"
            )
        # a source in its earlier place keeps its name; every earlier name is kept from new sources (a photo added
        # with a removed one's file name would take its images as its own)
        kept = {p: stem for p in paths if (stem := names.of(p, job.base_dir)) is not None}
        stems = dict(zip(paths, _stems(paths, kept, reserved=names.all)))
        # a photo replaced under its name kept its earlier images, given its new labels (a mask or boxes of another
        # photo); refused here, by every process alike, before job.resolved.yaml is written
        changed = [p for p in paths if stems[p] in made_from and not _same_file(p, made_from[stems[p]])]
        if changed:
            shown = ", ".join(str(p) for p in changed[:3]) + (
                f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            )
            raise InputError(
                f"--resume (resume=True): {len(changed)} source(s) changed since their images were made ({shown}): "
                f"the images in {root} and the source's labels would not match; remove those images (they are made "
                "again) or restore the photos"
            )
        # a file where the job's folders go, or one of them read-only: found when the first image was written, after
        # the models loaded ("write failed (File exists)", naming neither)
        for folder in job_folders(job):
            if folder.exists() and not folder.is_dir():
                raise InputError(
                    f"output directory {root}: {folder} is a file, where the job writes a folder"
                )
            if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
                raise InputError(f"output directory {root}: {folder} cannot be written (Permission denied)")
        # a folder where the job writes a file: job.resolved.yaml's was "cannot be written (Is a directory)", naming
        # no file, and an index's was found once every image was made
        files = [root / "job.resolved.yaml", root / MANIFEST, manifest]
        files += [root / "annotations.json"] if job.layout == "coco" or labels.coco is not None else []
        files += [image_dir / "metadata.jsonl"] if job.layout == "imagefolder" else []
        for file in files:
            if file.is_dir():
                raise InputError(f"output directory {root}: {file} is a folder, where the job writes a file")
        try:
            root.mkdir(parents=True, exist_ok=True)
            if rank == 0:
                with atomic_path(root / "job.resolved.yaml") as tmp:
                    resolved = {**_resolved(job), **({"copied": True} if copied else {})}
                    tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
        except OSError as err:
            where = f"{err.filename} cannot be written" if err.filename else "cannot be written"
            raise InputError(f"output directory {root}: {where} ({err.strerror or err})") from None

    for p in problems if rank == 0 else ():  # every process found them: one reports them
        fail(p)
    in_job = {p: _in_job(p, job.base_dir) for p in paths}  # recorded in each line, for a later resume's names
    # Sources are read, estimated (in batches of depth_batch_size) and denoised by chunk: at least batch_size of
    # them, so that a job of one variation x one seed still fills its denoising batches. Shard by chunk, not by
    # source: a chunk has the same members whatever the number of processes, so every image is bit-identical to
    # a single-process run (batched kernels round differently by batch).
    size = max(job.depth_batch_size, job.batch_size)
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    if rank == 0 and world > len(chunks):  # (a GPU idle, unsaid: the job's processes reported 0 done)
        idle = (
            f"{world} processes, but the job's {len(paths)} source(s) make {len(chunks)} chunk(s) of up to {size} "
            f"(batch_size, depth_batch_size): {world - len(chunks)} process(es) have nothing to make; lower "
            "batch_size and depth_batch_size to spread them"
        )
        warnings.warn(idle, Depth2ImgWarning, stacklevel=2)
    my_chunks = chunks[rank::world]
    mine = [p for chunk in my_chunks for p in chunk]
    vars_ = variations(job)
    seeds = job.seed_list()
    knobs = {k: v for k, v in job.knobs.items() if k != "negative_prompt"}
    negative = job.knobs.get("negative_prompt")

    total = len(mine) * len(vars_) * len(seeds)
    todo = {
        (p, v.name, s)
        for p in mine
        for v in vars_
        for s in seeds
        if _item_key(stems[p], v.name, s) not in finished
    }
    report.skipped = total - len(todo)
    todo_per_source = collections.Counter(t[0] for t in todo)
    service = service or Service(model=job.model, estimator=job.estimator, device=device, **settings)
    # anything left in the whole run, not only this process's share: every process refuses alike
    # (a generator: read up to the first source left that loads)
    left = (
        (
            p
            for p in paths
            if any(_item_key(stems[p], v.name, s) not in finished for v in vars_ for s in seeds)
        )
        if resume and earlier_dtypes
        else ()
    )
    if any_loadable(left):  # (the model's dtype: loaded for it only where an image will be made)
        made_in = str(service.transformer(job.model, progress=say).dtype).replace("torch.", "")
        if earlier_dtypes != {made_in}:
            was = " and ".join(sorted(earlier_dtypes))
            fix = (f"set job key dtype: {was} to continue it" if len(earlier_dtypes) == 1 else
                   "remove the images of one of them to have them made again in the other's")  # fmt: skip
            with alike():
                raise InputError(
                    f"--resume (resume=True): this run would make its images in {made_in} (job key dtype "
                    f"{job.dtype or 'not given: the device default'}), the run in {root} made them in {was}; {fix}"
                )
    # loaded before the bar is drawn (without a terminal, its 0 % line came before 'loading model'); not where no
    # source left loads: each then fails below with its reason, and no model loads for nothing
    if todo and any_loadable(p for p in mine if todo_per_source[p]):
        service.estimator(job.estimator, progress=say)
        service.transformer(job.model, progress=say)
    bar = progress_bar(total=total, initial=report.skipped, unit="img",
                       desc=f"batch[{rank}]" if world > 1 else "batch", disable=not progress)  # fmt: skip
    # Files are written by the writer threads, in parallel; manifest lines are appended in order, each after its
    # files. A write error (disk full...) is re-raised here, in the main thread, at a later submit.
    # stopped at the first failed write (the run ends there): later lines would claim what it left out (a depth file)
    writer = BackgroundWriter(burst=job.batch_size, stop_on_error=True)
    submit = writer.submit
    add_lines = partial(append_manifest, manifest)
    # the files each output has written that its manifest line does not list yet: removed if the run stops before
    # (an image whose label copy failed was left, and so was a later item's image written meanwhile, with no line)
    unlisted: dict[str, list[Path]] = {}

    def write_output(image, out_stem, record, source):
        path = _inside(root, image_dir / f"{out_stem}.png")
        fresh = unlisted[out_stem] = []
        # the image and its label copies take their names together, or none does
        jobs = [partial(save_png, image, path, record), partial(labels.copy_for, source, out_stem, root)]
        _naming(source, write_all_or_none, jobs, fresh=fresh)
        return out_stem, [record]

    def list_output(written):  # in order, after its files: its line (which removes them should it fail)
        out_stem, records = written
        add_lines(records, unlisted[out_stem])
        del unlisted[out_stem]

    # sources a flat output would pass a gate on AbsRel or delta1 for (a narrow depth range): said once, at the end
    gated_on_depth = job.geometry.threshold is not None and job.geometry.metric in ("absrel", "delta1")
    narrow: list[Path] = []
    source_files: dict[Path, dict] = {}  # what each line records of its source's file (the loader thread's)

    def load_chunk(chunk):
        images, errors = {}, []
        for p in chunk:
            try:
                images[p] = load_image(p)
                source_files[p] = _source_file(p)
            except Depth2ImgError as err:
                errors.append((p, str(err)))
            except OSError as err:  # (read a moment ago)
                errors.append((p, f"{p}: cannot be read ({err.strerror or err})"))
        return images, errors

    def estimate_chunk(loading):
        """A chunk's photos (read by the loader thread) and their depths, estimated in the depth thread while
        the previous chunk is denoised, with both at generation size and each source's geometry reference."""
        images, errors = loading.result()
        sized, references = {}, {}
        if images:
            estimator = service.estimator(job.estimator, progress=say)
            st = service.transformer(job.model, progress=say)
            for (p, image), depth in zip(
                images.items(), estimator.isolated(list(images.values()), batch_size=job.depth_batch_size)
            ):
                if isinstance(depth, Depth2ImgError):
                    errors.append((p, f"{p}: {depth}"))
                    continue
                sized[p] = st.at_generation_size(image, depth)
                references[p] = geometry_reference(depth)
                if gated_on_depth and references[p].flat_delta1 >= NARROW_FLAT_DELTA1:
                    narrow.append(p)
        return errors, sized, references

    def score(made, references):
        """Depth re-estimated on a batch's outputs and scored against their sources (in the depth thread)."""
        estimator = service.estimator(job.estimator)
        out_depths = estimator([img for _, img, _ in made], batch_size=job.depth_batch_size)
        return [
            (it, img, meta, geometry_scores(references[it.source], od))
            for (it, img, meta), od in zip(made, out_depths)
        ]

    def finish(scored, retry):
        """Records, writes and retries for a scored batch (in the main thread)."""
        for it, img, meta, scores in scored:
            p, var, s, attempt = it.source, it.var, it.seed, it.attempt
            stem = stems[p]
            ok = job.geometry.threshold is None or passes(scores, job.geometry.metric, job.geometry.threshold)
            # a flat source (scores None) fails every gate, whatever a retry makes, as does one whose edges cannot be
            # looked for (edge_f1 None)
            last = ok or attempt >= job.geometry.retries or scores[job.geometry.metric] is None
            out_stem = f"{stem}__{var.name}__s{s}"
            record = {**meta, "item": _item_key(stem, var.name, s), "source": str(p), "source_in_job": in_job[p], "variation": var.name,
                      "item_seed": s, "source_file": source_files[p], "attempt": attempt, "geometry": scores,
                      "accepted": ok, "final": last,
                      "output": f"{LAYOUTS[job.layout]}/{out_stem}.png" if ok else None,
                      "size": list(img.size),
                      # the depth it was made from, which makes it again exactly (README: Making an output again)
                      "depth_files": [f"depth/{stem}{DEPTH_WRITERS[f][0]}" for f in JOB_DEPTH_FORMATS]}  # fmt: skip
            if ok:
                submit(write_output, img, out_stem, record, p, in_order=list_output)
                report.done += 1
            else:
                writer.after(partial(add_lines, [record]))
                if last:
                    report.rejected += 1
            if last:
                bar.update(1)
            else:
                report.retried += 1
                retry.append(it._replace(attempt=attempt + 1))

    # While this chunk is denoised, the next chunk's photos are read and decoded (loader thread), and their depth is
    # estimated and both are resized to generation size (depth thread); a batch's geometry check (depth of its
    # outputs, scores) runs in the depth thread while the next batch is denoised. One thread runs the estimator, in
    # submission order.
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="depth2img-loader")
    depth_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="depth2img-depth")

    def prefetch(chunk):
        return depth_worker.submit(estimate_chunk, loader.submit(load_chunk, chunk))

    work = [c for c in ([p for p in batch if todo_per_source[p]] for batch in my_chunks) if c]
    # A chunk's last geometry check, finished once the next chunk's first batch is being denoised: with no
    # threshold no retry can come of it, and the GPU had waited for it at each chunk's end (each batch, in a job of
    # one variation and seed), 17-32 % busy in a review's simulation of a 200 ms/image GPU
    carried = None
    try:
        estimating = prefetch(work[0]) if work else None
        for i in range(len(work)):
            errors, sized, references = estimating.result()
            estimating = prefetch(work[i + 1]) if i + 1 < len(work) else None
            for p, msg in errors:
                fail(msg)
                bar.update(todo_per_source[p])
            if not sized:
                continue
            st = service.transformer(job.model)
            queue = []
            for p, req in sized.items():
                stem = stems[p]
                depth_dir = root / "depth"
                # every file, each run a source has items made in (a kill between the two writes left one; a source
                # replaced since kept the earlier photo's depth beside its new images); in order: no manifest line
                # after it is appended before it is written (a killed run's finished items had no depth, for good)
                submit(_naming, p, write_depth_products, req.depth, depth_dir, stem, JOB_DEPTH_FORMATS,
                       in_order=_nothing)  # fmt: skip
                for var in vars_:
                    want = [s for s in seeds if (p, var.name, s) in todo]
                    if want:
                        req = st.prepare(req.image, var.prompt, preset=var.preset, negative_prompt=negative,
                                         depth=req.depth, seed=want, reuse=req, **knobs)  # fmt: skip
                        # an item an earlier run left mid-retry goes on with its next attempt and seed
                        items = [
                            _Item(p, var, s, tried.get(_item_key(stem, var.name, s), -1) + 1, req)
                            for s in want
                        ]
                        report.retried += sum(it.attempt > 0 for it in items)
                        queue += items
            # Denoising batches across this chunk's sources, variations and seeds (same knobs and size);
            # an item under the geometry threshold comes back in the next round with its next seed.
            while queue:
                retry = []
                scoring = None  # the previous batch's geometry check, running while this batch is denoised
                for batch in _batches(queue, job.batch_size, report):
                    made = []
                    for it, out in zip(batch, _generate(st, batch, report)):
                        if isinstance(out, Depth2ImgError):  # even one image at a time: record it and go on
                            fail(f"{it.source} [{it.var.name}] seed {it.seed}: {out}")
                            bar.update(1)
                        else:
                            made.append((it, *out))
                    checked = depth_worker.submit(score, made, references) if made else None
                    if carried is not None:
                        finish(carried.result(), retry)
                        carried = None
                    if scoring is not None:
                        finish(scoring.result(), retry)
                    scoring = checked
                if scoring is not None and job.geometry.threshold is None:
                    carried = scoring
                elif scoring is not None:
                    finish(scoring.result(), retry)
                queue = retry
        if carried is not None:
            finish(carried.result(), [])
        writer.flush()
    except OSError as err:
        writer.close()  # the writes in flight end; what they wrote without its line goes
        for files in list(unlisted.values()):
            for f in files:
                with contextlib.suppress(OSError):
                    f.unlink(missing_ok=True)
        raise _write_failed(root, err) from None
    finally:
        loader.shutdown(wait=True, cancel_futures=True)
        depth_worker.shutdown(wait=True, cancel_futures=True)
        writer.close()
        bar.close()
    if world > 1:
        # said once for the job, by the first process, in a single run's words: each process had said its own share
        # ("2 source(s) ..." and "4 source(s) ..." for a job of 6)
        order = {str(p): i for i, p in enumerate(paths)}
        narrow = [Path(p) for p in sorted(_gathered([str(p) for p in narrow]), key=order.__getitem__)]
    if narrow and rank == 0:
        shown = ", ".join(p.name for p in narrow[:3]) + (
            f" and {len(narrow) - 3} more" if len(narrow) > 3 else ""
        )
        warnings.warn(f"{len(narrow)} source(s) span a narrow depth range ({shown}): a flat output scores delta1 >= "
                      f"{NARROW_FLAT_DELTA1} against them, so the gate on {job.geometry.metric} says little there; "
                      "gate on edge_f1 for such scenes", Depth2ImgWarning, stacklevel=2)  # fmt: skip
    barrier()
    if rank == 0:
        # this run's processes' manifests, or those of an earlier multi-process run that one process resumed
        try:  # (a full disk here, once every image was made, was an internal error)
            _settle_manifests(root, {str(p): i for i, chunk in enumerate(chunks) for p in chunk})
            report.indexed = build_index(job, root, labels, set(stems.values()))
        except OSError as err:
            raise _write_failed(root, err) from None
    # no process returns (and exits, maybe non-zero, which makes torchrun stop the others) before rank 0 has
    # merged the manifests and written the index
    barrier()
    report.wall_s = time.perf_counter() - started
    return report


def _naming(source: Path, write, *args, **kwargs):
    """``write(*args, **kwargs)``, whose OSError is marked with the source it wrote for (``_write_failed`` names it)."""
    try:
        return write(*args, **kwargs)
    except OSError as err:
        err.depth2img_source = source
        raise


def _write_failed(root: Path, err: OSError) -> InputError:
    """A write into the output folder that failed (full disk, quota, read-only): one line naming the input and the
    file where known (it named neither); the writes are atomic, and an input's output takes its files all or none."""
    source = getattr(err, "depth2img_source", None)
    why = f"{err.strerror or err}: {err.filename}" if err.filename else f"{err.strerror or err}"
    of = f" for {source}" if source is not None else ""
    return InputError(f"output directory {root}: write failed{of} ({why}); no partial file was left")


class _Item(NamedTuple):
    """One output to make: a source, a variation, its item seed, the geometry attempt, and the prepared request."""

    source: Path
    var: object
    seed: int
    attempt: int
    request: object  # transformer.Request for the source and variation

    @property
    def generation_seed(self) -> int:
        return self.seed + self.attempt * SEED_STRIDE


def _batches(queue: list[_Item], size: int, report: JobReport):
    """Slices of ``queue`` whose items can share a denoising batch (same ``Request.key``; first-seen order), at most
    ``size`` long, or the smaller size an out-of-memory split left in ``report.batch_limit``."""
    for group in _batchable([item.request for item in queue]):
        items = [queue[i] for i in group]
        start = 0
        while start < len(items):
            n = min(size, report.batch_limit or size)
            yield items[start : start + n]
            start += n


def _generate(st, units: list[_Item], report: JobReport) -> list:
    """One (PIL image, metadata) per item, from one denoising batch (each item a request of its one seed). A batch
    that fails is halved and retried (``run_isolated``); after an out-of-memory split, later batches start at the
    smaller size. An item that fails alone gets its error in its place."""

    def on_split(err, half):
        if isinstance(err, OutOfMemory):
            report.oom_splits += 1
            report.batch_limit = half if report.batch_limit is None else min(report.batch_limit, half)

    results = st.run_isolated(
        [it.request.with_seeds([it.generation_seed]) for it in units], on_split=on_split
    )
    report.diffusion_s += sum(r.timings["diffusion_s"] for r in results if not isinstance(r, Depth2ImgError))
    return [r if isinstance(r, Depth2ImgError) else (r.images[0], r.metadata[0]) for r in results]


# What makes an item's image, or judges it: a resumed run that changed one would mix images made two ways in one
# dataset. (Seeds, inputs and variations may be added, and geometry retries changed; compile and batch sizes change
# images only within rounding; a dtype's rounding grows over the steps.)
SAME_RUN_KEYS = ("model", "estimator", "lora", "lora_scale", "controlnet", "dtype", "native_size", "knobs", "geometry",
                 "layout", "labels")  # fmt: skip


def _earlier_record(recorded: Path) -> dict | None:
    """The settings an earlier run recorded (its job.resolved.yaml); None for an older or damaged record."""
    try:
        earlier = yaml.safe_load(recorded.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return earlier if isinstance(earlier, dict) else None


def _check_same_run(job: Job, earlier: dict, recorded: Path, made_in: set[str] = frozenset(),
                    model: str | None = None) -> None:  # fmt: skip
    """On --resume, refuse a job whose image-making settings differ from those of the run it continues,
    ``earlier`` (read from ``recorded``; ``made_in``: the dtypes its images record; ``model``: the one that makes
    the images where a record names none)."""
    from .service import controlnet_source

    # in the record's types (lists, not tuples)
    now = yaml.safe_load(yaml.safe_dump(_resolved(job), sort_keys=False))
    earlier = dict(earlier)  # its keys are normalised below, not the caller's record
    for record in (earlier, now):
        if isinstance(record.get("geometry"), dict):
            record["geometry"] = {k: v for k, v in record["geometry"].items() if k != "retries"}
        # a scale with no LoRA scaled nothing (an earlier run may have recorded one)
        if not record.get("lora"):
            record.pop("lora_scale", None)
        # a run that named no dtype made its images in its device's default: a job may name the dtype its images
        # record to continue it (run_job compares the dtype this run makes its images in with theirs)
        if earlier.get("dtype") is None and made_in == {now.get("dtype")}:
            record.pop("dtype", None)
        # the model's own ControlNet, named: the one it loads when none is named (the same images)
        with contextlib.suppress(Depth2ImgError):  # (a name no longer valid is compared as it is)
            if (
                record.get("controlnet")
                and controlnet_source(record["controlnet"], record.get("model") or model) is None
            ):
                record["controlnet"] = None
        base = record.get("base_dir")
        # a folder under the job's own, wherever the project now lies
        for key in ("model", "estimator", "lora", "controlnet"):
            value = record.get(key)
            if isinstance(value, str) and isinstance(base, str) and Path(value).is_relative_to(base):
                record[key] = Path(value).relative_to(base).as_posix()
        # label paths as the job gives them: one folder spelt ./labels, labels/ or absolute was "another labels"
        if isinstance(base, str) and isinstance(record.get("labels"), dict):
            record["labels"] = _labels_in_job(record["labels"], base)
    if "model" in earlier:  # a run from before controlnet was a key used the model's own
        earlier.setdefault("controlnet", None)
    changed = [
        k
        for k in SAME_RUN_KEYS
        if k in earlier and (_knobs_differ(earlier, now, job) if k == "knobs" else earlier[k] != now.get(k))
    ]
    before = {v.get("name"): v for v in earlier.get("variations") or [] if isinstance(v, dict)}
    # a variation the earlier run named otherwise (accented and non-Latin names changed in 413f805): taken as new, its
    # items were all made again beside the earlier ones, both indexed
    names_now = {v["name"] for v in now["variations"]}
    gone = {(old.get("preset"), old.get("prompt")): n for n, old in before.items() if n not in names_now}
    for v in now["variations"]:
        renamed = gone.get((v["preset"], v["prompt"])) if v["name"] not in before else None
        if renamed is not None:
            raise InputError(
                f"--resume (resume=True): this job's variation {v['name']!r} was named {renamed!r} by the run in "
                f"{recorded.parent} ({recorded.name}), by an earlier depth2img's naming; finish that run with the "
                "version that started it, or choose another output folder"
            )
    changed += [
        f"variation {v['name']!r}"
        for v in now["variations"]
        # (a record from before the expansions were recorded is compared without them)
        if v["name"] in before and before[v["name"]] != {k: x for k, x in v.items() if k in before[v["name"]]}
    ]
    if changed:
        raise InputError(
            f"--resume (resume=True): this job's {', '.join(changed)} "
            f"{'differs' if len(changed) == 1 else 'differ'} from the run in {recorded.parent} ({recorded.name}); "
            "its earlier images were made otherwise: restore them, or choose another output folder"
        )


def _labels_in_job(labels: dict, base: str) -> dict:
    """A record's label paths normalised (``./labels``, ``labels/`` and its absolute path are one), relative to the
    job's folder ``base`` where they lie under it (a project moved whole)."""

    def place(value):
        if not isinstance(value, str):
            return value
        path = Path(base) / os.path.expanduser(value)  # as Job.path reads it, from the record's folder
        return _in_job(path, base) or os.path.realpath(path)

    masks = labels.get("masks")
    return {k: ({n: place(v) for n, v in masks.items()} if k == "masks" and isinstance(masks, dict) else place(v))
            for k, v in labels.items()}  # fmt: skip


def _knobs_differ(earlier: dict, now: dict, job: Job) -> bool:
    """Whether the variations both runs have ran with other knobs, resolved as a generation resolves them (the job's
    over the backbone's or LoRA's over the preset's over the defaults; a knob stated at the value it ran with was a
    change, refused). The model is the same in both (compared apart). Records without the presets' expansions, or
    without a variation in common, or a backbone whose kind is not known before loading compare the job's knobs as
    given."""
    from .knobs import resolved_knobs

    def ran(record):
        given = record.get("knobs") or {}
        return {v.get("name"): resolved_knobs(v["expanded"]["knobs"], job._model_knobs, given)
                for v in record.get("variations") or []
                if isinstance(v, dict) and isinstance((v.get("expanded") or {}).get("knobs"), dict)}  # fmt: skip

    before, after = ran(earlier), ran(now)
    shared = before.keys() & after.keys()
    if not shared or job._backbone[1] is None:
        return earlier.get("knobs") != now.get("knobs")
    return any(before[name] != after[name] for name in shared)


def _resolved(job: Job) -> dict:
    from . import presets as presets_mod

    out = asdict(job)
    out["variations"] = []
    for v in variations(job):
        # what its preset expands to (the presets files, $DEPTH2IMG_PRESETS, can change between runs)
        prompt, negative, knobs = presets_mod.resolve(v.prompt, v.preset, job._presets)
        out["variations"].append(
            {**asdict(v), "expanded": {"prompt": prompt, "negative": negative, "knobs": knobs}}
        )
    out["seed_list"] = job.seed_list()
    return out


def _in_job(path, base) -> str | None:
    """``path`` relative to the job's folder (with '/'), or None outside it."""
    real, base = file_key(path), os.path.realpath(base)
    try:
        inside = os.path.normcase(os.path.commonpath([real, base])) == os.path.normcase(base)
    except ValueError:  # another drive
        return None
    return os.path.relpath(real, base).replace(os.sep, "/") if inside else None


def _copied_with_its_job(recorded: dict | None, root: Path, job: Job) -> bool:
    """Whether the output folder lies in the job's folder where the earlier run's lay in that run's job folder,
    another one: a project copied (or moved) whole."""
    then_base, then_output = (recorded or {}).get("base_dir"), (recorded or {}).get("output")
    if not (isinstance(then_base, str) and isinstance(then_output, str)):
        return False
    base = os.path.realpath(job.base_dir)
    if os.path.realpath(then_base) == base:
        return False
    then = os.path.relpath(os.path.join(then_base, os.path.expanduser(then_output)), then_base)
    return not then.startswith("..") and then == os.path.relpath(os.path.realpath(root), base)


class _EarlierNames:
    """The names an earlier run gave its sources (manifest lines), for a resumed run: a source at its recorded path
    keeps its name; so does one at the same place in the job's folder when the recorded path is gone or the project
    was copied whole (``copied``: the output folder came with the job); no other source takes any of them."""

    def __init__(self, records: list[dict], earlier_base: str, copied: bool = False):
        self.by_path: dict[str, str] = {}
        self.moved: dict[str, str] = {}
        # each source once, not once per line (a source has a line per variation, seed and attempt: its paths were
        # resolved, and looked for on disk, that many times)
        sources = dict.fromkeys(
            (r["source"], r["item"].split("/")[0], r.get("source_in_job"))
            for r in records
            if isinstance(r.get("source"), str) and isinstance(r.get("item"), str)
        )
        for source, stem, recorded_inside in sources:
            self.by_path[file_key(source)] = stem
            inside = recorded_inside or _in_job(source, earlier_base)
            if inside and (copied or not os.path.exists(source)):
                self.moved[inside] = stem
        self.all = set(self.by_path.values())

    def of(self, path, base) -> str | None:
        return self.by_path.get(file_key(path)) or self.moved.get(_in_job(path, base) or "")


def _lost(root: Path, record: dict) -> bool:
    """A manifest line whose image has been removed since (its item is made again on --resume)."""
    return bool(record.get("output")) and not (root / record["output"]).is_file()


def _settle_manifests(root: Path, chunk_of: dict[str, int] | None = None) -> None:
    """One manifest.jsonl: the processes' manifest.rankN.jsonl merged in, one line per attempt (the newest), none for
    an image removed since. ``chunk_of`` (source -> its chunk's index) puts the rank files' lines in the order one
    process writes them: by chunk, and within a chunk as written, so the merge is byte-identical to one process's
    manifest."""
    main = root / MANIFEST
    ranks = sorted(root.glob("manifest.rank*.jsonl"))
    if not ranks and not main.is_file():
        return
    # under manifest.jsonl's lock: lines another run appends meanwhile are not lost (nor a line it is writing cut)
    with locked_manifest(main, "a+b") as fh:
        _settle_locked(root, main, fh, ranks, chunk_of)


def _settle_locked(root: Path, main: Path, fh, ranks: list[Path], chunk_of: dict[str, int] | None) -> None:
    """_settle_manifests with manifest.jsonl's lock held; its lines read through ``fh``, which holds it."""
    with contextlib.ExitStack() as files:
        if _settle_open(root, main, fh, ranks, chunk_of, files):
            for m in ranks:
                m.unlink()


def _settle_open(
    root: Path, main: Path, fh, ranks: list[Path], chunk_of: dict[str, int] | None, files
) -> bool:
    """_settle_locked's work, the rank files opened into ``files`` (an ExitStack); False where nothing is settled.
    Each line's few fields are read, and the lines kept are copied as they are (whole records, ~10 KB a line held,
    took ~10 GB at the merge of a 1M-image run)."""
    fields = ("item", "attempt", "output", "source")
    had_lines = os.fstat(fh.fileno()).st_size > 0
    main_lines = manifest_index(fh, fields)
    # one process's run: only a line of an attempt given twice, or of an image removed since, is settled
    if not ranks:
        attempts = {(r.get("item"), r.get("attempt", 0)) for r in main_lines}
        if len(attempts) == len(main_lines) and not any(_lost(root, r) for r in main_lines):
            return False
    lines = {main: main_lines} if had_lines or not ranks else {}
    lines |= {m: manifest_index(files.enter_context(locked_manifest(m, "r+b")), fields)
              for m in ranks if m.is_file()}  # fmt: skip

    def attempt(r):
        return r.get("item"), r.get("attempt", 0)

    def mtime(m):
        return m.stat().st_mtime_ns

    # oldest file first, so the newest line of an attempt wins: a resumed run remakes a removed image under its
    # attempt's line, in this run's file (manifest.jsonl for one process, which a killed multi-process run's rank
    # files predate)
    newest = {attempt(r): r for m in sorted(lines, key=mtime) for r in lines[m] if not _lost(root, r)}
    # each chunk is one process's, in order in its rank file: a stable sort by chunk restores one process's order
    # (lines of sources this run does not have, an earlier killed run's, first)
    chunk_of = chunk_of or {}
    by_chunk = sorted(
        (r for m in ranks for r in lines[m]), key=lambda r: chunk_of.get(str(r.get("source")), -1)
    )
    earlier_first = main not in lines or not ranks or mtime(main) <= min(map(mtime, ranks))
    order = [*lines.get(main, ()), *by_chunk] if earlier_first else [*by_chunk, *lines[main]]
    # one line per attempt, where its first line stood: a merge killed between writing manifest.jsonl and removing
    # the rank files left both
    settled = {}
    for r in order:
        if attempt(r) in newest:
            settled.setdefault(attempt(r), newest[attempt(r)])
    if ranks or len(settled) != sum(map(len, lines.values())):  # a run that only added lines rewrites nothing
        with atomic_path(main) as tmp:
            write_lines(tmp, settled.values())
    return True


def build_index(job: Job, root: Path, labels: Labels | None = None, sources: set[str] | None = None) -> int:
    """Rebuild the layout's index files from the manifest: COCO JSON and/or imagefolder metadata.jsonl, and bring the
    YOLO and mask copies in line with it (``Labels.sync``). Returns the number of images the dataset holds.
    ``sources``: the names of the run's sources, whose dropped ones' images a warning counts."""
    labels = labels or Labels(job)
    # each kept image's fields the indexes and label copies use, not its whole record (~10 KB a line)
    records = read_manifest(root / MANIFEST, keep=lambda r: r.get("final") and r.get("output"),
                            fields=("item", "output", "source", "variation", "prompt", "preset", "seed", "item_seed",
                                    "attempt", "geometry", "size"))  # fmt: skip
    records.sort(key=lambda r: r["item"])

    # the dataset keeps what its runs made: the images of a variation the job has dropped since stay, said (a resume
    # without a preset indexed its images, and its summary counted none of them, without a word)
    def of(r):  # (a record's variation, and its source's name)
        return r.get("variation"), r["item"].split("/")[0]

    now = ({v.name for v in variations(job)}, sources)
    for i, what in enumerate(("variation", "source")):
        dropped = sorted({of(r)[i] for r in records} - now[i], key=str) if now[i] is not None else []
        if dropped:
            count = sum(of(r)[i] in dropped for r in records)
            warnings.warn(f"the dataset in {root} keeps {count} image(s) of {what}(s) this job no longer has "
                          f"({', '.join(map(str, dropped[:3]))}{' ...' if len(dropped) > 3 else ''}); remove their "
                          "images to drop them from it", Depth2ImgWarning, stacklevel=2)  # fmt: skip
    labels.sync(records, root)
    if job.layout == "imagefolder":
        lines = []
        for r in records:
            extra = {
                k: r[k] for k in ("source", "variation", "prompt", "preset", "seed", "item_seed", "attempt")
            }
            lines.append(
                json.dumps({"file_name": Path(r["output"]).name, **extra, "geometry": r["geometry"]})
            )
        with atomic_path(root / "train" / "metadata.jsonl") as tmp:
            tmp.write_text("".join(line + "\n" for line in lines))
    if job.layout == "coco" or labels.coco is not None:
        given = labels.coco or {}
        coco = {k: given[k] for k in ("info", "licenses") if k in given}  # a dataset's licence stays with it
        coco |= {"images": [], "annotations": [], "categories": given.get("categories", [])}
        image_ids, ann_ids = _earlier_coco_ids(root / "annotations.json")
        next_image = max(image_ids.values(), default=0) + 1
        next_ann = max(ann_ids.values(), default=0) + 1
        for r in records:
            # an image keeps the id an earlier index gave it (a source added on --resume renumbered those after it)
            image_id = image_ids.get(r["output"])
            if image_id is None:
                image_id, next_image = next_image, next_image + 1
            w, h = r["size"]
            source, anns = labels.coco_for(Path(r["source"]))  # its labels.coco entry, matched by path
            # the source entry's own fields (license, date_captured, ...) carried
            own = {k: v for k, v in (source or {}).items() if k not in ("id", "file_name", "width", "height")}
            coco["images"].append({**own, "id": image_id, "file_name": r["output"], "width": w, "height": h,
                                   "source_file_name": source["file_name"] if source else Path(r["source"]).name,
                                   "variation": r["variation"], "seed": r["seed"]})  # fmt: skip
            for k, ann in enumerate(anns):
                ann_id = ann_ids.get((r["output"], k))
                if ann_id is None:
                    ann_id, next_ann = next_ann, next_ann + 1
                coco["annotations"].append({**ann, "id": ann_id, "image_id": image_id})
        with atomic_path(root / "annotations.json") as tmp:
            tmp.write_text(json.dumps(coco, allow_nan=False))
    return len(records)
