"""``SceneTransformer``: the Python API that CLI, app and batch jobs call.

Data flows one way: image -> DepthMap (estimator, stereo or the user's) -> conditioning at generation
size -> diffusers backbone -> images mapped back to the input's exact size, with full metadata.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from . import presets as presets_mod
from .depthmap import DepthMap
from .errors import (
    Depth2ImgError,
    Depth2ImgWarning,
    GenerationError,
    InputError,
    OutOfMemory,
    Stopped,
    float16_hint,
)
from .io import check_image, to_rgb
from .knobs import (
    CONTROL_KNOBS,
    DEFAULT_KNOBS,
    check_batch_size,
    check_compile,
    check_num_images,
    denoising_steps,
    request_seeds,
)
from .loading import resolve_device, resolve_dtype
from .outputs import CPU_THREADS, progress_bar
from .registry import default_estimator_for, is_tiny, resolve_backbone

# the event that stops this thread's generations (stop_when_set)
_STOP: contextvars.ContextVar = contextvars.ContextVar("depth2img_stop", default=None)


@contextlib.contextmanager
def stop_when_set(event):
    """In this block, this thread's generations stop at the end of their current denoising step once ``event`` (a
    ``threading.Event``) is set, raising ``Stopped``: nothing is returned or written for them. The web page's Stop
    button; a script stops with Ctrl-C."""
    if not callable(getattr(event, "is_set", None)):
        raise InputError(f"stop_when_set takes a threading.Event, got {type(event).__name__}")
    token = _STOP.set(event)
    try:
        yield
    finally:
        _STOP.reset(token)


FLUX_GUIDANCE = 10.0  # FLUX.1-Depth-dev's model card uses guidance_scale 10
# Images per denoising batch in variations() (the app's grid of presets x seeds): kept small, as a grid is
# interactive work on any GPU; a batch that runs out of memory falls back to one row at a time
VARIATIONS_BATCH = 4


def backbone_knobs(kind: str | None, lora=None) -> dict:
    """The knobs a backbone of pipeline ``kind`` (None: not known before loading) or its few-step ``lora`` (a
    ModelRef) sets over a preset's: Flux's guidance, then the LoRA's registry entry's (steps, guidance). Serves
    ``SceneTransformer``, ``run_transform`` and job files before loading (each had its copy; the CLI's left Flux's
    guidance out)."""
    knobs = {"guidance_scale": FLUX_GUIDANCE} if kind == "flux-control" else {}
    return {**knobs, **(lora.entry.knobs if lora is not None and lora.entry is not None else {})}


@functools.lru_cache(maxsize=64)
def _dropped_words(tokenizer, prompt: str, room: int) -> str:
    """The end of ``prompt`` that a text encoder taking ``room`` tokens does not see, as written: from the first word
    whose tokens do not all fit (found by tokenizing prefixes). The tokenizer's decode of the tokens dropped had been
    quoted: lowercased, spaced out, and longer than the prompt ("14,876 characters" dropped of a 10,000-character
    one). Cached: a batch job's items share their prompts."""
    ends = [m.end() for m in re.finditer(r"\S+", prompt)]
    fit, over = 0, len(ends)  # the first `fit` words fit; `over` words do not
    while over - fit > 1:
        mid = (fit + over) // 2
        if len(tokenizer(prompt[: ends[mid - 1]], add_special_tokens=False).input_ids) <= room:
            fit = mid
        else:
            over = mid
    return prompt[ends[fit - 1] if fit else 0 :].lstrip()


@dataclass
class TransformResult:
    images: list  # PIL RGB at the input's exact size
    depth: DepthMap  # at the input size
    _control_image: object  # the control image, or None: made from ``depth`` when first asked for
    seeds: list[int]
    metadata: list[dict]  # one per image
    raw: np.ndarray | None = (
        None  # (N, h, w, 3) float in [0, 1] at generation size, as returned by the pipeline
    )
    warnings: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)  # seconds: "diffusion_s" (inside the pipeline), "total_s"

    @property
    def control_image(self):
        """PIL RGB 8-bit view of the conditioning, at the input size. Made on first use, outside the denoising loop
        (~20-40 ms for a 1920x1080 depth): batch jobs never ask for it."""
        if self._control_image is None:
            self._control_image = self.depth.control_pil
        return self._control_image


