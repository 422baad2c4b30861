"""``Service``: the model holder that the web app (and any long-running caller) talks to.

It loads models lazily on first use, keeps them for later requests (swapping a backbone only when another is
asked for), and runs one job at a time on its device. All work is done by the Python API.
"""

from __future__ import annotations

import gc
import hashlib
import os
import threading
import time
from pathlib import Path

from .depthmap import DepthMap
from .errors import Depth2ImgError, InputError
from .scene import SCENE_SIZE, render_driving_scene

DEPTH_CACHE_SIZE = 8  # depth maps kept for photos seen recently
# depth estimators kept loaded (the page offers five; all of them, full size, are ~0.9B parameters beside the backbone)
ESTIMATORS_KEPT = 2
# Warm-up requests, (width, height, images): the page's driving-scene sample (ui.make_sample), a square photo,
# the sample again with two images. torch compiles graphs for the first, then for any size, then for any number of
# images (its automatic dynamic shapes), so no later request waits for the compiler.
WARM_UP = ((*SCENE_SIZE, 1), (512, 512, 1), (*SCENE_SIZE, 2))


def _where(ref):
    """Where a model loads from, spelt one way: a folder by its real path, a hub id with its revision."""
    return os.path.realpath(ref.location) if ref.is_local else (ref.location, ref.revision)


def controlnet_source(controlnet, model=None):
    """Where ``controlnet``, named apart from ``model``, loads from (``_where``); None where none is named or it is
    the model's own (the one the model loads when none is named: the same images). A bad name is refused."""
    from .backends import _companion_ref, pipeline_kind
    from .registry import resolve_backbone, resolve_controlnet

    if not controlnet:
        return None
    where = _where(resolve_controlnet(controlnet))
    try:
        ref = resolve_backbone(model)
        if ref.is_local:  # with the loader's fallback for a folder outside the registry: its kind's
            path = Path(ref.location)
            own = _where(_companion_ref(ref, path, "controlnet", kind=pipeline_kind(path)))
        # a registry backbone's, pinned as _companion_ref pins it
        elif ref.entry is not None and ref.entry.controlnet:
            own = (ref.entry.controlnet, ref.entry.companion_revision)
        else:  # a hub id outside the registry: not known before it loads
            own = None
    except Depth2ImgError:  # a bad model name (refused where it loads), a folder without a ControlNet
        own = None
    return None if where == own else where


def image_settings(*, model=None, lora=None, lora_scale=1.0, controlnet=None, compile=None, dtype=None,
                   native_size=None, presets=None, preset_files=()) -> dict:  # fmt: skip
    """What a Service's images depend on besides the model, the estimator and each request's arguments, spelt one
    way: a LoRA or ControlNet by where it loads from (``_where``; the ``model``'s own ControlNet as none), the scale
    as a float, the dtype by its name, ``native_size`` as given (None: the model's own), the presets as read.
    ``run_job`` compares a Service given with its job's."""
    from .loading import dtype_name
    from .presets import load_presets
    from .registry import resolve_lora

    return {"lora": lora and _where(resolve_lora(lora)), "lora_scale": float(lora_scale),
            "controlnet": controlnet_source(controlnet, model), "compile": compile,
            "dtype": dtype_name(dtype), "native_size": native_size,
            "presets": presets if presets is not None else load_presets(preset_files)}  # fmt: skip


