"""Diffusion backbones, by composition over diffusers' own pipelines (no pipeline code is copied).

A ``Backend`` holds one set of weights and the pipelines that share them (txt2img and img2img via
``from_pipe``); it turns prepared inputs (image and DepthMap at generation size, CPU generators) into
a float image batch. Loading goes through ``loading.snapshot_dir`` like every other model.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import math
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import Depth2ImgWarning, InputError, ModelLoadError, cause_line, first_line
from .featurecache import COMPILE_MODE_ATTR, swapped_forward, unet_feature_cache
from .knobs import (
    CONTROL_KNOBS,
    DEFAULT_KNOBS,
    OFFLOAD_MODES,
    check_denoising_steps,
    check_knobs,
    check_lora_scale,
    resolved_knobs,
)
from .loading import (
    FETCH_ERROR,
    LOAD_ERRORS,
    LORA_FILES,
    PIPELINE_FILES,
    SINGLE_MODEL_FILES,
    damaged_weights,
    depth_estimator_note,
    dropped_log,
    from_pretrained_checked,
    hub_offline,
    lacks_weights,
    library_class,
    not_cached,
    quiet_log,
    require_files,
    require_safetensors,
    resolve_device,
    resolve_dtype,
    snapshot,
    snapshot_dir,
    unreadable_weights,
    use_safetensors,
    weights_variant,
)
from .registry import ModelRef, is_tiny

SCHEDULERS = {
    "unipc": "UniPCMultistepScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpm++-karras": "DPMSolverMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
    "flow-euler": "FlowMatchEulerDiscreteScheduler",
    "lcm": "LCMScheduler",  # for LCM-LoRA
    "tcd": "TCDScheduler",
    "ddim-trailing": "DDIMScheduler",  # timestep_spacing="trailing", for Hyper-SD
}


def check_scheduler_name(name, label: str = "scheduler") -> str | None:
    """None (the backbone's default) or a name of ``SCHEDULERS``; one line naming ``label`` for anything else (a
    list ran the default), before any model loads."""
    if name is not None and not (isinstance(name, str) and name in SCHEDULERS):
        raise InputError(f"{label} {name!r} is not one of {', '.join(SCHEDULERS)}")
    return name


SCHEDULER_OPTIONS = {
    # as every Stable Diffusion scheduler config sets it; from a config without it (tiny SDXL's Euler, a folder's)
    # PNDM ran Runge-Kutta warm-up steps and failed inside diffusers under 4 steps
    "pndm": {"skip_prk_steps": True},
    "dpm++-karras": {"use_karras_sigmas": True},
    "ddim-trailing": {"timestep_spacing": "trailing"},
}


def make_scheduler(name: str, config, stock: bool = False):
    """Scheduler ``name`` (of ``SCHEDULERS``) from a scheduler ``config``, with its ``SCHEDULER_OPTIONS``: UniPC's
    is depth2img's (diffusers' steps without host waits, ``schedulers``) unless ``stock`` (diffusers' own)."""
    import diffusers

    from .schedulers import UniPCMultistepScheduler

    cls = UniPCMultistepScheduler if name == "unipc" and not stock else getattr(diffusers, SCHEDULERS[name])
    return cls.from_config(config, **SCHEDULER_OPTIONS.get(name, {}))


def check_scheduler_steps(name: str, steps: int, most: int | None = None, label=str) -> None:
    """LCM and TCD pick their steps from a schedule of ``original_inference_steps`` (``most``, None: the scheduler
    class's default, 50): diffusers raises past it. Serves ``prepare`` (its scheduler made) and ``run_transform``'s
    check before loading (the limit was found once the models had loaded, for each input)."""
    if most is None:
        import inspect

        import diffusers

        cls = getattr(diffusers, SCHEDULERS[name])
        parameter = inspect.signature(cls.__init__).parameters.get("original_inference_steps")
        most = parameter.default if parameter is not None else None
    if most and steps > most:
        raise InputError(f"{label('steps')}: scheduler {name!r} takes at most {most} steps, got {steps}")


# model_index.json's _class_name -> pipeline kind, for folders and hub ids outside the registry
CLASS_TO_KIND = {
    "StableDiffusionPipeline": "sd15-controlnet", "StableDiffusionControlNetPipeline": "sd15-controlnet",
    "StableDiffusionDepth2ImgPipeline": "sd2-depth", "StableDiffusionXLPipeline": "sdxl-controlnet",
    "StableDiffusionXLControlNetPipeline": "sdxl-controlnet", "FluxControlPipeline": "flux-control",
    "FluxPipeline": "flux-control",  # FLUX.1-dev, with the depth Control LoRA on top
}  # fmt: skip


def offload_pipeline(pipe, mode: str, device) -> None:
    """Apply offload ``mode`` (not ``none``) to every model of ``pipe``, computing on ``device``; weights rest on
    the CPU. ``group`` copies the next layer on a side CUDA stream while the current one runs (on a GPU)."""
    import torch

    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif mode == "group":
        # SDXL pipelines decode with an fp16 VAE cast to float32 (force_upcast), but group offloading copies back
        # the fp16 weights it keeps on the CPU: "Input type (float) and bias type (c10::Half) should be the same"
        # (NVIDIA H200, 2026-11-26). Such a VAE stays on the GPU instead (160 MB in fp16).
        upcasts = (hasattr(pipe, "upcast_vae") and pipe.vae.dtype == torch.float16
                   and pipe.vae.config.get("force_upcast", False))  # fmt: skip
        pipe.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"), offload_type="leaf_level",
                                  use_stream=device.type == "cuda", exclude_modules=["vae"] if upcasts else None)  # fmt: skip
    else:
        raise ValueError(mode)


# torch.compile modes that capture CUDA graphs
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
# depth2img's compile modes that are inductor options rather than torch.compile modes (the two do not combine)
COMPILE_OPTIONS = {"cpp-wrapper": {"cpp_wrapper": True}}


def compile_kwargs(mode: str, options: dict | None = None) -> dict:
    """torch.compile's arguments for one of ``knobs.COMPILE_MODES``. ``cpp-wrapper``: the default mode's kernels,
    launched by a C++ wrapper instead of a Python one: on a GPU, where a batch-1 call is bound by launching kernels
    (the H200's compiled SD1.5, 12.8 % of peak at batch 1, 45.5 % at 16), without CUDA graphs. Not yet measured on
    a GPU; on this 2-core CPU, tiny SD1.5 at 80x52, 4 steps, batch 1, interleaved: 126.3 ms a call against the
    default mode's 128.4 (eager 149.1), its first call compiling in 49 s against 66.

    ``options``: inductor settings on top of the mode's (``check_inductor_options``; torch.compile takes a mode or
    options, not both, so the mode is given as the options it stands for, as torch itself expands it)."""
    if not options:
        return {"options": COMPILE_OPTIONS[mode]} if mode in COMPILE_OPTIONS else {"mode": mode}
    from torch._inductor import list_mode_options

    base = COMPILE_OPTIONS.get(mode) or list_mode_options(mode)
    return {"options": {**base, **options}}


def captures_cuda_graphs(mode: str, options: dict | None = None) -> bool:
    """Whether a compile in ``mode`` with inductor ``options`` captures CUDA graphs (on a GPU)."""
    return bool((options or {}).get("triton.cudagraphs", mode in CUDAGRAPH_MODES))


def check_inductor_options(options, name: str = "inductor") -> dict:
    """``options`` as inductor settings (a mapping, or ``NAME=VALUE`` strings as the bench's ``--inductor`` takes
    them: VALUE read as a Python literal, ``True``, ``1.5``, ``'90'``, else taken as a string), each a setting of
    ``torch._inductor.config`` given once, with a value of the type torch declares for it (an int where it takes a
    float becomes one: torch refused it) that JSON can record, so that a typo is refused before any model is built
    rather than at torch.compile or when the results are written."""
    import ast
    import types
    import typing

    from torch._inductor import config

    if options is None:
        return {}
    if isinstance(options, (list, tuple)):
        pairs = []
        for item in options:
            key, sep, text = str(item).partition("=")
            if not sep or not key.strip():
                raise InputError(f"{name} takes NAME=VALUE (conv_1x1_as_mm=True), got {item!r}")
            try:
                value = ast.literal_eval(text.strip())
            except (ValueError, SyntaxError):
                value = text.strip()
            pairs.append((key.strip(), value))
    elif isinstance(options, dict):
        pairs = list(options.items())
    else:
        raise InputError(f"{name} must be a dict of inductor settings, got {options!r}")
    known = config.get_config_copy()
    checked = {}
    for key, value in pairs:
        setting = str(key).replace("-", "_")
        if setting not in known:
            raise InputError(f"{name}: {key!r} is not a setting of torch._inductor.config")
        if setting in checked:
            raise InputError(f"{name} gives {setting} twice")
        declared = config.get_type(setting)
        if typing.get_origin(declared) is typing.Literal and value not in typing.get_args(declared):
            # (torch skips the check of such a type: a typo failed inside inductor, after the models were built)
            shown = ", ".join(map(repr, typing.get_args(declared)))
            raise InputError(f"{name}: {key} takes one of {shown}, got {value!r}")
        # the classes a value may be of, as torch checks them; None where the type is a generic one it skips
        kinds = typing.get_args(declared) if typing.get_origin(declared) in (typing.Union, types.UnionType) else (
            (declared,) if typing.get_origin(declared) is None else ()
        )  # fmt: skip
        if kinds and all(isinstance(k, type) and typing.get_origin(k) is None for k in kinds):
            if float in kinds and type(value) is int:
                value = float(value)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                shown = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
                raise InputError(
                    f"{name}: {key} takes {shown} (its default is {known[setting]!r}), got {value!r}"
                )
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise InputError(f"{name}: {key} must be a value JSON can record, got {value!r}") from None
        checked[setting] = value
    return checked