@dataclass
class Request:
    """One checked transform, ready to run (``SceneTransformer.prepare``): a photo, its depth, the resolved
    prompt and knobs, and its seeds. Requests with the same ``key`` can share one denoising batch."""

    image: object  # PIL RGB at the input size
    depth: DepthMap  # at the input size
    gen_image: object  # PIL RGB at generation size
    gen_depth: DepthMap  # at generation size
    prompt: str  # with the preset's words
    user_prompt: str
    preset: str
    negative: str
    knobs: dict
    scheduler: str
    seeds: list[int]
    notes: list[str] = field(default_factory=list)
    # What a batch must share: generation size, scheduler, knobs (and, on SDXL, whether a negative prompt is
    # given); prompts, photos, depths and seeds may differ.
    key: tuple = ()

    def with_seeds(self, seeds) -> Request:
        """The same request for other seeds (the photo and depth objects are shared, not copied)."""
        if not isinstance(seeds, (list, tuple)):  # with_seeds(5) was a raw TypeError
            raise InputError(f"seeds must be a list of integers, got {type(seeds).__name__} {seeds!r}")
        return replace(self, seeds=request_seeds(seeds, 1))


class Sized(NamedTuple):
    """A photo and its DepthMap at the input size, with their copies at generation size
    (``SceneTransformer.at_generation_size``); ``prepare(reuse=...)`` takes it."""

    image: object
    depth: DepthMap
    gen_image: object
    gen_depth: DepthMap


def generation_size(width: int, height: int, native: int, multiple: int) -> tuple[int, int]:
    """A size near the backbone's native pixel budget (native x native) with the input's aspect ratio,
    each side a multiple of ``multiple``. Outputs are mapped back to (width, height) exactly."""
    scale = native / math.sqrt(width * height)
    w = max(multiple, round(width * scale / multiple) * multiple)
    h = max(multiple, round(height * scale / multiple) * multiple)
    return w, h


def _device_label(device) -> str:
    """The device as a manifest records it: its type and, for a GPU, its name (the same seed on another device type,
    or GPU, or dtype gives a close image, not the same one)."""
    import torch

    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def _versions() -> dict:
    """What made an output's pixels: Pillow's resizes and decoding and numpy too (a review of reproducibility,
    2026-11-28, found them missing)."""
    import diffusers
    import numpy
    import PIL
    import torch
    import transformers

    from . import __version__

    return {"depth2img": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "pillow": PIL.__version__,
            "numpy": numpy.__version__}  # fmt: skip