class Service:
    def __init__(self, *, model=None, estimator=None, device=None, dtype=None, local_files_only: bool = False,
                 preset_files=(), lora: str | None = None, lora_scale: float = 1.0, compile: str | None = None,
                 presets: dict | None = None, controlnet: str | None = None,
                 native_size: int | None = None):  # fmt: skip
        from .loading import resolve_device, resolve_dtype
        from .registry import default_estimator_for, load_registry

        # checked here, not at the first request: the app served with --device cuda:7 on a machine without one
        resolve_dtype(dtype, resolve_device(device))
        self.default_model = model or load_registry()["default_backbone"]
        self.default_estimator = estimator or default_estimator_for(self.default_model)
        self.device, self.dtype, self.local_files_only = device, dtype, local_files_only
        self.preset_files = tuple(preset_files)
        # read already (a batch job's, checked against its variations); None: from the files
        self.presets = presets
        self.lora, self.lora_scale, self.compile, self.controlnet = lora, lora_scale, compile, controlnet
        self.native_size = native_size  # None: the model's own
        self._estimators: dict = {}
        self._depths: dict = {}  # (estimator, size, image hash) -> DepthMap, least recently used first
        self._transformer = None
        self._lock = threading.RLock()  # one job at a time on the device

    def image_settings(self, model: str | None = None) -> dict:
        """``image_settings`` of the images this Service makes with ``model`` (default: its own)."""
        return image_settings(model=model or self.default_model, lora=self.lora, lora_scale=self.lora_scale,
                              controlnet=self.controlnet, compile=self.compile, dtype=self.dtype,
                              native_size=self.native_size, presets=self.presets,
                              preset_files=self.preset_files)  # fmt: skip

    # ----------------------------------------------------------------------------------------- models

    def estimator(self, name: str | None = None, progress=None):
        from .estimators import DepthEstimator
        from .registry import resolve_estimator

        name = name or self.default_estimator
        with self._lock:
            if name not in self._estimators:
                if progress:
                    progress(f"loading depth estimator {name}")
                resolve_estimator(name)  # an unknown name is refused before any loaded one is dropped
                # the least recently used goes, with its depths
                while len(self._estimators) >= ESTIMATORS_KEPT:
                    gone = next(iter(self._estimators))
                    del self._estimators[gone]
                    self._depths = {k: v for k, v in self._depths.items() if k[0] != gone}
                self._estimators[name] = DepthEstimator.from_pretrained(
                    name, device=self.device, dtype=self.dtype, local_files_only=self.local_files_only
                )
            self._estimators[name] = self._estimators.pop(name)  # most recently used last
            return self._estimators[name]

    def transformer(self, model: str | None = None, progress=None, asked: dict | None = None):
        """The SceneTransformer of ``model`` (default: the Service's), loaded in place of the one held. ``asked``: a
        request's arguments (``presets``: a variations grid's), planned for ``model`` before it replaces the one held
        (``plan_request``: a negative prompt, control knob or scheduler it cannot take, a preset's knob that fails)."""
        from .transformer import SceneTransformer

        model = model or self.default_model
        with self._lock:
            if self._transformer is None or self._transformer.name != model:
                from .registry import resolve_backbone

                # an unknown name is refused while the loaded backbone is still kept
                ref = resolve_backbone(model)
                if asked is not None:
                    # (they were refused once it had loaded: the backbone held gone, loaded again by the next request)
                    self._plan(ref, asked)
                if progress:  # (it said "first use" when another request's backbone had replaced it)
                    progress(f"loading model {model}")
                self._transformer = None  # free the old backbone before loading the next
                # (reference cycles, transformers' lazy imports among them, can keep it until the next collection)
                gc.collect()
                self._transformer = SceneTransformer.from_pretrained(
                    model, device=self.device, dtype=self.dtype, estimator=self.default_estimator,
                    local_files_only=self.local_files_only, preset_files=self.preset_files, lora=self.lora,
                    lora_scale=self.lora_scale, compile=self.compile, presets=self.presets, controlnet=self.controlnet,
                    native_size=self.native_size,
                )  # fmt: skip
            return self._transformer

    def _plan(self, ref, asked: dict) -> None:
        """What ``transform`` or ``variations`` (``asked``: its arguments, a grid's with its ``presets`` and
        ``seeds``) would refuse of backbone ``ref`` before its run, checked before it loads: the arguments' names,
        the words, seeds and number of images (once it had loaded, a request with no prompt or a seed of -1 was
        refused too), and ``plan_request``'s knobs."""
        from . import presets as presets_mod
        from .io import check_polarity
        from .knobs import DEFAULT_KNOBS, check_num_images, request_seeds
        from .registry import resolve_companions
        from .transform_run import plan_request
        from .transformer import _check_arguments, check_grid

        asked = dict(asked)
        prompt, negative = asked.pop("prompt", None), asked.get("negative_prompt")
        check_polarity(asked.pop("depth_polarity", None), "depth_polarity")
        if "seeds" in asked:  # a grid
            rows, seeds = check_grid(asked.pop("presets"), asked.pop("seeds"), asked)
            request_seeds(seeds, 1)
        else:
            _check_arguments("transform", asked)
            rows = [asked.get("preset")]
            request_seeds(asked.get("seed"), check_num_images(asked.get("num_images", 1)))
        lora, controlnet = resolve_companions(self.lora, self.controlnet)
        presets = self.presets if self.presets is not None else presets_mod.load_presets(self.preset_files)
        options = dict(presets=presets, lora=self.lora, lora_scale=self.lora_scale, compile=self.compile)
        given = {k: asked[k] for k in DEFAULT_KNOBS if asked.get(k) is not None}
        for preset in rows or [None]:
            presets_mod.check_words(prompt, preset, negative)
            plan_request(None, ref, lora, controlnet, options, prompt, preset, negative, given,
                         asked.get("scheduler"))  # fmt: skip

    def warm_up(self, progress=None) -> float:
        """Before the first visitor: load the default model and, when it is compiled, generate the ``WARM_UP``
        requests (two steps each), so that no visitor waits for the compiler (a minute or more on a GPU, each).
        Afterwards other sizes and numbers of images, img2img or txt2img compile nothing (test); only one image
        without classifier-free guidance (guidance <= 1), a batch of one that torch specialises, compiles once more.
        Returns the seconds it took."""
        started = time.perf_counter()
        st = self.transformer(progress=progress)
        if self.compile:
            for width, height, images in WARM_UP:
                if progress:
                    progress(f"warm-up: compiling for {width}x{height}, {images} image(s)")
                scene = render_driving_scene(width, height, seed=0)
                with self._lock:
                    st.transform(
                        scene.image, "warm-up", depth=scene.depth, seed=0, num_images=images, steps=2
                    )
        return time.perf_counter() - started

    # ----------------------------------------------------------------------------------------- work

    def depth(self, image, *, estimator: str | None = None, depth_file: str | Path | None = None,
              polarity: str | None = None, progress=None) -> DepthMap:  # fmt: skip
        """The user's depth file (at the image's size) if given, else the estimator's depth."""
        from .io import depth_for_image

        if image is None:
            raise InputError("upload a photo first")
        from .io import check_image

        check_image(image)  # an array or a path was an AttributeError further on
        if depth_file:
            return depth_for_image(depth_file, image.size, polarity or None)
        # The page asks for the same photo's depth on upload, on Generate and on Variations: estimate it once.
        # mode and palette too: an L and a P image can hold the same bytes
        pixels = hashlib.sha1(image.tobytes() + bytes(image.getpalette() or ())).hexdigest()
        key = (estimator or self.default_estimator, image.mode, image.size, pixels)
        est = self.estimator(estimator, progress)
        with self._lock:
            if key not in self._depths:
                if len(self._depths) >= DEPTH_CACHE_SIZE:
                    self._depths.pop(next(iter(self._depths)))
                self._depths[key] = est(image)
            # most recently used last: a photo in use had its depth estimated again after 8 other uploads
            self._depths[key] = self._depths.pop(key)
            return self._depths[key]

    def transform(self, image, *, model: str | None = None, estimator: str | None = None, depth_file=None,
                  polarity: str | None = None, progress=None, **kwargs):  # fmt: skip
        depth = self.depth(
            image, estimator=estimator, depth_file=depth_file, polarity=polarity, progress=progress
        )
        with self._lock:  # held from choosing the backbone to its run: no other thread's switch in between
            st = self.transformer(model, progress, asked=kwargs)
            return st.transform(image, depth=depth, progress=True, **kwargs)

    def variations(self, image, *, presets, seeds, model=None, estimator=None, depth_file=None, polarity=None,
                   progress=None, **kwargs):  # fmt: skip
        depth = self.depth(
            image, estimator=estimator, depth_file=depth_file, polarity=polarity, progress=progress
        )
        with self._lock:
            st = self.transformer(model, progress, asked={**kwargs, "presets": presets, "seeds": seeds})
            return st.variations(image, presets=presets, seeds=seeds, depth=depth, progress=True, **kwargs)