def compile_error(err: BaseException) -> str:
    """One line for a torch.compile failure: the compiler's own error, not dynamo's wrapper around it."""
    inner = getattr(err, "inner_exception", None) or err
    return f"{type(inner).__name__}: {first_line(inner)}"


def map_tensors(fn, value):
    """``value`` with ``fn`` applied to each tensor in it: through lists, tuples and dicts by hand (a UNet call's
    arguments: 6 us against torch's pytree map's 33 us, on a 2-core CPU), anything else (diffusers' output
    classes) by that pytree map."""
    import torch

    if isinstance(value, torch.Tensor):
        return fn(value)
    if type(value) in (list, tuple):
        return type(value)(map_tensors(fn, v) for v in value)
    if type(value) is dict:
        return {k: map_tensors(fn, v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    from torch.utils._pytree import tree_map_only

    return tree_map_only(torch.Tensor, fn, value)


def compile_forward(module, mode: str, *, name: str = "model", fallback: bool = True,
                    channels_last: bool = False, options: dict | None = None) -> None:  # fmt: skip
    """``module.forward`` compiled with torch.compile in ``mode``, in place: the class stays (diffusers' isinstance
    checks hold), and a wrapper set on ``forward`` from outside (the ControlNet's guidance window) stays outside
    the graph, so switching it needs no recompile.

    In the modes that capture CUDA graphs, a call's outputs live in the graphs' memory pool, and torch's CUDA
    graph trees free them at the next compiled call: the ControlNet's residuals were overwritten before the UNet
    read them (NVIDIA H200, torch 2.11, 2026-11-26; pytorch/pytorch#160281). So each output is cloned out of the
    pool as it returns: a copy of the residuals or latents, small next to the step that made them.

    Every call reaches the graph the same way: each argument by name, defaults filled in, tensors contiguous
    (4-D ones channels-last where ``channels_last``, as the fast path lays out the model on GPUs). Dynamo guards
    on how many keyword arguments a call passes and on each tensor's strides, so diffusers' img2img pipelines,
    which pass the UNet one argument fewer than its txt2img ones and latents laid out channels-last (the photo's
    tensor is a permuted view), compiled the UNet and the VAE decoder a second time (test; 23 s with inductor on
    CPU for the tiny model). The wrapper costs about 20 us a call on a 2-core CPU.

    Compiling happens at the first call. If the compiler fails there (no C compiler, a GPU Triton does not
    support), ``name`` runs uncompiled from then on, with one Depth2ImgWarning; ``fallback=False`` raises
    instead (the benchmark, whose compiled row must be compiled). ``options``: inductor settings on top of the
    mode's (``compile_kwargs``)."""
    import torch
    from torch._dynamo.exc import TorchDynamoException

    original = module.forward
    compiled = torch.compile(original, fullgraph=False, **compile_kwargs(mode, options))
    copy_out = captures_cuda_graphs(mode, options)
    failed = []
    # the model's own signature: diffusers' decorators keep it (functools.wraps)
    signature = inspect.signature(original)
    by_name = all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in signature.parameters.values())
    image_layout = torch.channels_last if channels_last else torch.contiguous_format

    def contiguous(tensor):
        return tensor.contiguous(memory_format=image_layout) if tensor.dim() == 4 else tensor.contiguous()

    def forward(*args, **kwargs):
        if failed:  # eager: no graph's guards to keep steady
            return original(*args, **kwargs)
        if by_name:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            args, kwargs = (), bound.arguments
        args, kwargs = map_tensors(contiguous, (args, kwargs))
        try:
            out = compiled(*args, **kwargs)
        except TorchDynamoException as err:
            if not fallback:
                raise
            failed.append(err)
            delattr(module, COMPILE_MODE_ATTR)  # it runs eager: no batch is padded for it (Backend.compiled)
            warnings.warn(f"torch.compile ({mode}) failed for the {name}, which runs uncompiled: {compile_error(err)}",
                          Depth2ImgWarning, stacklevel=2)  # fmt: skip
            return original(*args, **kwargs)
        return map_tensors(torch.clone, out) if copy_out else out

    module.forward = forward
    setattr(module, COMPILE_MODE_ATTR, mode)


def scale_outside_graph(controlnet) -> None:
    """The compiled ``controlnet`` always runs at ``conditioning_scale`` 1 and its residuals are scaled after it,
    as diffusers scales them (``sample * conditioning_scale``), so the images are the same.

    torch.compile takes a Python float argument as a constant of its graph, so each new control scale (the app's
    slider, a job's rows) compiled the ControlNet again (7.7 s with inductor on CPU for the tiny model; a GPU
    compile of the full one takes far longer), and that second graph takes the scale as a float64 CPU tensor, on
    which torch skips CUDA graphs (torch/_dynamo/variables/builder.py, ``wrap_symfloat``). Guess mode, whose
    per-residual scales are multiplied by it inside, keeps the scale in the graph."""
    compiled = controlnet.forward

    def forward(*args, conditioning_scale=1.0, guess_mode=False, **kwargs):
        if guess_mode or not isinstance(conditioning_scale, float | int) or conditioning_scale == 1:
            return compiled(*args, conditioning_scale=conditioning_scale, guess_mode=guess_mode, **kwargs)
        out = compiled(*args, conditioning_scale=1.0, guess_mode=False, **kwargs)
        return map_tensors(lambda residual: residual * conditioning_scale, out)

    controlnet.forward = forward


def check_memory_options(*, device=None, offload: str | None = None, attention: str = "sdpa", label=str):
    """(offload mode, device) once ``offload`` and ``attention`` are known to work here; cheap, so callers check
    them before any model loads. Offloading needs a CUDA device (``device`` None: the one ``resolve_device`` picks).
    ``label``: how the caller's user spells an argument (the CLI's said 'offload', not '--offload')."""
    import torch

    offload = offload or "none"
    if offload not in OFFLOAD_MODES:
        raise InputError(f"{label('offload')} must be one of {', '.join(OFFLOAD_MODES)}, got {offload!r}")
    check_attention(attention, label("attention"))
    if offload != "none":
        # none given: the one resolve_device picks (it assumed cuda: one place chooses)
        device = resolve_device() if device is None else torch.device(device)
        moves = f"{label('offload')} {offload!r} moves weights between CPU and GPU"
        if not torch.cuda.is_available():
            raise InputError(f"{moves}; no GPU is available here")
        if device.type != "cuda":
            raise InputError(f"{moves}; {label('device')} {str(device)!r} is not a GPU")
    return offload, device


def check_attention(attention: str, name: str = "attention", also=()) -> str:
    """``sdpa`` (PyTorch's, the default) or ``xformers`` (only when the extra is installed), or one of the caller's
    own choices ``also``; ``name`` is how the caller's user spells the argument (``--attention`` on the command
    line)."""
    if attention in also:
        return attention
    if attention == "xformers":
        try:
            import xformers  # noqa: F401
        except ImportError:
            raise InputError(
                f"{name} xformers needs the xformers extra: pip install 'depth2img[xformers]'"
            ) from None
    elif attention != "sdpa":
        raise InputError(f"{name} must be {' or '.join(('sdpa', 'xformers', *also))}, got {attention!r}")
    return attention


class ControlNetCallCounter:
    """Counts real ControlNet forward passes (tests and benchmarks read it)."""

    def __init__(self):
        self.calls = 0


@contextlib.contextmanager
def skip_inactive_controlnet(controlnet, counter: ControlNetCallCounter | None = None, enabled: bool = True):
    """Inside the block, a ControlNet call with ``conditioning_scale == 0`` (diffusers' way of switching it off
    outside [control_guidance_start, control_guidance_end]) returns no residuals instead of running the network.

    The UNet adds nothing when the residuals are None, so the result is the same as adding diffusers'
    zero-scaled residuals, without the ControlNet's compute on those steps.
    """

    def make(original):
        def forward(*args, conditioning_scale=1.0, guess_mode=False, **kwargs):
            if enabled and not guess_mode and conditioning_scale == 0:
                return None, None
            if counter is not None:
                counter.calls += 1
            return original(*args, conditioning_scale=conditioning_scale, guess_mode=guess_mode, **kwargs)

        return forward

    with swapped_forward(controlnet, make):
        yield


class _NoEmptyFloat32List(logging.Filter):
    """diffusers warns "There are modules in X that should be kept in float32: [] ..." whenever a model is cast with
    ``.to(dtype)``, even when it keeps no module in float32: SDXL img2img's VAE upcast logged it twice a call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_NoEmptyFloat32List())


class _NoBar:
    """What a diffusers pipeline's progress bar is asked to do (``with pipe.progress_bar(total=n) as bar:
    bar.update()``, or ``for t in pipe.progress_bar(timesteps)``), doing nothing."""

    def __init__(self, iterable=None, total=None):
        self.iterable = iterable

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n=1):
        pass


def _pipe_sharing_weights(pipeline_class, pipe):
    """``pipeline_class.from_pipe(pipe)`` with every shared weight left as it was. from_pipe casts all models to its
    ``dtype`` argument, float32 when none is given: fp16/bf16 weights would silently become float32, and the
    float32 layers a model keeps in a half-precision load (T5's ``wo``, its ``_keep_in_fp32_modules``; a float32
    VAE) would be rounded to half precision, shared with the first pipeline too.

    So the cast is to the main model's dtype (a no-op for its tensors), and every tensor of another dtype is put
    back afterwards: the original tensor itself, not a cast back, so nothing is rounded. That cast made diffusers
    log "There are modules in UNet2DConditionModel that should be kept in float32: []" once per model at every
    load (it warns for an empty list too): its log is quiet for the call."""
    import torch

    models = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    main = next(
        (next(m.parameters()).dtype for m in (getattr(pipe, "unet", None), getattr(pipe, "transformer", None))
         if m is not None), torch.float32,
    )  # fmt: skip
    kept = [(slots, name, tensor) for model in models for module in model.modules()
            for slots in (module._parameters, module._buffers) for name, tensor in slots.items()
            if tensor is not None and tensor.is_floating_point() and tensor.dtype != main]  # fmt: skip
    datas = [tensor.data for _, _, tensor in kept]
    with quiet_log("diffusers"):
        new = pipeline_class.from_pipe(pipe, dtype=main)
    for (slots, name, tensor), data in zip(kept, datas):
        if isinstance(tensor, torch.nn.Parameter):
            tensor.data = data  # module.to() keeps the Parameter object and swaps its data
        else:
            slots[name] = data
    return new


def _model_index(path: Path) -> dict:
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(
            f"{path} is not a diffusers pipeline folder (no model_index.json){depth_estimator_note(path)}"
        )
    try:
        found = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON
        raise ModelLoadError(f"{index}: cannot be read as JSON ({first_line(err)})") from None
    if not isinstance(found, dict):
        raise ModelLoadError(
            f"{index}: must be a JSON object (a pipeline's model index), got {type(found).__name__}"
        )
    return found


def pipeline_kind(path: Path) -> str:
    name = _model_index(path).get("_class_name", "")
    if name not in CLASS_TO_KIND:
        raise ModelLoadError(
            f"{path}: pipeline class {name!r} is not a supported backbone ({', '.join(CLASS_TO_KIND)})"
        )
    return CLASS_TO_KIND[name]


class Backend:
    """One backbone's pipelines. Subclasses say how to load and how to call."""

    kind = ""
    txt2img_class = ""
    img2img_class = ""
    supports_txt2img = True
    has_controlnet = True
    has_unet = True  # UNet backbones take feature_cache
    flow_matching = False  # Flux's pipelines count img2img steps their own way (knobs.denoising_steps)
    takes_negative_prompt = True
    default_scheduler = "unipc"
    accelerator_dtype = "float16"  # the default dtype on a GPU (the SD model cards load float16)
    CONTROL_KNOBS: tuple[str, ...] = CONTROL_KNOBS
    last_pipeline_s = 0.0  # seconds inside diffusers' pipeline call, last batch
    # the images diffusers denoised together in the last call (with a compiled shape's padding)
    last_batch = 0

    @classmethod
    def control_knobs_for(cls, uses_lora: bool) -> tuple[str, ...]:
        """The control knobs this backbone has (others given by the user are refused, not ignored)."""
        return cls.CONTROL_KNOBS

    @property
    def uses_lora(self) -> bool:
        """Whether a depth LoRA (Flux's Control LoRA) is loaded on the base, as its companion."""
        return False

    @property
    def control_knobs(self) -> tuple[str, ...]:
        return self.control_knobs_for(self.uses_lora)

    @classmethod
    def traits_for(cls, uses_lora: bool) -> BackboneTraits:
        return BackboneTraits(cls.kind, cls.takes_negative_prompt, cls.control_knobs_for(uses_lora), cls.has_unet,
                              tuple(cls.allowed_schedulers()), cls.flow_matching)  # fmt: skip

    @property
    def traits(self) -> BackboneTraits:
        return self.traits_for(self.uses_lora)

    def __init__(self, txt2img, ref: ModelRef, companion_ref: ModelRef | None = None):
        self.ref = ref
        self.companion_ref = companion_ref  # the ControlNet or LoRA repo loaded with the base
        self.pipes = {"txt2img" if self.supports_txt2img else "img2img": txt2img}
        if self.supports_txt2img and self.img2img_class:
            self.pipes["img2img"] = _pipe_sharing_weights(
                library_class("diffusers", self.img2img_class), txt2img
            )
        for pipe in self.pipes.values():
            # depth2img shows its own per-step bar. Not a disabled tqdm: the web page (gradio's tqdm tracking) took
            # one for its last bar, and counted both bars' steps on it, 20 of 10, with ours at 0
            pipe.progress_bar = _NoBar
        self.scheduler_name = None
        self._schedulers = {}
        # copies of the pipeline's tokenizers for prompt checks (checking_tokenizer)
        self._tokenizers, self._tokenizers_lock = {}, threading.Lock()
        self.controlnet_counter = ControlNetCallCounter()
        self.cache_calls = None  # the last call's UNet / deep-block call counts (feature cache)
        self.speed_lora = None
        self.fast_path = None  # what optimize() applied (None: the plain pipeline)
        # what memory() applied, which outputs record (VAE tiling changes the image where a side passes the VAE's size)
        self.memory_options = {
            "offload": "none",
            "vae_tiling": False,
            "vae_slicing": False,
            "attention": "sdpa",
        }
        # compiled: the batch sizes each call shape has run at; a smaller new one is padded to one (see __call__)
        self.compiled_batches: dict[tuple, set[int]] = {}
        self.verify()

    @property
    def pipe(self):
        return next(iter(self.pipes.values()))

    @property
    def compiled(self) -> bool:
        """Whether a model runs compiled: ``optimize(compile_mode=...)``, and no compiler failure since."""
        pipe = self.pipe
        models = [getattr(pipe, name, None) for name in ("unet", "controlnet", "transformer")]
        return any(getattr(m, COMPILE_MODE_ATTR, None) for m in [*models, pipe.vae.decoder] if m is not None)

    @property
    def dtype(self):
        """The denoiser's dtype (the UNet's or transformer's): what the pipelines compute in."""
        denoiser = getattr(self.pipe, "unet", None) or self.pipe.transformer
        return denoiser.dtype

    @property
    def vae_scale_factor(self) -> int:
        return self.pipe.vae_scale_factor

    @property
    def native_size(self) -> int:
        """The side this pipeline generates at by default, as diffusers computes it: its UNet's sample size (Flux:
        the pipeline's default sample size) in latents x the VAE's scale factor. What a backbone outside the
        registry (a local folder, a hub id) generates at: 512 for SD1.5 and SD2, 1024 for SDXL and Flux."""
        unet = getattr(self.pipe, "unet", None)
        latent = unet.config.sample_size if unet is not None else self.pipe.default_sample_size
        if isinstance(latent, (list, tuple)):  # (height, width): the square of the same pixel count
            latent = math.sqrt(latent[0] * latent[1])
        return round(latent * self.vae_scale_factor)

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * 2  # latents must pack into 2x2 patches (Flux) / stay even (SD)

    # --------------------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, ref: ModelRef, *, path: Path, dtype, local_files_only: bool):
        raise NotImplementedError

    @staticmethod
    def _from_pretrained(class_name: str, path: Path, ref: ModelRef, dtype, **components):
        index = _model_index(path)
        given = {name for name, part in components.items() if part is not None}
        # (a component passed, a ControlNet or None for SD1.5's safety checker, is not read from the folder)
        require_safetensors(path, ref, [name for name, entry in index.items()
                                        if not name.startswith("_") and entry and name not in components])  # fmt: skip
        from transformers import PreTrainedModel

        transformers_models = {}
        for name, entry in index.items():  # its transformers components' classes, imported quietly
            if isinstance(entry, list) and len(entry) == 2 and entry[0] == "transformers" and entry[1]:
                model_class = library_class("transformers", entry[1])
                if (
                    name not in components
                    and isinstance(model_class, type)
                    and issubclass(model_class, PreTrainedModel)
                ):
                    transformers_models[name] = model_class
        # transformers built a model of its default config for a folder without its config.json, and blamed its file
        # ("holds 36 weights of other shapes than the model's"); with no folder it looked for weights in the pipeline's
        configs = [f"{name}/config.json" for name in transformers_models]
        require_files(path, f"model {ref.name!r} at {path}", ref, configs, PIPELINE_FILES)
        try:
            # (loaded here, where what their files lack is known: diffusers' loader fills it at random)
            for name, model_class in transformers_models.items():
                components[name] = from_pretrained_checked(
                    model_class, path / name, f"model {ref.name!r} at {path}: its {name} file", dtype=dtype,
                    use_safetensors=use_safetensors(), local_files_only=True, variant=weights_variant(path / name),
                )  # fmt: skip
            # (diffusers logs a component's missing weights before raising it: our one line says it)
            with dropped_log("diffusers", FETCH_ERROR):
                pipe = library_class("diffusers", class_name).from_pretrained(
                    path, dtype=dtype, use_safetensors=use_safetensors(), local_files_only=True,
                    variant=weights_variant(path), **components,
                )  # fmt: skip
        except LOAD_ERRORS as err:
            damaged = unreadable_weights(path, err)
            raise ModelLoadError(
                f"model {ref.name!r} at {path}: {damaged}"
                if damaged
                else f"model {ref.name!r} at {path} could not be loaded: {cause_line(err)}"
            ) from None
        # a component whose file holds another's weights: its own stay unloaded ("meta"), which failed only when moved
        # to the device, as an internal error ("Cannot copy out of meta tensor"); those passed in were loaded, and
        # checked, from their own folders (a ControlNet's was blamed on the base's snapshot)
        for name, part in pipe.components.items():
            if name not in given:
                _refuse_meta_weights(part, f"model {ref.name!r} at {path}: its {name} file")
        return pipe

    def verify(self) -> None:
        """Check what was loaded: a tokenizer loaded offline from a hub id can silently hold 2 tokens."""
        for name in ("tokenizer", "tokenizer_2"):
            tok = getattr(self.pipe, name, None)
            if tok is None:
                continue
            encoder = getattr(self.pipe, name.replace("tokenizer", "text_encoder"), None)
            vocab = getattr(getattr(encoder, "config", None), "vocab_size", None)
            # under half its text encoder's vocabulary is not its tokenizer: with tokenizer_2/ missing, Flux loaded an
            # empty T5 tokenizer (104 tokens, its 100 extra ids and specials, for a vocabulary of 32128) silently
            if len(tok) < 64 or (vocab is not None and not vocab / 2 <= len(tok) <= vocab):
                raise ModelLoadError(
                    f"model {self.ref.name!r}: {name} has {len(tok)} tokens (text encoder vocabulary {vocab}); "
                    f"the tokenizer files ({name}/) are missing or were not loaded; re-download the model"
                )

    # --------------------------------------------------------------------------------------- knobs

    def scheduler(self, name: str | None):
        """(name, scheduler) for ``name`` (None: this backbone's default), checked and made once, without touching
        the pipelines (``prepare`` checks a request's scheduler while another thread may be denoising)."""
        # ("" is the default too, as it was)
        name = check_scheduler_name(None if name == "" else name) or self.default_scheduler
        check_backbone_knobs(self.traits, self.ref.name, {}, scheduler=name)
        if name not in self._schedulers:
            base = self._schedulers.setdefault("__original__", self.pipe.scheduler)
            self._schedulers[name] = make_scheduler(name, base.config)
        return name, self._schedulers[name]

    def set_scheduler(self, name: str | None) -> str:
        """Swap the scheduler of every cached pipeline (the weights stay); returns the name in use."""
        name, scheduler = self.scheduler(name)
        if name != self.scheduler_name:
            for pipe in self.pipes.values():
                pipe.scheduler = scheduler
            self.scheduler_name = name
        return name

    @classmethod
    def allowed_schedulers(cls) -> list[str]:
        return [n for n in SCHEDULERS if n != "flow-euler"]

    def text_limit(self) -> tuple[str, int]:
        """The pipeline's tokenizer that a prompt's length is counted by, and the tokens its text encoder takes."""
        return "tokenizer", self.pipe.tokenizer.model_max_length

    def checking_tokenizer(self, name: str):
        """A copy of the pipeline's tokenizer ``name``, made once, for encoding prompts outside a run (decode with
        the pipeline's own, which sets no state: CLIP's copy decodes with its '</w>' word ends). A fast tokenizer's
        padding and truncation are state that each call sets: a prompt checked while another thread's pipeline
        encoded its own left that one unpadded (9 tokens, not 77, in 418 of 1533 encodings under a tight thread
        switch interval), a different image."""
        with self._tokenizers_lock:
            if name not in self._tokenizers:
                self._tokenizers[name] = copy.deepcopy(getattr(self.pipe, name))
            return self._tokenizers[name]

    def memory(self, *, device=None, offload: str | None = None, vae_tiling: bool = False,
               vae_slicing: bool = False, attention: str = "sdpa") -> None:  # fmt: skip
        """Memory options; ``device`` is where the models compute (the caller's resolved device)."""
        pipe = self.pipe
        offload, device = check_memory_options(device=device, offload=offload, attention=attention)
        self.memory_options = {"offload": offload, "vae_tiling": bool(vae_tiling), "vae_slicing": bool(vae_slicing),
                               "attention": attention}  # fmt: skip
        if offload != "none":
            offload_pipeline(pipe, offload, device)
        if vae_tiling:
            pipe.vae.enable_tiling()
        if vae_slicing:
            pipe.vae.enable_slicing()
        if attention == "xformers":
            pipe.enable_xformers_memory_efficient_attention()

    def optimize(
        self,
        *,
        channels_last: bool | None = None,
        fuse_qkv: bool = True,
        compile_mode: str | None = None,
        compile_fallback: bool = True,
        compile_options: dict | None = None,
    ) -> list[str]:
        """The fast path: channels-last convolutions (by default where compiled on a GPU), fused QKV projections,
        and optionally torch.compile (in place, so diffusers' isinstance checks still hold) of the UNet/transformer
        and the VAE.
        Returns what was applied (also kept as ``fast_path``, which outputs record). Numerics change within
        bf16/fp16 tolerance (checked by `depth2img bench`). ``compile_options``: inductor settings on top of the
        mode's (``check_inductor_options``; the bench's ``--inductor``), named in the path as ``MODE+NAME=VALUE``."""
        import torch

        applied = self.fast_path = []
        pipe = self.pipe
        if channels_last is None:
            # On by default only where compiled on a GPU. Measured (full SD1.5 + ControlNet): on CPU, 128 px, it
            # made a call 4 % slower; on an H100 at batch 16 it made the eager fast path 7-9 % slower than plain
            # diffusers, where without it that path was 0.8 % faster; compiled, the rows with it were 1 % faster.
            channels_last = pipe.device.type == "cuda" and bool(compile_mode)
        for name in ("unet", "controlnet", "vae", "transformer"):
            module = getattr(pipe, name, None)
            if module is None:
                continue
            laid_out = channels_last and name != "transformer"
            if laid_out:
                module.to(memory_format=torch.channels_last)
                applied.append(f"{name}:channels_last")
            if fuse_qkv and hasattr(module, "fuse_qkv_projections") and not _unmerged_adapters(module):
                module.fuse_qkv_projections()
                applied.append(f"{name}:fused_qkv")
            if compile_mode:
                compile_forward(module.decoder if name == "vae" else module, compile_mode, name=name,
                                fallback=compile_fallback, channels_last=laid_out, options=compile_options)  # fmt: skip
                if name == "controlnet":
                    scale_outside_graph(module)
                settings = "".join(f"+{k}={v!r}" for k, v in (compile_options or {}).items())
                applied.append(f"{name}:compile({compile_mode}{settings})")
        return applied

    # --------------------------------------------------------------------------------------- calling

    def load_speed_lora(self, ref: ModelRef, *, scale: float = 1.0, local_files_only: bool = False) -> None:
        """Load a few-step LoRA (LCM, Hyper-SD) and fuse it into the UNet: no per-step cost afterwards.
        Its scheduler becomes this backend's default (``ref.entry.scheduler``)."""
        check_speed_lora(self.kind, ref)
        scale = check_lora_scale(scale)
        path, ref = snapshot(ref, local_files_only=local_files_only, allow_patterns=_speed_lora_patterns(ref))
        weights = _speed_lora_weights(ref, path)
        from .loading import quiet_log

        # diffusers logs a failed load (9 lines: "Loading speed was unsuccessful", a line per mismatch) before
        # raising: the error below says it in one
        try:
            with quiet_log("diffusers", errors_too=True):
                self.pipe.load_lora_weights(path, weight_name=weights.name, adapter_name="speed")
            # (a LoRA with no UNet weights, a text encoder's, loaded "fine" and sped nothing up)
            if "speed" not in self.pipe.get_list_adapters().get("unet", []):
                raise ModelLoadError(
                    f"{ref.kind} {ref.name!r} has no weights for the UNet of {self.ref.name!r}, where a few-step LoRA's "
                    "are (is it a text encoder's LoRA, or another model's?)"
                )
            self.pipe.fuse_lora(lora_scale=scale, adapter_names=["speed"])
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            # torch's message opens with "Error(s) in loading state_dict for UNet2DConditionModel:", the cause below
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            mismatch = next((line for line in lines if line.startswith("size mismatch")), None)
            reason = f"a LoRA for another backbone? {mismatch}" if mismatch else first_line(err)
            # (a zero-byte or truncated file was said not to fit the backbone)
            damaged = unreadable_weights(path, err)
            raise ModelLoadError(
                f"{ref.kind} {ref.name!r} at {path}: {damaged}"
                if damaged
                else f"{ref.kind} {ref.name!r} does not fit {self.ref.name!r}: {reason}"
            ) from None
        if ref.entry is not None and ref.entry.scheduler:
            self.default_scheduler = ref.entry.scheduler
        self.speed_lora = {"id": ref.location, "revision": ref.revision, "scale": scale}

    def mode(self, strength: float) -> str:
        """img2img starts from the photo (strength < 1); txt2img generates from the depth alone."""
        return "img2img" if strength < 1.0 or not self.supports_txt2img else "txt2img"

    @staticmethod
    def control_tensor(depths):
        """The ControlNet images: (N, 3, H, W) float in [0, 1], near = white (no 8-bit rounding): each depth's
        ``control_image``, made from its grey plane in one copy (it runs on the denoising thread: 26 ms for 16
        depths of 624x416, against 54 ms through 16 (H, W, 3) arrays)."""
        import torch

        grey = torch.from_numpy(np.stack([d.normalized() for d in depths]))
        return grey[:, None].expand(-1, 3, -1, -1).contiguous()

    @property
    def empty_negative_is_zeros(self) -> bool:
        """SDXL pipelines (force_zeros_for_empty_prompt) use zero embeddings, not the encoded "", for an absent
        negative prompt; items with and without one then cannot share a batch (a list passes "")."""
        return bool(self.pipe.config.get("force_zeros_for_empty_prompt", False))

    def call_kwargs(self, *, images, depths, knobs) -> dict:
        """Pipeline arguments for ``images`` (PIL at generation size, or None for txt2img) and ``depths``: each
        either one entry shared by the whole batch or one entry per image."""
        raise NotImplementedError

    def __call__(self, *, images, depths, prompts, negative_prompts, generators, knobs, callback=None,
                 skip_controlnet: bool = True) -> Generated:  # fmt: skip
        """Run one batch: image i from ``images[i]`` (PIL at generation size), ``depths[i]`` (DepthMap at generation
        size), ``prompts[i]``, ``negative_prompts[i]`` and ``generators[i]``; returns its images on the host
        (``Generated``: (N, H, W, 3) float and 8-bit).

        A batch whose images all share one photo, depth and prompt (one source's seeds) is one pipeline call with
        ``num_images_per_prompt``, as diffusers documents it; a batch across sources or variations passes
        per-image lists (shared inputs once: the pipeline repeats them)."""
        import torch

        n = len(generators)
        if not len(images) == len(depths) == len(prompts) == len(negative_prompts) == n:
            raise ValueError("images, depths, prompts, negative_prompts and generators differ in length")
        mode = self.mode(knobs["strength"])
        pipe = self.pipes[mode]
        negative_prompts = [p or "" for p in negative_prompts]
        depths = _shared(depths)
        per_image = (len(_shared(images)) > 1 or len(depths) > 1 or len(set(prompts)) > 1
                     or len(set(negative_prompts)) > 1)  # fmt: skip
        # Compiled, a new batch size is a new graph: a recompile as long as the first compile (tiny SD1.5 on CPU,
        # compile default: 58 s for a batch of 3 after one of 4), or new CUDA graphs. So a smaller batch of a shape
        # already compiled (a job's last batch, a retry) is padded to the smallest larger batch it has run, with
        # copies of its last image on generators of their own, and their outputs dropped: an image depends on its
        # own generator only (tested). A batch size that has run at that shape is never padded.
        cfg = knobs["guidance_scale"] > 1  # doubles the models' batch
        shape = (mode, depths[0].height, depths[0].width, cfg)
        compiled = self.compiled
        ran = self.compiled_batches.get(shape, set()) if compiled else set()
        pad = 0 if n in ran else min((size - n for size in ran if size > n), default=0)
        if pad:
            images, prompts = _padded(images, pad), _padded(prompts, pad)
            negative_prompts = _padded(negative_prompts, pad)
            depths = _padded(depths, pad) if len(depths) > 1 else depths
            generators = list(generators) + [torch.Generator("cpu").manual_seed(0) for _ in range(pad)]
        # img2img gets the photo once per image, so that image i's VAE sample draws from generator i: diffusers'
        # Flux img2img encodes one photo once, with the first generator only, so image i of a batch would not
        # equal a run of seed i alone (the SD pipelines repeat the photo themselves: no change there).
        images = list(images) if mode == "img2img" else None
        kwargs = self.call_kwargs(images=images, depths=depths, knobs=knobs)
        if per_image:
            prompt, per_prompt = list(prompts), 1
            negative = list(negative_prompts) if any(negative_prompts) else None
        else:
            prompt, per_prompt, negative = prompts[0], n + pad, negative_prompts[0] or None
        if negative and self.takes_negative_prompt:
            kwargs["negative_prompt"] = negative
        if callback is not None:
            kwargs["callback_on_step_end"] = callback
        controlnet = getattr(pipe, "controlnet", None)
        guard = (
            skip_inactive_controlnet(controlnet, self.controlnet_counter, enabled=skip_controlnet)
            if controlnet is not None
            else contextlib.nullcontext()
        )
        # The cache wraps the skipping: a cached ControlNet step is neither run nor counted.
        cache = (
            unet_feature_cache(pipe.unet, knobs.get("feature_cache", 1), controlnet)
            if self.has_unet
            else contextlib.nullcontext()
        )
        with guard, cache as self.cache_calls:
            started = time.perf_counter()
            try:
                out = pipe(
                    prompt=prompt, num_images_per_prompt=per_prompt, generator=generators,
                    num_inference_steps=knobs["steps"], guidance_scale=knobs["guidance_scale"],
                    height=depths[0].height, width=depths[0].width, output_type="pt", **kwargs,
                )  # fmt: skip
                # on a GPU the call returns with its VAE decode still queued: the copy waits for it, within the
                # pipeline's time (diffusers' own "np" copy did so inside the call)
                generated = on_host(out.images[:n])
            except BaseException as err:
                if isinstance(err, torch.OutOfMemoryError):
                    self.compiled_batches.pop(shape, None)  # the halves run (and compile) at their own size
                # a call that raised (a Stop from its step callback, out of memory) skipped the pipeline's own
                # release at its end: under model offload its last models stayed on the GPU into the next call
                self.pipe.maybe_free_model_hooks()
                raise
            self.last_pipeline_s = time.perf_counter() - started  # the API's own time is what lies outside it
            self.last_batch = n + pad
        if pipe is not self.pipe:
            # model offload's hooks were set through self.pipe, so the img2img pipeline's own release at the end of
            # its call did nothing and left its last models on the GPU (SDXL's ControlNet: 2.5 GB in fp16)
            self.pipe.maybe_free_model_hooks()
        if compiled:
            self.compiled_batches.setdefault(shape, set()).add(n + pad)
        return generated