class SceneTransformer:
    """Change a photo's style, lighting, season or weather by prompt while its depth keeps the geometry."""

    def __init__(self, backend, *, estimator=None, device, dtype, native_size: int, name: str,
                 local_files_only: bool = False, preset_files=(), estimator_dtype=None, presets=None):  # fmt: skip
        self.backend = backend
        # held while denoising: threads may share one SceneTransformer (their runs take turns; prepare runs freely)
        self._lock = threading.RLock()
        self._estimator = estimator
        # an estimator loaded by name: the dtype asked for (None: its default)
        self.estimator_dtype = estimator_dtype
        self.device = device
        self.device_label = _device_label(device)
        self.dtype = dtype
        self.native_size = native_size
        self.name = name
        self.local_files_only = local_files_only
        # ``presets``: already read from the files (from_pretrained reads them before the backbone loads)
        self.presets = presets_mod.load_presets(preset_files) if presets is None else presets
        # The knobs this backbone or its few-step LoRA needs (Flux's guidance, LCM's steps and guidance): a preset's
        # knobs, tuned for SD's defaults, do not override them; only explicit arguments do.
        self.model_knobs = backbone_knobs(backend.kind)
        self.default_knobs = {**DEFAULT_KNOBS, **self.model_knobs}

    @classmethod
    def from_pretrained(cls, name=None, *, device=None, dtype=None, estimator=None, local_files_only: bool = False,
                        native_size: int | None = None, offload: str | None = None, vae_tiling: bool = False,
                        vae_slicing: bool = False, attention: str = "sdpa", preset_files=(), lora: str | None = None,
                        lora_scale: float = 1.0, compile: str | None = None, presets: dict | None = None,
                        controlnet: str | os.PathLike | None = None):  # fmt: skip
        """Load a backbone: registry name (``sd15-depth`` default, ``sd2-depth``, ``sdxl-depth``, ``flux-depth``,
        ``flux-depth-lora``), ``tiny`` / ``tiny/<entry>``, a hub id or a local folder. ``estimator`` is a name for the
        depth model (loaded on first need) or a loaded ``DepthEstimator``. ``lora`` adds a few-step LoRA (``lcm-sd15``,
        ``lcm-sdxl``, ``hyper-sd15-8step``, a hub id or folder): fused in, with its scheduler and step count as the new
        defaults. ``controlnet``: a depth ControlNet (hub id or folder) instead of the backbone's own, for SD1.5 and
        SDXL backbones (a fine-tune; diffusers' smaller SDXL ones). ``compile`` (a torch.compile mode) turns on the fast
        path: channels-last (on GPUs), fused QKV projections and the UNet, ControlNet and VAE decoder compiled; the
        first batch compiles (a minute or more), the first at a second image size once more (torch's dynamic shapes: for
        any size), the later ones run faster (on an H200, default mode at batch 16: 189 against 279 ms an image; the
        bench's fast path, in bf16), and a smaller batch of a shape run before is padded to the next larger batch run at
        it rather than compiled again. Other knobs (prompt, seed, steps, strength, guidance, control scale) compile
        nothing new. ``native_size``: the side of the square whose pixel count a photo is generated at (its aspect
        kept); default the registry entry's, else the pipeline's own (512 for SD1.5 and SD2, 1024 for SDXL and Flux).
        ``presets``: the presets already read (``load_presets``) by a caller that checked names against them, instead of
        reading ``preset_files``."""
        from .backends import check_at_hand, check_memory_options, load_backend
        from .estimators import DepthEstimator
        from .knobs import check_lora_scale, check_native_size
        from .registry import resolve_companions
        from .tiny import TINY_NATIVE_SIZE

        # every argument is checked before the backbone (gigabytes) loads
        check_compile(compile, offload=offload)
        if native_size is not None:
            native_size = check_native_size(native_size)
        ref = resolve_backbone(name)
        device = resolve_device(device)
        check_memory_options(device=device, offload=offload, attention=attention)
        lora_ref, controlnet_ref = resolve_companions(lora, controlnet)
        check_lora_scale(lora_scale, lora)
        resolve_dtype(dtype, device)  # (a bad one was found once the backbone's files were fetched)
        # loaded on first need: a misspelt name, or a folder that is not there, failed at the first transform
        if isinstance(estimator, (str, os.PathLike)):
            from .registry import resolve_estimator

            resolve_estimator(estimator)
        elif estimator is not None and not isinstance(estimator, (os.PathLike, DepthEstimator)):
            # (5 was taken, and failed at the first transform)
            raise InputError(
                f"estimator must be a registry name, a folder or a DepthEstimator, got {estimator!r}"
            )
        # before the backbone loads: a bad file failed after it
        if presets is None:  # (``presets``: read already, by a caller that checked names against them)
            presets = presets_mod.load_presets(preset_files)
        else:
            presets_mod.check_presets(presets)
        # a LoRA or ControlNet that does not fit a backbone of known kind; offline, a repo it needs beside its own
        # missing from the cache: found once the backbone had loaded
        check_at_hand(ref, local_files_only=local_files_only, controlnet=controlnet_ref, lora=lora_ref)
        backend = load_backend(ref, dtype=dtype, device=device, local_files_only=local_files_only,
                               controlnet=controlnet_ref)  # fmt: skip
        asked, dtype = dtype, backend.dtype
        lora_knobs = {}
        if lora_ref is not None:
            backend.load_speed_lora(lora_ref, scale=lora_scale, local_files_only=local_files_only)
            lora_knobs = dict(lora_ref.entry.knobs) if lora_ref.entry else {}
            # (a local copy of LCM ran at 30 steps, full guidance, the default scheduler)
            if lora_ref.entry is None:
                warnings.warn(
                    f"lora {lora}: no registry entry, so its scheduler, steps and guidance are not known: the "
                    "backbone's defaults apply where you give none (a few-step LoRA needs its own, LCM: scheduler "
                    "lcm, 4 steps, guidance_scale 1)",
                    Depth2ImgWarning,
                    stacklevel=2,
                )
        backend.memory(
            device=device,
            offload=offload,
            vae_tiling=vae_tiling,
            vae_slicing=vae_slicing,
            attention=attention,
        )
        if offload in (None, "none"):
            for pipe in backend.pipes.values():
                pipe.to(device)
        if compile:
            # fusing QKV sets diffusers' fused SDPA processors everywhere: it would undo xformers attention
            backend.optimize(compile_mode=compile, fuse_qkv=attention != "xformers")
        if native_size is None:
            tiny = is_tiny(ref.name)
            # a registry entry's; else the pipeline's own (a local SDXL folder generated at 512 a side)
            native_size = (
                TINY_NATIVE_SIZE if tiny else (ref.entry and ref.entry.native_size) or backend.native_size
            )
        if estimator is None:
            estimator = default_estimator_for(ref.name)
        st = cls(backend, estimator=estimator, device=device, dtype=dtype, native_size=native_size,
                 name=ref.name, local_files_only=local_files_only, presets=presets, estimator_dtype=asked)  # fmt: skip
        st.model_knobs.update(lora_knobs)
        st.default_knobs.update(lora_knobs)
        return st

    # ------------------------------------------------------------------------------------------ depth

    @property
    def estimator(self):
        """The depth estimator, loaded on first use on this transformer's device."""
        from .estimators import DepthEstimator

        if not isinstance(self._estimator, DepthEstimator):
            self._estimator = DepthEstimator.from_pretrained(
                self._estimator,
                device=self.device,
                dtype=self.estimator_dtype,
                local_files_only=self.local_files_only,
            )
        return self._estimator

    def depth_for(self, image, depth=None, *, depth_polarity: str | None = None) -> DepthMap:
        """The DepthMap used for ``image``: the given one (DepthMap, array or file) at the image's size, or estimated."""
        from .io import check_polarity, depth_for_image

        check_image(image)
        # with no depth file too (it was ignored there, even "bogus")
        check_polarity(depth_polarity, "depth_polarity", missing="a depth" if depth is None else None)
        if depth is None:
            return self.estimator(image)
        return depth_for_image(depth, image.size, depth_polarity)

    # ------------------------------------------------------------------------------------------ generation

    def _prompt_warnings(self, prompt: str, what: str) -> list[str]:
        name, limit = self.backend.text_limit()
        tokenizer = self.backend.checking_tokenizer(name)
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        room = limit - 2 if self.backend.kind != "flux-control" else limit - 1
        if len(ids) <= room:
            return []
        dropped = _dropped_words(tokenizer, prompt, room)
        # its ends: all of a 10,000-character prompt's quoted filled the web page (and each output's metadata)
        if len(dropped) > 80:
            dropped = f"{dropped[:40]!r} ... {dropped[-30:]!r} ({len(dropped):,} characters)"
        else:
            dropped = repr(dropped)
        return [f"{what} is {len(ids)} tokens; the text encoder takes {room}: truncated {dropped}"]

    def transform(self, image, prompt: str | None = None, *, progress: bool = False, skip_controlnet: bool = True,
                  **kwargs) -> TransformResult:  # fmt: skip
        """Transform ``image`` (PIL) by ``prompt`` and/or ``preset`` (``winter+night``), conditioned on its depth.
        The arguments are those of ``prepare``; one denoising batch holds all of the seeds' images.

        ``seed`` is an int (images use seed, seed+1, ...), a list of ints (one per image) or None (random,
        recorded). ``strength`` 1.0 generates from the depth alone (txt2img; sd2-depth, img2img only, still starts
        from the photo noised at the first step, which leaves a trace of it); below 1 starts from the photo.
        ``feature_cache`` N > 1 reuses the UNet's deep features on all but every N-th step (faster, not the same
        image: a quality trade, see ``depth2img.featurecache``).
        """
        _check_arguments("transform", kwargs)
        started = time.perf_counter()
        result = self.run(
            [self.prepare(image, prompt, _stacklevel=3, **kwargs)],
            progress=progress,
            skip_controlnet=skip_controlnet,
        )[0]
        result.timings["total_s"] = time.perf_counter() - started
        return result

    def prepare(self, image, prompt: str | None = None, *, preset: str | None = None,
                negative_prompt: str | None = None, depth=None, depth_polarity: str | None = None,
                seed=None, num_images: int = 1, steps: int | None = None, strength: float | None = None,
                guidance_scale: float | None = None, control_scale: float | None = None,
                control_start: float | None = None, control_end: float | None = None,
                feature_cache: int | None = None, scheduler: str | None = None,
                reuse: Request | Sized | None = None, _stacklevel: int | None = 2) -> Request:  # fmt: skip
        """Check a transform's inputs and resolve its prompt, knobs, seeds and depth (estimated here when not
        given) without denoising; ``run`` then batches any number of such requests. ``reuse``: an earlier request
        (or ``at_generation_size``'s result) for the same photo and DepthMap objects, whose copies at generation
        size this one shares (variations of one photo then resize it once, and a batch passes it to the pipeline
        once; a background thread can resize ahead)."""

        # 1. Check inputs
        presets_mod.check_words(prompt, preset, negative_prompt)
        # converted as load_image converts a file's (alpha on white, 16-bit grey scaled)
        image = to_rgb(check_image(image))
        final_prompt, preset_negative, preset_knobs = presets_mod.resolve(prompt, preset, self.presets)
        negative = presets_mod.add_phrases(negative_prompt or "", after=", " + preset_negative)
        given = {"steps": steps, "strength": strength, "guidance_scale": guidance_scale,
                 "control_scale": control_scale, "control_start": control_start, "control_end": control_end,
                 "feature_cache": feature_cache}  # fmt: skip
        from .backends import check_backbone_knobs, check_scheduler_steps, knob_sources, plan_knobs

        # (a preset's knobs this backbone has no use for at their defaults; txt2img, strength 1, leaves every step);
        # an error from a preset's knob says so (as the CLI's does)
        blame = knob_sources([(f"preset {preset}", preset_knobs), (None, self.model_knobs)], given)
        knobs = plan_knobs(self.backend.traits, preset_knobs, self.model_knobs, given, blame=blame)
        # (after the plan's checks of each knob's type and range: feature_cache="3" was compared with 1)
        check_backbone_knobs(self.backend.traits, self.name, given, negative_prompt)
        # a preset's negatives do not apply where the backbone takes none, nor without classifier-free guidance
        # (guidance <= 1: diffusers encodes no negative), and outputs record what was used
        unguided = self.backend.takes_negative_prompt and knobs["guidance_scale"] <= 1
        if unguided or not self.backend.takes_negative_prompt:
            negative = ""
        seeds = request_seeds(seed, check_num_images(num_images))
        num_images = len(seeds)
        scheduler_name, chosen = self.backend.scheduler(scheduler)
        check_scheduler_steps(scheduler_name, knobs["steps"], chosen.config.get("original_inference_steps"))
        notes = self._prompt_warnings(final_prompt, "prompt")
        if negative:
            notes += self._prompt_warnings(negative, "negative prompt")
            clash = presets_mod.contradictions(final_prompt, negative)
            if clash:
                shown = ", ".join(repr(p) for p in clash[:3]) + (
                    f" and {len(clash) - 3} more" if len(clash) > 3 else ""
                )
                # named where a preset brought a phrase in, not for the user's own words on both sides
                own = set(presets_mod.contradictions(prompt or "", negative_prompt or ""))
                notes.append(
                    f"the prompt and the negative prompt both name {shown}"
                    + (f" (preset {preset})" if preset and not own >= set(clash) else "")
                    + ": the model is steered towards and away from them at once"
                )
        if "control_start" in self.backend.control_knobs and knobs["control_scale"] > 0:
            start, end = knobs["control_start"], knobs["control_end"]
            n = denoising_steps(knobs["steps"], knobs["strength"], self.backend.flow_matching)

            # diffusers' controlnet_keep: step i runs the ControlNet if i/n >= start and (i+1)/n <= end
            def held(count):
                return any(i / count >= start and (i + 1) / count <= end for i in range(count))

            # (PNDM counts one timestep more: a window that holds a step of either count is taken as held)
            if not (held(n) or held(n + 1)):
                notes.append(
                    f"control_start {start:g} to control_end {end:g} holds none of the {n} denoising steps: the "
                    "ControlNet never runs and the depth does not steer the image; widen the window"
                )
        if unguided and negative_prompt:
            notes.append(
                f"negative prompt unused: guidance_scale {knobs['guidance_scale']:g} <= 1 turns classifier-free "
                "guidance off"
            )
        # _stacklevel None: the notes only travel in the request (a caller forwards them from result.warnings)
        for note in notes if _stacklevel is not None else ():
            warnings.warn(note, Depth2ImgWarning, stacklevel=_stacklevel)

        # 2. Depth at the input size, then conditioning at generation size
        depth_map = self.depth_for(image, depth, depth_polarity=depth_polarity)
        # what its reader warned of (a flat depth, a file's recorded polarity kept), warned already: for the outputs'
        # "warnings", which had none of it (a dataset could not find its outputs that kept no geometry)
        notes += [n for n in depth_map.notes if n not in notes]
        if not (isinstance(reuse, (Request, Sized)) and reuse.image is image and reuse.depth is depth_map):
            reuse = self.at_generation_size(image, depth_map)
        gen_image, gen_depth = reuse.gen_image, reuse.gen_depth
        gen_w, gen_h = gen_image.size
        key = (gen_w, gen_h, scheduler_name, tuple(sorted(knobs.items())),
               bool(negative) if self.backend.empty_negative_is_zeros else None)  # fmt: skip
        return Request(image=image, depth=depth_map, gen_image=gen_image, gen_depth=gen_depth, prompt=final_prompt,
                       user_prompt=prompt or "", preset=preset or "", negative=negative, knobs=knobs,
                       scheduler=scheduler_name, seeds=seeds, notes=notes, key=key)  # fmt: skip

    def at_generation_size(self, image, depth: DepthMap) -> Sized:
        """``image`` (PIL RGB) and its DepthMap at the input size, with their copies at the size this backbone
        generates at (Lanczos for the photo). CPU work that touches no model: a background thread can do it
        ahead of ``prepare`` (~26 ms for a 1920x1080 photo at SD1.5's 688x384)."""
        from PIL import Image

        width, height = image.size
        gen_w, gen_h = generation_size(width, height, self.native_size, self.backend.size_multiple)
        sized = (
            Sized(image, depth, image, depth)
            if (gen_w, gen_h) == (width, height)
            else Sized(image, depth, image.resize((gen_w, gen_h), Image.LANCZOS), depth.resized(gen_w, gen_h))
        )
        # normalised here (kept by the DepthMap), not by the control image the denoising thread makes (float64,
        # ~4 ms per 624x416 depth in a review's measurement)
        sized.gen_depth.normalized()
        return sized

    def run(self, requests: list[Request], *, progress: bool = False, skip_controlnet: bool = True) -> list[TransformResult]:  # fmt: skip
        """Denoise prepared requests, batching across photos, prompts and seeds: one pipeline call per distinct
        ``Request.key`` holds every image of the requests sharing it. Returns one TransformResult per request,
        in order. Image i of a request uses its seed i on a CPU generator, so a batch changes no image beyond
        batched-kernel rounding (tested)."""
        bad = (
            [requests]
            if not isinstance(requests, (list, tuple))
            else [r for r in requests if not isinstance(r, Request)]
        )
        if bad:
            got = bad[0]
            raise InputError(
                f"requests must be a list of Request objects from prepare(), got {type(got).__name__}"
            )
        results: list[TransformResult | None] = [None] * len(requests)
        with self._lock:  # one run at a time: the pipelines' scheduler and call state are shared
            for members in _batchable(requests):
                for i, result in zip(
                    members, self._run_group([requests[i] for i in members], progress, skip_controlnet)
                ):
                    results[i] = result
        return results

    def run_isolated(self, requests: list[Request], *, progress: bool = False,
                     on_split: Callable[[Depth2ImgError, int], None] | None = None) -> list:  # fmt: skip
        """``run(requests)``, with failures kept to their own request: if the batch fails (out of memory, or one
        request's bad input), it is halved and each half retried, down to a request alone, whose error takes its
        place. Each image depends only on its seed, so a split changes an image only by batched-kernel rounding
        (within 1e-5; outputs record their ``batch``). ``on_split(error, half)`` hears
        of each split. Returns TransformResults and Depth2ImgErrors, one per request, in order."""
        if not isinstance(requests, (list, tuple)):
            raise InputError(
                f"requests must be a list of Request objects from prepare(), got {type(requests).__name__}"
            )
        if not requests:
            return []
        try:
            return self.run(requests, progress=progress)
        except Stopped:  # (not a failure of one request: halving would run the rest again)
            raise
        except Depth2ImgError as err:
            if len(requests) == 1:
                return [err]
            half = len(requests) // 2
            if on_split is not None:
                on_split(err, half)
        return self.run_isolated(requests[:half], progress=progress, on_split=on_split) + self.run_isolated(
            requests[half:], progress=progress, on_split=on_split
        )

    def _run_group(
        self, group: list[Request], progress: bool, skip_controlnet: bool
    ) -> list[TransformResult]:
        import torch

        started = time.perf_counter()
        first = group[0]
        knobs = first.knobs
        self.backend.set_scheduler(first.scheduler)
        per_image = [req for req in group for _ in req.seeds]
        # CPU generators: the same seed gives the same starting noise on any device
        generators = [torch.Generator("cpu").manual_seed(s) for req in group for s in req.seeds]
        bar = progress_bar(total=denoising_steps(knobs["steps"], knobs["strength"], self.backend.flow_matching),
                   desc="denoise", unit="step",
                   disable=not progress)  # fmt: skip

        stop = _STOP.get()

        def on_step(pipe, i, t, kwargs):
            if stop is not None and stop.is_set():
                raise Stopped(f"stopped after step {i + 1} of {bar.total}; no image was made")
            bar.update(1)
            if bar.n >= bar.total:  # its rate the steps', not theirs and the VAE decode's after them
                bar.close()
            return kwargs

        t_diffusion = time.perf_counter()
        self.backend.last_batch = len(per_image)  # the backend adds a compiled shape's padding
        try:
            raw, pixels = self._run_backend(
                images=[r.gen_image for r in per_image], depths=[r.gen_depth for r in per_image],
                prompts=[r.prompt for r in per_image], negative_prompts=[r.negative for r in per_image],
                generators=generators, knobs=knobs, callback=on_step, skip_controlnet=skip_controlnet,
            )  # fmt: skip
        finally:
            bar.total = bar.n  # where Flux ran a step more than counted, or a failure stopped it early
            bar.close()
        diffusion_s = time.perf_counter() - t_diffusion
        broken = [not np.isfinite(arr).all() for arr in raw]
        if any(broken):  # saved, NaN becomes a black PNG that looks like an image
            hint = float16_hint(self.dtype, "transform --dtype, the API's dtype=")
            raise GenerationError(
                f"the pipeline's output has NaN or inf pixels in {sum(broken)} of {len(raw)} image(s); "
                f"nothing was written{hint}"
            )

        # Back to each input's exact size (Lanczos), on up to CPU_THREADS threads: Pillow's resize releases the GIL,
        # and the next batch waits on it (~32-44 ms per 1920x1080 output on one core)
        sized = _to_input_sizes(pixels, [req.image.size for req in per_image])
        results, start = [], 0
        b = self.backend
        for req in group:
            images = sized[start : start + len(req.seeds)]
            common = self._common_metadata(req, b)
            # batch: the images denoised together (batched kernels round by batch size: within 1e-5 of alone)
            # each its own copy: the nested backbone and depth records were one dict shared by all images
            metadata = [
                {**copy.deepcopy(common), "seed": s, "index": i, "batch": self.backend.last_batch}
                for i, s in enumerate(req.seeds)
            ]
            share = len(req.seeds) / len(per_image)  # of the batch's time
            timings = {"diffusion_s": diffusion_s * share, "total_s": (time.perf_counter() - started) * share,
                       "batch": len(per_image)}  # fmt: skip
            results.append(TransformResult(images, req.depth, None, list(req.seeds), metadata,
                                           raw[start : start + len(req.seeds)], list(req.notes), timings))  # fmt: skip
            start += len(req.seeds)
        return results

    def _common_metadata(self, req: Request, b) -> dict:
        # the knobs the backbone has (SD2's and Flux's records had listed the ControlNet's at their defaults, which
        # steered nothing there)
        knobs = {k: v for k, v in req.knobs.items() if k not in CONTROL_KNOBS or k in b.control_knobs}
        width, height = req.image.size
        companion = b.companion_ref
        controlnet = companion if companion and b.has_controlnet else None
        lora = companion if getattr(b, "uses_lora", False) else None
        return {
            "prompt": req.prompt, "user_prompt": req.user_prompt, "negative_prompt": req.negative, "preset": req.preset,
            **knobs, "scheduler": req.scheduler, "mode": b.mode(knobs["strength"]),
            "backbone": {"name": self.name, "pipeline": b.kind, "id": b.ref.location, "revision": b.ref.revision,
                         "controlnet": controlnet and controlnet.location,
                         "controlnet_revision": controlnet and controlnet.revision,
                         "lora": lora and lora.location, "lora_revision": lora and lora.revision,
                         "speed_lora": b.speed_lora, "fast_path": b.fast_path, "memory": b.memory_options,
                         "licence": b.ref.entry.licence if b.ref.entry else None},
            # with what made it: an estimator's id, revision and dtype; a file's polarity; a scene's seed...
            # a depth file by its absolute path, an array as "array", the caller's own DepthMap of no source as
            # "DepthMap" (it was "", which said nothing; named here: the DepthMap itself is passed on as it is)
            "depth": {**req.depth.meta, "source": req.depth.source or "DepthMap", "kind": req.depth.kind},
            "input_size": [width, height], "generation_size": [req.gen_depth.width, req.gen_depth.height],
            # (it sets the generation size: an output made at another could not be made again from its record)
            "native_size": self.native_size,
            "dtype": str(self.dtype).replace("torch.", ""), "device": self.device_label, "versions": _versions(),
            "warnings": req.notes,
        }  # fmt: skip

    def _run_backend(self, **kwargs):
        """The backend call, with out-of-memory turned into one line that names the options that fix it."""
        import torch

        try:
            return self.backend(**kwargs)
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            depth, n = kwargs["depths"][0], len(kwargs["generators"])
            raise OutOfMemory(
                f"out of GPU memory generating {n} image(s) at {depth.width}x{depth.height} with {self.name}: "
                "try fewer images (--num-images, num_images=), --offload model or group (offload=), --vae-tiling "
                "(vae_tiling=True)"
                + (", or --dtype float16 (dtype=)" if self.dtype == torch.float32 else ""),
                batch=n,
            ) from None

    def variations(self, image, *, presets: list[str] | None = None, seeds: list[int] | None = None,
                   prompt: str | None = None, depth=None, depth_polarity: str | None = None,
                   batch_size: int = VARIATIONS_BATCH, progress: bool = False, **knobs):  # fmt: skip
        """A grid: every preset (or the prompt alone) x every seed, from one depth computed once.

        Presets sharing knobs share denoising batches of up to ``batch_size`` images (whole rows; a row with
        more seeds than that is a batch of its own). Out of memory, a batch's rows are split (``run_isolated``).
        ``presets``: a list of preset names (a string is one preset, e.g. "rain+night"); ``seeds``: a list (default
        [0]: a grid is for comparing presets, so each row shares the seed).
        Returns a list of rows, one per preset, each a TransformResult holding one image per seed."""
        check_batch_size(batch_size)
        presets, seeds = check_grid(presets, seeds, knobs)
        image = to_rgb(check_image(image))  # once, so that the rows share its copy at generation size
        depth_map = self.depth_for(image, depth, depth_polarity=depth_polarity)
        requests, req = [], None
        for preset in presets or [None]:
            req = self.prepare(image, prompt, preset=preset, depth=depth_map, seed=seeds, reuse=req,
                               _stacklevel=3, **knobs)  # fmt: skip
            requests.append(req)
        rows: list[TransformResult | None] = [None] * len(requests)
        for batch in _batchable(requests, max_images=batch_size):
            for i, result in zip(batch, self.run_isolated([requests[i] for i in batch], progress=progress)):
                if isinstance(result, Depth2ImgError):
                    raise result
                rows[i] = result
        return rows


def check_grid(presets, seeds, knobs: dict) -> tuple[list | None, list[int]]:
    """``variations``' rows and seeds checked, as lists (a string is one preset; no seeds is [0]), and its other
    arguments' names (``knobs``; those of ``prepare``); each seed's value is checked by ``prepare``
    (``request_seeds``). Serves ``variations`` and ``Service`` before it loads another backbone."""
    if isinstance(presets, str):
        presets = [presets]
    if presets is not None and not isinstance(presets, (list, tuple)):
        raise InputError(f"presets must be a list of preset names, got {type(presets).__name__} {presets!r}")
    if seeds is not None and not isinstance(seeds, (list, tuple)):
        raise InputError(f"seeds must be a list of integers, got {type(seeds).__name__} {seeds!r}")
    if seeds is not None and not seeds:  # it ran seed 0, where transform refuses an empty list
        raise InputError("seeds is empty; give at least one seed (or leave it out: [0])")
    if "num_images" in knobs or "seed" in knobs:
        raise InputError(
            "variations makes one image per seed of each row: pass seeds=[...], not seed or num_images"
        )
    _check_arguments("variations", knobs, ("reuse", "preset", "depth", "depth_polarity"))
    return presets, [0] if seeds is None else list(seeds)


def _check_arguments(method: str, given: dict, not_taken=()) -> None:
    """The keyword arguments ``method`` passes on to ``prepare``: Python's TypeError for a misspelt one named prepare
    (``stepz``), not the method called."""
    import inspect

    takes = [k for k in inspect.signature(SceneTransformer.prepare).parameters
             if k not in ("self", "image", "prompt", "_stacklevel", *not_taken)]  # fmt: skip
    unknown = sorted(set(given) - set(takes))
    if unknown:
        raise InputError(f"{method}: {unknown[0]!r} is not an argument it takes (with the image and prompt: "
                         f"{', '.join(takes)})")  # fmt: skip