class Generated(NamedTuple):
    """A batch's images on the host, at generation size."""

    raw: np.ndarray  # (N, H, W, 3) float32 in [0, 1]: what diffusers' output_type="np" gives
    pixels: np.ndarray  # (N, H, W, 3) uint8: raw rounded to 8 bits


def on_host(images) -> Generated:
    """A pipeline's ``output_type="pt"`` images ((N, 3, H, W) in [0, 1], on the model's device and in its dtype)
    on the host. ``raw`` is bit for bit diffusers' ``output_type="np"`` (the same permute and float32 cast, made on
    the device rather than after the copy); ``pixels`` is rounded to 8 bits on the device (half to even, as numpy
    rounds). Both casts ran on the host, on a GPU while the GPU idled between calls (2-core development CPU, 16
    images at 512x512: 60-88 ms a call); the host now only copies. (Rounded before the permute, on contiguous
    memory: on this CPU 73-89 ms against 121-140 after it.)"""
    import torch

    floats = images.float()
    pixels = floats.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return Generated(floats.permute(0, 2, 3, 1).cpu().numpy(), pixels.cpu().numpy())


def _shared(items: list) -> list:
    """``[x]`` when every entry is the same object (the pipeline repeats it), else the list itself."""
    return items[:1] if all(x is items[0] for x in items) else list(items)


def _padded(items: list, pad: int) -> list:
    """``items`` and ``pad`` more of its last entry."""
    return list(items) + [items[-1]] * pad


def _refuse_meta_weights(part, what: str) -> None:
    """Refuse a loaded component (``what``: its file, as the error names it) whose weights its file lacked, left on
    the "meta" device by diffusers' loader."""
    missing = (
        [n for n, p in part.named_parameters() if p.is_meta] if hasattr(part, "named_parameters") else []
    )
    if missing:
        raise lacks_weights(what, missing, len(list(part.parameters())))


def _image_arg(images):
    return images[0] if len(images) == 1 else images


class ControlNetBackend(Backend):
    @classmethod
    def load(cls, ref, *, path, dtype, local_files_only, controlnet: ModelRef | None = None):
        """``controlnet``: a depth ControlNet to use instead of the base's own (``registry.resolve_controlnet``)."""
        from diffusers import ControlNetModel

        cn_ref = controlnet or _companion_ref(ref, path, "controlnet", kind=cls.kind)
        try:
            cn_path, cn_ref = snapshot(
                cn_ref, local_files_only=local_files_only, allow_patterns=COMPANION_FILES["controlnet"]
            )
        except ModelLoadError as err:
            if ref.entry is not None or not ref.is_local or controlnet is not None:
                raise
            raise ModelLoadError(f"{err} (the depth ControlNet for a local {cls.kind} folder that holds none; "
                                 f"{_COMPANION_PLACES.format(what='controlnet', folder=path)})") from None  # fmt: skip
        require_safetensors(cn_path, cn_ref)
        # from the two configs, before gigabytes load (a misfit loaded, and failed at the first image)
        unet_config = _read_json(path / "unet" / "config.json")  # (none: the pipeline's loader says why)
        _check_controlnet_fits(_controlnet_config(cn_path, cn_ref), unet_config or {}, cn_ref.name, ref.name)
        try:
            cn = ControlNetModel.from_pretrained(
                cn_path, dtype=dtype, use_safetensors=use_safetensors(), local_files_only=True,
                variant=weights_variant(cn_path),
            )  # fmt: skip
        except (OSError, ValueError) as err:
            damaged = unreadable_weights(cn_path, err)
            raise ModelLoadError(
                f"ControlNet {cn_ref.name!r} at {cn_path}: {damaged}"
                if damaged
                else f"ControlNet {cn_ref.name!r} at {cn_path} could not be loaded: {cause_line(err)}"
            ) from None
        _refuse_meta_weights(cn, f"ControlNet {cn_ref.name!r} at {cn_path}: its weights file")
        extra = (
            {"safety_checker": None, "requires_safety_checker": False}
            if cls.kind == "sd15-controlnet"
            else {}
        )
        pipe = cls._from_pretrained(cls.txt2img_class, path, ref, dtype, controlnet=cn, **extra)
        return cls(pipe, ref, cn_ref)

    def call_kwargs(self, *, images, depths, knobs):
        control = self.control_tensor(depths)
        kwargs = dict(controlnet_conditioning_scale=knobs["control_scale"],
                      control_guidance_start=knobs["control_start"], control_guidance_end=knobs["control_end"])  # fmt: skip
        if images is None:
            kwargs["image"] = control
        else:
            kwargs.update(image=_image_arg(images), control_image=control, strength=knobs["strength"])
        return kwargs