def _to_input_size(pixels: np.ndarray, size: tuple[int, int]):
    """A generated 8-bit image (H, W, 3) as a PIL image of ``size`` (width, height)."""
    from PIL import Image

    out = Image.fromarray(pixels, "RGB")
    return out if out.size == size else out.resize(size, Image.LANCZOS)


def _to_input_sizes(pixels, sizes: list[tuple[int, int]]) -> list:
    """``_to_input_size`` for each image of a batch, in order, on up to ``CPU_THREADS`` threads."""
    threads = min(CPU_THREADS, len(sizes))
    if threads <= 1:
        return [_to_input_size(arr, size) for arr, size in zip(pixels, sizes)]
    with ThreadPoolExecutor(threads, thread_name_prefix="depth2img-resize") as pool:
        return list(pool.map(_to_input_size, pixels, sizes))


def _batchable(requests: list[Request], max_images: int | None = None) -> list[list[int]]:
    """Indices of ``requests`` that can share a denoising batch (same ``key``; first-seen order), split into
    groups of whole requests of at most ``max_images`` images (a larger request stays whole, alone)."""
    by_key: dict[tuple, list[list[int]]] = {}
    for i, req in enumerate(requests):
        groups = by_key.setdefault(req.key, [[]])
        if (
            max_images
            and groups[-1]
            and sum(len(requests[j].seeds) for j in groups[-1]) + len(req.seeds) > max_images
        ):
            groups.append([])
        groups[-1].append(i)
    return [g for groups in by_key.values() for g in groups]