class SD15Backend(ControlNetBackend):
    kind = "sd15-controlnet"
    txt2img_class = "StableDiffusionControlNetPipeline"
    img2img_class = "StableDiffusionControlNetImg2ImgPipeline"


class SDXLBackend(ControlNetBackend):
    kind = "sdxl-controlnet"
    txt2img_class = "StableDiffusionXLControlNetPipeline"
    img2img_class = "StableDiffusionXLControlNetImg2ImgPipeline"
    default_scheduler = "euler"


@dataclass(frozen=True)
class BackboneTraits:
    """What a backbone takes: known from its pipeline kind (and for Flux, whether a depth LoRA comes with it), so a
    registry backbone's is known before its weights load (``known_traits``)."""

    kind: str
    takes_negative_prompt: bool
    control_knobs: tuple[str, ...]
    has_unet: bool
    schedulers: tuple[str, ...]
    flow_matching: bool = False  # counts its img2img steps as Flux does (knobs.denoising_steps)


def known_traits(ref: ModelRef) -> BackboneTraits | None:
    """A backbone's traits before its weights load: a registry entry's, or read from the ``model_index.json`` of a
    local folder or of a hub id already in the local Hugging Face cache (a FluxPipeline comes with the depth LoRA,
    as ``FluxBackend.load`` takes it). None where that is not known before loading (the loader checks)."""
    entry = ref.entry
    if entry is not None and entry.pipeline in BACKENDS:
        return BACKENDS[entry.pipeline].traits_for(uses_lora=entry.lora is not None)
    folder = _folder_at_hand(ref)
    try:
        name = _model_index(folder).get("_class_name") if folder is not None else None
    except ModelLoadError:  # no index, unreadable, not JSON, not a mapping: the loader says why
        return None
    if name not in CLASS_TO_KIND:
        return None
    return BACKENDS[CLASS_TO_KIND[name]].traits_for(uses_lora=name == "FluxPipeline")


def _folder_at_hand(ref: ModelRef, index: str = "model_index.json") -> Path | None:
    """The folder a backbone's ``model_index.json`` (a model's ``index``) is in before anything is downloaded: a
    local folder, or a hub id's snapshot in the local Hugging Face cache; None where not cached (an ill-formed hub
    id too)."""
    if ref.is_local:
        return Path(ref.location)
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(ref.location, index, revision=ref.revision)
    except ValueError:  # an ill-formed hub id ("a b/c")
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def check_backbone_knobs(traits: BackboneTraits, name: str, given: dict, negative_prompt: str | None = None,
                         scheduler: str | None = None, label=str) -> None:  # fmt: skip
    """Refuse what backbone ``name`` cannot do: a negative prompt where it takes none, a control knob it lacks set to
    anything but its default (the default is what runs), a feature cache without a UNet, a scheduler it does not
    offer. ``given``: the knobs asked for (None: not given). ``label(key)`` is how the caller's user spells a key
    (``--control-scale``, ``job key knobs.control_scale``). Serves ``SceneTransformer.prepare`` (loaded) and the
    CLI's and job files' checks before any model loads (``known_traits``)."""
    kind = traits.kind
    if negative_prompt and not traits.takes_negative_prompt:
        raise InputError(f"{label('negative_prompt')}: backbone {name!r} ({kind}) takes no negative prompt")
    foreign = [k for k in CONTROL_KNOBS if given.get(k) not in (None, DEFAULT_KNOBS[k])
               and k not in traits.control_knobs]  # fmt: skip
    if foreign:
        hint = (
            "; flux-depth-lora has control_scale (its LoRA scale)"
            if kind == "flux-control" and "control_scale" in foreign
            else ""
        )
        raise InputError(
            f"{', '.join(map(label, foreign))}: backbone {name!r} ({kind}) has no such knob{hint}"
        )
    cache = given.get("feature_cache")
    if cache is not None and cache > 1 and not traits.has_unet:
        raise InputError(
            f"{label('feature_cache')}: backbone {name!r} ({kind}) has no UNet to cache; "
            "it works with sd15-depth, sd2-depth and sdxl-depth"
        )
    if scheduler is not None and scheduler not in traits.schedulers:
        raise InputError(
            f"{label('scheduler')} {scheduler!r} is not one of {', '.join(traits.schedulers)} for {kind}"
        )


def fit_knobs(traits: BackboneTraits, knobs: dict) -> dict:
    """Resolved ``knobs`` with those the backbone has no use for back at their defaults: a preset's feature cache
    where there is no UNet, its control knobs where there is no ControlNet (explicit ones are refused by
    ``check_backbone_knobs``). Serves ``prepare`` and the CLI's check before loading, which had refused a preset's
    feature cache with --compile on Flux, naming a flag not given, where the API ran."""
    out = dict(knobs)
    if out["feature_cache"] > 1 and not traits.has_unet:
        out["feature_cache"] = 1
    for k in CONTROL_KNOBS:
        if k not in traits.control_knobs:
            out[k] = DEFAULT_KNOBS[k]
    return out


def check_controlnet(kind: str, name: str, label=str) -> None:
    """A ControlNet given apart from backbone ``name`` fits its pipeline ``kind`` (known before the backbone loads
    when it is a registry entry or a folder at hand, else read from the loaded backbone)."""
    if not BACKENDS[kind].has_controlnet:
        raise InputError(
            f"{label('controlnet')}: backbone {name!r} ({kind}) takes no ControlNet; a depth ControlNet goes with "
            "sd15-depth, sdxl-depth or a folder or hub id of their kind"
        )


def _check_controlnet_fits(cn: dict, unet: dict, name: str, model: str) -> None:
    """A ControlNet of the UNet's family (cross-attention width) whose residuals add to the UNet's features and that
    takes the 3-channel control image (``cn``, ``unet``: their configs; an empty one: not known, not checked): a
    misfit loaded, and failed at the first image with a tensor-size error."""
    if not unet:
        return
    # a key the UNet's config lacks (misspelt) is not known here: its own loader says what is wrong (it was blamed on
    # the ControlNet, "wrong backbone family")
    if "cross_attention_dim" in unet and cn.get("cross_attention_dim") != unet["cross_attention_dim"]:
        raise ModelLoadError(
            f"ControlNet {name!r} (cross-attention {cn.get('cross_attention_dim')}) does not fit {model!r} "
            f"(UNet cross-attention {unet.get('cross_attention_dim')}): wrong backbone family"
        )

    def layout(config):
        blocks, layers = list(config.get("block_out_channels") or []), config.get("layers_per_block")
        return {"block_out_channels": blocks,
                "layers_per_block": [layers] * len(blocks) if isinstance(layers, int) else list(layers or [])}  # fmt: skip

    ours, theirs = layout(cn), layout(unet)
    for key in ours:
        if theirs[key] and ours[key] != theirs[key]:
            raise ModelLoadError(
                f"ControlNet {name!r} does not fit {model!r}: its {key} {ours[key]} against the UNet's "
                f"{theirs[key]} (its residuals would not add to the UNet's features)"
            )
    channels = cn.get("conditioning_channels", 3)
    if channels != 3:
        raise ModelLoadError(
            f"ControlNet {name!r} takes {channels}-channel control images; depth2img gives a depth ControlNet 3 "
            "(the depth map as an RGB image)"
        )


def _read_json(file: Path) -> dict | None:
    """A JSON object from ``file``; None where it is missing, unreadable or no object."""
    try:
        found = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _controlnet_config(path: Path, ref: ModelRef) -> dict:
    """The config of the diffusers ControlNetModel in ``path`` (a UNet's loaded as one with a warning, or failed
    deep inside)."""
    # a hub snapshot without it is an incomplete download, said as for a ControlNet given apart whose snapshot lacks
    # it (a registry one's was said to hold "no config.json naming a model class, not a diffusers ControlNetModel")
    if not ref.is_local and not (path / "config.json").is_file():
        raise not_cached(ref, COMPANION_FILES["controlnet"], "config.json")
    config = _read_json(path / "config.json") or {}
    held = config.get("_class_name")
    if held != "ControlNetModel":
        raise ModelLoadError(f"ControlNet {ref.name!r} at {path} holds {held or 'no config.json naming a model class'}, "
                             "not a diffusers ControlNetModel")  # fmt: skip
    return config


def plan_knobs(traits: BackboneTraits | None, preset_knobs: dict, model_knobs: dict, given: dict, *, label=str,
               blame=lambda err, keys: err, scheduler: str | None = None) -> dict:  # fmt: skip
    """The knobs a generation runs with, checked as a whole: resolved (``resolved_knobs``: given over the backbone's
    or LoRA's over a preset's over the defaults), each in range, those the backbone has no use for back at their
    defaults (``fit_knobs``; ``traits`` None: not known before loading), and a denoising step left. ``blame(err,
    keys)``: the error raised for ``err``, from the knobs ``keys`` (the CLI and a job file say which preset or LoRA
    gave them). ``scheduler``: the one a run takes, where known before loading, whose step limit the steps keep
    (``check_scheduler_steps``). Serves ``prepare`` and run_transform's and job files' checks before any model loads
    (each had its copy)."""
    knobs = resolved_knobs(preset_knobs, model_knobs, given)
    try:
        check_knobs(knobs, label)
    except InputError as err:
        raise blame(err, knobs) from None
    if traits is not None:
        knobs = fit_knobs(traits, knobs)
    try:
        check_denoising_steps(
            knobs["steps"], knobs["strength"], traits is not None and traits.flow_matching, label
        )
    except InputError as err:
        raise blame(err, ("steps", "strength")) from None
    if scheduler:
        try:  # (a preset's steps were blamed on --steps, never given)
            check_scheduler_steps(scheduler, knobs["steps"], label=label)
        except InputError as err:
            raise blame(err, ("steps",)) from None
    return knobs


def knob_sources(sources, given: dict):
    """A ``plan_knobs`` blame: its error saying which of ``sources`` ((name, knobs) pairs, a later one's knobs winning
    over an earlier one's; a name None is not said) gave a knob among the failing ones that ``given`` (the knobs
    passed, None where not) did not override."""

    def blame(err, keys):
        names = []
        for i, (name, knobs) in enumerate(sources):
            over = {k for _, later in sources[i + 1 :] for k in later}
            if name and any(k in knobs and k not in over and given.get(k) is None for k in keys):
                names.append(name)
        return InputError(f"{err} (with the knobs of {' and '.join(names)})") if names else err

    return blame


def _speed_lora_file(ref: ModelRef) -> str | None:
    """The file of a few-step LoRA in a hub repo of several (Hyper-SD): the entry's; None for a folder (a tiny one
    too) or a repo of one, whose one file is taken."""
    return ref.entry.weight_name if ref.entry is not None and not ref.is_local else None


def _speed_lora_patterns(ref: ModelRef) -> list[str]:
    """The files a few-step LoRA's loader fetches (and check_at_hand looks for in the cache): its one named file, else
    its safetensors."""
    wanted = _speed_lora_file(ref)
    return [wanted] if wanted else LORA_FILES


def check_speed_lora(kind: str, ref: ModelRef, label=str) -> None:
    """A few-step LoRA ``ref`` fits a backbone of pipeline ``kind`` (``check_companions`` before it loads, else
    read from the loaded backbone)."""
    if kind not in ("sd15-controlnet", "sdxl-controlnet"):
        raise InputError(
            f"{label('lora')}: few-step LoRAs are wired for sd15-depth and sdxl-depth, not {kind}"
        )
    if ref.entry is not None and ref.entry.for_pipeline != kind:
        raise InputError(f"{label('lora')}: {ref.name!r} is made for {ref.entry.for_pipeline}, not {kind}")


def check_companions(traits: BackboneTraits | None, name: str, *, lora: ModelRef | None = None,
                     controlnet: bool = False, label=str) -> None:  # fmt: skip
    """A few-step ``lora`` and a ControlNet given apart (``controlnet``) fit backbone ``name``, whose ``traits`` are
    known before it loads (``known_traits``: a registry entry's, a folder's at hand; None: its loader checks). Serves
    ``check_at_hand`` (``from_pretrained``, ``run_transform``, ``run_job``) and the CLI's and job files' checks
    before an output folder is made (each had its copy)."""
    if traits is None:
        return
    if lora is not None:
        check_speed_lora(traits.kind, lora, label=label)
    if controlnet:
        check_controlnet(traits.kind, name, label=label)


def _unmerged_adapters(module) -> bool:
    """Whether ``module`` carries LoRA adapters applied per call (Flux's depth LoRA, whose scale is a knob): fused
    QKV projections are built from the base weights, and those adapters' q/k/v deltas would be bypassed. A few-step
    LoRA is fused into the weights first, so fusing after it keeps it."""
    if not getattr(module, "_hf_peft_config_loaded", False):
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) and not m.merged for m in module.modules())


class SD2DepthBackend(Backend):
    kind = "sd2-depth"
    txt2img_class = "StableDiffusionDepth2ImgPipeline"
    supports_txt2img = False
    has_controlnet = False
    default_scheduler = "pndm"
    CONTROL_KNOBS = ()  # depth enters as an extra UNet channel, at full strength on every step

    @classmethod
    def load(cls, ref, *, path, dtype, local_files_only):
        # Our DepthMap is fed as depth_map, so the repo's own DPT estimator is not needed.
        pipe = cls._from_pretrained(
            cls.txt2img_class, path, ref, dtype, depth_estimator=None, feature_extractor=None
        )
        return cls(pipe, ref)

    def call_kwargs(self, *, images, depths, knobs):
        import torch

        from .conditioning import normalize

        # scaled to [0, 1] in float64: the pipeline casts depth_map to the model's dtype before its own min-max, and
        # raw values (65535 from a 16-bit PNG, 1/d of a sub-millimetre depth) overflowed float16 to inf (all NaN)
        inverses = [normalize(d.inverse()) for d in depths]
        if not all(inv.max() > inv.min() for inv in inverses):
            raise InputError(
                "depth is constant (no structure): SD2-depth normalises it by its range, which is zero"
            )
        depth_map = torch.stack([torch.from_numpy(inv) for inv in inverses])
        return dict(image=_image_arg(images), depth_map=depth_map, strength=knobs["strength"])


class FluxBackend(Backend):
    kind = "flux-control"
    txt2img_class = "FluxControlPipeline"
    img2img_class = "FluxControlImg2ImgPipeline"
    has_controlnet = False
    has_unet = False
    flow_matching = True
    takes_negative_prompt = False  # FluxControlPipeline uses distilled guidance, no negative prompt
    default_scheduler = "flow-euler"
    # Its model cards load it in bfloat16; in float16 some text-encoder activations must be clipped and the
    # outputs differ from bf16/fp32 (diffusers' Flux docs, 'Running FP16 inference').
    accelerator_dtype = "bfloat16"

    @classmethod
    def control_knobs_for(cls, uses_lora: bool) -> tuple[str, ...]:
        return ("control_scale",) if uses_lora else ()

    @classmethod
    def load(cls, ref, *, path, dtype, local_files_only):
        # FLUX.1-Depth-dev: control built into the transformer
        if _model_index(path)["_class_name"] != "FluxPipeline":
            return cls(cls._from_pretrained(cls.txt2img_class, path, ref, dtype), ref)
        # the depth Control LoRA is found before the base (tens of GB) loads
        lora_ref = _companion_ref(ref, path, "lora")
        lora_path, lora_ref = snapshot(
            lora_ref, local_files_only=local_files_only, allow_patterns=COMPANION_FILES["lora"]
        )
        weights = _speed_lora_weights(lora_ref, lora_path)  # (its one file, as a few-step LoRA's)
        pipe = cls._from_pretrained(cls.txt2img_class, path, ref, dtype)
        try:
            pipe.load_lora_weights(lora_path, weight_name=weights.name, adapter_name="depth")
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            damaged = unreadable_weights(lora_path, err)
            raise ModelLoadError(
                f"LoRA {lora_ref.name!r} at {lora_path}: {damaged}"
                if damaged
                else f"LoRA {lora_ref.name!r} could not be loaded into {ref.name!r}: {first_line(err)}"
            ) from None
        if pipe.transformer.config.in_channels != 2 * pipe.vae.config.latent_channels * 4:
            raise ModelLoadError(
                f"LoRA {lora_ref.name!r} is not a depth Control LoRA (it does not widen x_embedder)"
            )
        return cls(pipe, ref, lora_ref)

    @property
    def uses_lora(self) -> bool:
        return self.companion_ref is not None

    @classmethod
    def allowed_schedulers(cls):
        return ["flow-euler"]

    def text_limit(self):
        return "tokenizer_2", 512

    def call_kwargs(self, *, images, depths, knobs):
        # the control image goes through the VAE, whose input is [-1, 1]: diffusers normalises a PIL or numpy control
        # image so, and passes a tensor as it is (given in [0, 1], far was encoded as mid grey)
        kwargs = dict(control_image=self.control_tensor(depths) * 2 - 1)
        if self.uses_lora:
            kwargs["joint_attention_kwargs"] = {"scale": knobs["control_scale"]}  # the LoRA scale is the knob
        if images is not None:
            kwargs.update(image=_image_arg(images), strength=knobs["strength"])
        return kwargs


BACKENDS = {b.kind: b for b in (SD15Backend, SD2DepthBackend, SDXLBackend, FluxBackend)}


# the files of a base's companion repo that its loader fetches (and check_at_hand looks for in the cache)
COMPANION_FILES = {"controlnet": SINGLE_MODEL_FILES, "lora": LORA_FILES}

# where a local base folder's companion is looked for, as an error says it
_COMPANION_PLACES = "put one in {folder}/{what}/ or a folder beside it named {folder.name}-{what}"


def _companion_ref(ref: ModelRef, path: Path, what: str, kind: str | None = None) -> ModelRef:
    """A base repo's ControlNet or LoRA: a `controlnet/` (`lora/`) subfolder, a sibling folder named after it with
    `-controlnet` (`-lora`), as two hub repos download side by side; else the registry's hub id: the entry's, or
    for a local folder of a ``kind`` outside the registry (a fine-tune, a download of the base alone), the first
    registry backbone's of that kind (its depth ControlNet; such a folder was refused)."""
    from .registry import backbones
    from .tiny import companion_folder

    noun = {"controlnet": "ControlNet", "lora": "LoRA"}[what]
    for candidate in (path / what, companion_folder(path, what)):
        if candidate.is_dir() and any(candidate.iterdir()):
            return ModelRef(
                name=str(candidate), location=str(candidate), revision=None, is_local=True, kind=noun
            )
    entry = ref.entry
    if entry is None and kind is not None:
        entry = next((e for e in backbones().values() if e.pipeline == kind and getattr(e, what, None)), None)
    hub_id = getattr(entry, what, None) if entry is not None else None
    if hub_id:
        return ModelRef(
            name=hub_id, location=hub_id, revision=entry.companion_revision, is_local=False, kind=noun
        )
    raise ModelLoadError(
        f"model {ref.name!r}: no {what} found ({_COMPANION_PLACES.format(what=what, folder=path)})"
    )


def _speed_lora_weights(ref: ModelRef, path: Path) -> Path:
    """The one weights file a few-step LoRA's folder ``path`` holds (its registry entry's, else its only .safetensors),
    or one line saying what it holds instead."""
    wanted = _speed_lora_file(ref)
    weights = [path / wanted] if wanted else sorted(path.glob("*.safetensors"))
    # (none there was said without advice, where a ControlNet's was an incomplete download or copy)
    advice = ": an incomplete download or copy? fetch or copy it again"
    if wanted and not weights[0].is_file():
        raise ModelLoadError(f"{ref.kind} {ref.name!r} at {path}: no {wanted}{advice}")
    if len(weights) != 1:
        pickles = (
            " (pickled .bin weights are never loaded: loading runs code)" if any(path.glob("*.bin")) else ""
        )
        raise ModelLoadError(f"{ref.kind} {ref.name!r} at {path}: expected one .safetensors file, found "
                             f"{len(weights)}{pickles or (advice if not weights else '')}")  # fmt: skip
    return weights[0]


def check_at_hand(ref: ModelRef, *, local_files_only: bool = False, controlnet: ModelRef | None = None,
                  lora: ModelRef | None = None, label=str) -> None:  # fmt: skip
    """What is known of a backbone (and of a ``controlnet`` given apart) before anything loads: a local folder holds
    a supported pipeline (a ControlNetModel), and offline a hub id is in the cache, and so are the hub repos loaded
    beside it (a registry backbone's ControlNet or depth LoRA, a few-step ``lora``). For callers that load the
    (small) estimator first: a bad backbone was reported as the estimator's problem (its own weights missing
    offline), or found only after the estimator had loaded; a missing companion, once the backbone had loaded.
    ``label(key)``: how the caller's user spells ``lora`` and ``controlnet``."""
    # (a ControlNet for SD2-depth or Flux: refused before its folder is read)
    if lora is not None or controlnet is not None:
        check_companions(
            known_traits(ref), ref.name, lora=lora, controlnet=controlnet is not None, label=label
        )
    # (its weights were found wanting once the backbone had loaded); a tiny one is built on first use, as a tiny
    # backbone is (it was refused as holding no file)
    if lora is not None and lora.is_local and not is_tiny(lora.name):
        _speed_lora_weights(lora, Path(lora.location))
    folder = None
    if not is_tiny(ref.name):  # (built on first use)
        folder = _folder_at_hand(ref)
        if folder is not None and folder.is_dir():  # (a local path that is not there: the loader says so)
            pipeline_kind(folder)
        elif folder is None and not ref.is_local and hub_offline(local_files_only):
            raise not_cached(ref, PIPELINE_FILES, "model_index.json")
    if controlnet is not None:
        at_hand = _folder_at_hand(controlnet, "config.json")
        if at_hand is not None and at_hand.is_dir():
            _controlnet_config(at_hand, controlnet)
        elif at_hand is None and hub_offline(local_files_only):
            raise not_cached(controlnet, COMPANION_FILES["controlnet"], "config.json")
    if not hub_offline(local_files_only):
        return
    companions = []
    if lora is not None:
        companions.append((lora, _speed_lora_patterns(lora), "lora"))
    if controlnet is not None:
        companions.append((controlnet, COMPANION_FILES["controlnet"], "controlnet"))
    entry = ref.entry
    if controlnet is None and entry is not None and folder is not None and (entry.controlnet or entry.lora):
        what = "controlnet" if entry.controlnet else "lora"
        companions.append((_companion_ref(ref, folder, what), COMPANION_FILES[what], what))
    for companion, patterns, what in companions:
        if companion.is_local:  # (a folder: its loader says what is wrong)
            continue
        path = snapshot_dir(companion, local_files_only=True, allow_patterns=patterns)
        # the files its loader takes, as it looks for them: without the repository's file list (trees/), which a
        # download writes, huggingface_hub takes any snapshot folder as complete, and a LoRA's weights or a
        # ControlNet's missing from it were found once the estimator and the backbone had loaded
        if what == "lora":
            weights = [_speed_lora_weights(companion, path)]
        else:
            require_safetensors(path, companion)
            _controlnet_config(path, companion)
            weights = None
        # (a zero-byte blob, an interrupted download's, was named once the backbone had loaded)
        damaged = damaged_weights(path, weights)
        if damaged:
            raise ModelLoadError(f"{companion.kind} {companion.name!r} at {path}: {damaged}")


def load_backend(ref: ModelRef, *, dtype, device=None, local_files_only: bool = False,
                 controlnet: ModelRef | None = None) -> Backend:  # fmt: skip
    """Load a backbone's weights (on the CPU; the caller moves them). ``dtype`` None: the backbone family's own
    on ``device`` (``Backend.accelerator_dtype``; float32 on CPU). ``controlnet``: a depth ControlNet instead of
    the backbone's own (SD1.5 and SDXL)."""
    path, ref = snapshot(ref, local_files_only=local_files_only, allow_patterns=PIPELINE_FILES)
    kind = pipeline_kind(path)
    if ref.entry is not None and ref.entry.pipeline != kind:
        raise ModelLoadError(
            f"model {ref.name!r} holds a {kind} pipeline ({_model_index(path)['_class_name']}), "
            f"but backbone {ref.entry.name!r} needs {ref.entry.pipeline}"
        )
    dtype = resolve_dtype(dtype, resolve_device(device), BACKENDS[kind].accelerator_dtype)
    if controlnet is None:
        return BACKENDS[kind].load(ref, path=path, dtype=dtype, local_files_only=local_files_only)
    check_controlnet(kind, ref.name)
    return BACKENDS[kind].load(
        ref, path=path, dtype=dtype, local_files_only=local_files_only, controlnet=controlnet
    )
