"""``depth2img bench``: plain diffusers against depth2img, interleaved, on the same inputs.

Full-size architectures are built from ``configs/bench/*.json`` with random weights (timing does not depend
on weight values); ``--preset tiny`` uses the tiny test models so CI can smoke-test the command on CPU.
Reported per variant: ms per image, images per hour, it/s (denoising steps per second of the whole call: text
encoding and VAE decode included; and of the denoising loop alone, from the same calls), share of peak FLOP/s
(FLOPs counted with torch.utils.flop_counter), peak memory,
and the max abs difference of its output from plain diffusers, judged against the bf16 tolerance: what rounding
the plain pipeline to bf16 alone changes, measured in the same run.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import re
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .knobs import MAX_IMAGES
from .registry import configs_dir


def _config(name: str) -> dict:
    return json.loads((configs_dir() / "bench" / f"{name}.json").read_text())


def build(name: str, device="cpu", dtype=None):
    """A full-size model with random weights from ``configs/bench/NAME.json`` (``device='meta'``: no memory)."""
    import torch

    cfg = _config(name)
    with torch.device(device):
        if name.endswith("_unet"):
            from diffusers import UNet2DConditionModel

            model = UNet2DConditionModel.from_config(cfg)
        elif name.endswith("_controlnet"):
            from diffusers import ControlNetModel

            model = ControlNetModel.from_config(cfg)
        elif name.endswith("_vae"):
            from diffusers import AutoencoderKL

            model = AutoencoderKL.from_config(cfg)
        elif name == "clip_l_text":
            from transformers import CLIPTextConfig, CLIPTextModel

            model = CLIPTextModel(CLIPTextConfig(**cfg))
        elif name == "clip_g_text":
            from transformers import CLIPTextConfig, CLIPTextModelWithProjection

            model = CLIPTextModelWithProjection(CLIPTextConfig(**cfg))
        elif name.startswith("depth_anything"):
            from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

            backbone = Dinov2Config(
                **{k: v for k, v in cfg.pop("backbone_config").items() if k != "model_type"}
            )
            model = DepthAnythingForDepthEstimation(DepthAnythingConfig(backbone_config=backbone, **cfg))
        elif name == "dpt_hybrid":
            from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

            backbone = BitConfig(**{k: v for k, v in cfg.pop("backbone_config").items() if k != "model_type"})
            model = DPTForDepthEstimation(DPTConfig(backbone_config=backbone, **cfg))
        else:
            raise KeyError(name)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# Seeds that diffusers-b1 (one image per call) runs in a batch run: its time per image is what counts
B1_IMAGES = 4
# --batch: the most images a call of the library's takes (transform's num_images, knobs.MAX_IMAGES); 4 times the
# dataset mode measured (batch 16 at 512 px: 11.1 GiB at its peak on an H100, plain diffusers in fp16), and SDXL at
# 1024 px needs several times SD1.5's memory an image. A typo (100000) ran until killed
MAX_BATCH = MAX_IMAGES

BACKBONES = {  # bench name -> (registry tiny entry, diffusers pipeline, depth2img backend, full-size configs)
    "sd15": ("tiny/sd15-depth", "StableDiffusionControlNetPipeline", "SD15Backend",
             {"unet": "sd15_unet", "controlnet": "sd15_controlnet", "vae": "sd_vae", "text_encoder": "clip_l_text"}),
    "sdxl": ("tiny/sdxl-depth", "StableDiffusionXLControlNetPipeline", "SDXLBackend",
             {"unet": "sdxl_unet", "controlnet": "sdxl_controlnet", "vae": "sdxl_vae", "text_encoder": "clip_l_text",
              "text_encoder_2": "clip_g_text"}),
}  # fmt: skip


def _components(backbone: str, preset: str, device, dtype, scheduler: str = "unipc") -> dict:
    """The pipeline's components: the tiny test models (through the project's loader) or full-size random weights,
    with diffusers' own ``scheduler`` made from the SD repos' scheduler config (depth2img's rows make theirs)."""
    from . import tiny
    from .backends import make_scheduler

    tiny_name, _, _, configs = BACKBONES[backbone]
    if preset == "tiny":
        from .backends import load_backend
        from .registry import resolve_backbone

        pipe = load_backend(resolve_backbone(tiny_name), dtype=dtype).pipe
        comps = {k: v for k, v in pipe.components.items() if k in (*configs, "tokenizer", "tokenizer_2")}
    else:
        comps = {k: build(n, device) for k, n in configs.items()}
        comps["tokenizer"] = (
            tiny.clip_tokenizer()
        )  # token ids only; the vocabulary's size does not change speed
        if "text_encoder_2" in configs:
            comps["tokenizer_2"] = tiny.clip_tokenizer()
    comps = {
        k: (v.to(device=device, dtype=dtype).eval() if hasattr(v, "parameters") else v)
        for k, v in comps.items()
    }
    comps["scheduler"] = make_scheduler(scheduler, tiny._sd_scheduler().config, stock=True)
    return comps


# --attention choices of the bench alone: the order in which SDPA tries its kernels in depth2img's rows, each
# falling back to the next for a shape it cannot serve (PyTorch's own order is FlashAttention's first, but on an
# H100 with torch 2.11 the compiled graphs ran cuDNN's: benchmarks/run_gpu-core-nvidia-h100.log)
SDPA_ORDERS = {
    "sdpa-flash": ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"),
    "sdpa-cudnn": ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
}


@contextlib.contextmanager
def _diffusers_unipc(st):
    """In the block, ``st``'s UniPC runs as diffusers' own: depth2img's subclass adds methods and no state, so its
    instance takes diffusers' class (the pipeline, its compiled models and the scheduler's state stay as they are)."""
    import diffusers

    _, scheduler = st.backend.scheduler("unipc")
    own = type(scheduler)
    scheduler.__class__ = diffusers.UniPCMultistepScheduler
    try:
        yield
    finally:
        scheduler.__class__ = own


@contextlib.contextmanager
def _attention_preference(attention: str):
    """In an ``SDPA_ORDERS`` ``attention``, SDPA tries its kernels in that order (``sdpa_kernel`` with
    ``set_priority``); else PyTorch's own. A compiled graph keeps the kernels chosen when it was traced, and
    AOTAutograd's cache of compiled graphs is off meanwhile: its key does not hold the order, so a graph traced
    under another order in an earlier run on the same machine would come back from it."""
    if attention not in SDPA_ORDERS:
        yield
        return
    import torch._functorch.config as functorch_config
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [getattr(SDPBackend, name) for name in SDPA_ORDERS[attention]]
    with sdpa_kernel(order, set_priority=True), functorch_config.patch(enable_autograd_cache=False):
        yield


@contextlib.contextmanager
def _cudnn_benchmark(on: bool):
    """With ``on``, cuDNN's benchmark mode in the block (``torch.backends.cudnn.benchmark``, off by default in
    PyTorch and in diffusers' docs): the first call of each convolution shape times cuDNN's algorithms and keeps the
    fastest for the process, where otherwise a heuristic picks one (of at most ``cudnn.benchmark_limit``
    algorithms). A graph captured for CUDA graphs keeps the algorithms of its capture. cuDNN caches a shape's plan
    whichever way it was chosen, under a key without this setting: a convolution that plain diffusers ran first in
    the same dtype and memory layout (an eager row in fp16 without channels-last, the low-VRAM rows) keeps the
    heuristic's pick. The setting is back as it was afterwards."""
    import torch

    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _pipeline(backbone: str, comps: dict):
    from .loading import library_class

    extra = (
        dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        if backbone == "sd15"
        else {}
    )
    pipe = library_class("diffusers", BACKBONES[backbone][1])(**comps, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _copy(comps: dict, dtype) -> dict:
    import copy

    return {
        k: (copy.deepcopy(v).to(dtype=dtype) if hasattr(v, "parameters") else v) for k, v in comps.items()
    }


def _resident_bytes(pipe, device) -> int:
    """Bytes of this pipeline's weights that sit on ``device`` (0 for an offloaded pipeline)."""
    seen, total = set(), 0
    for module in pipe.components.values():
        for t in (*module.parameters(), *module.buffers()) if hasattr(module, "parameters") else ():
            if t.device.type == device.type and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


def _dtypes(device, dtype, fast=None):
    """(plain, fast, the fast one's default): the libraries' documented default (fp16 on GPU, fp32 on CPU), or
    ``dtype``; the fast path's, ``fast``, else its default: bf16 on GPU, the plain one elsewhere (a run in another
    names files of its own)."""
    import torch

    from .loading import resolve_dtype

    plain = resolve_dtype(dtype, device)
    default = torch.bfloat16 if device.type == "cuda" else plain
    return plain, resolve_dtype(fast, device) if fast is not None else default, default


def _peak_flops(device, dtype) -> float:
    """Measured dense matmul throughput (FLOP/s) of this device and dtype: the 'peak' when none is given."""
    import torch

    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps = 20 if device.type == "cuda" else 5
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def count_cpu_attention() -> None:
    """Make torch's FLOP counter count SDPA on a CPU. There it runs as
    ``aten._scaled_dot_product_flash_attention_for_cpu``, which torch.utils.flop_counter (2.13) has no formula for:
    attention counted 0, 4.7 % of SD1.5's UNet FLOPs at 256 px and more at larger sizes (tokens squared). The
    formula is the GPU flash kernel's; GPU counts were never affected."""
    import torch
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None and op not in flop_counter.flop_registry:
        # sdpa_flop is registered already wrapped (it takes the arguments, not their shapes): get_raw
        flop_counter.register_flop_formula(op, get_raw=True)(flop_counter.sdpa_flop)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":  # its kernels run asynchronously too: a timer would see only their queueing
        torch.mps.synchronize()


def _marker(device):
    """(mark, seconds): ``mark()`` marks now on the device's own timeline without waiting for it (a CUDA or MPS
    event; a CPU's work is done when its call returns, so its clock), ``seconds(a, b)`` reads two marks' interval
    once the device is synchronised."""
    import torch

    events = {"cuda": getattr(torch, "cuda", None), "mps": getattr(torch.mps, "event", None)}.get(device.type)
    if events is None:
        return time.perf_counter, lambda a, b: b - a

    def mark():
        event = events.Event(enable_timing=True)
        event.record()
        return event

    return mark, lambda a, b: a.elapsed_time(b) / 1000  # (milliseconds)


@contextlib.contextmanager
def step_marks(device, scheduler_class):
    """In the block, the denoising loop's own rate in each pipeline call, as diffusers' progress bar shows it,
    without text encoding, set-up and VAE decode: the list yielded holds, after the block, each call's steps per
    second. Every step of ``scheduler_class`` (which every row runs, or a subclass that inherits its step:
    depth2img's UniPC) is marked at its end without waiting for the device (``_marker``), so the block's calls are
    the timed ones; a call's steps are those after its ``set_timesteps`` (PNDM takes one more than asked: counting
    the steps asked cut its calls across each other), its rate their intervals, first step end to last. Empty where
    a call takes fewer than 2 steps. (Until 2026-11-28 the rate came from one more, untimed call, the device
    synchronised at each step's end: the host then could not queue a step ahead, and that call's noise was its
    own; the H100's diffusers-b1 row read 12.90 it/s in its loop, 18.67 in its whole call.)"""
    calls, step, schedule = [], scheduler_class.step, scheduler_class.set_timesteps
    mark, seconds = _marker(device)

    def marked(*args, **kwargs):
        out = step(*args, **kwargs)
        if calls:
            calls[-1].append(mark())
        return out

    def scheduled(*args, **kwargs):  # a pipeline call sets its schedule once
        calls.append([])
        return schedule(*args, **kwargs)

    rates = []
    scheduler_class.step, scheduler_class.set_timesteps = marked, scheduled
    try:
        yield rates
    finally:
        scheduler_class.step, scheduler_class.set_timesteps = step, schedule
    _sync(device)
    if calls and all(len(call) >= 2 for call in calls):
        rates.extend((len(call) - 1) / seconds(call[0], call[-1]) for call in calls)


def loop_rates(fn, device, scheduler_class) -> list[float]:
    """The denoising loop's rate in each pipeline call ``fn`` makes (``step_marks``)."""
    with step_marks(device, scheduler_class) as rates:
        fn()
    return rates


def busy_share(intervals, wall_s: float) -> float:
    """The share of ``wall_s`` seconds covered by the union of ``intervals`` ((start, end) in microseconds)."""
    busy, reached = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reached:
            busy += end - max(start, reached)
            reached = end
    return busy / 1e6 / wall_s


GPU_WORK = {"kernel", "gpu_memcpy", "gpu_memset"}  # torch.profiler's activity types of a GPU's own work
# CUDA runtime calls that block the host until the GPU has finished what was queued (torch's copy of a CPU tensor to
# the GPU, or a GPU scalar read on the host, is a cudaMemcpyAsync then a cudaStreamSynchronize)
HOST_WAITS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy"}


def host_waits(events) -> int:
    """How often the host waited for the GPU in a Chrome trace's events (``HOST_WAITS`` runtime calls)."""
    # (CUPTI's own names carry a version, cudaMemcpy_v3020, where kineto does not strip it)
    runtime = [e.get("name", "") for e in events if e.get("ph") == "X" and e.get("cat") == "cuda_runtime"]
    return sum(name.split("_v")[0] in HOST_WAITS for name in runtime)


def trace_figures(events, wall_s: float) -> tuple[float, int]:
    """From a Chrome trace's events, as torch.profiler exports them: the share of ``wall_s`` during which the GPU ran
    kernels or copies (the union of their intervals; not the GPU-side annotations or syncs, which span its idle
    gaps), and how often the host waited for the GPU (``host_waits``)."""
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("ph") == "X" and e.get("cat") in GPU_WORK]
    if not spans:  # not an idle GPU: a profiler that saw none of its work (0 % would be a wrong figure)
        raise RuntimeError("torch.profiler recorded no GPU activity")
    share = busy_share(spans, wall_s)
    if share > 1.0:  # intervals on another clock, or corrupt (the figure would be wrong)
        raise RuntimeError(f"torch.profiler's GPU intervals cover {share:.0%} of the call")
    return share, host_waits(events)


def _trace(fn, device) -> tuple[list, float]:
    """(the Chrome trace's events, the call's seconds) of one call ``fn`` under torch.profiler (CUDA activity). Read
    from the exported trace: FunctionEvent's ``activity_type`` came after torch 2.11, the GPU machine's."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        fn()
        _sync(device)
        wall = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(trace))
        return json.loads(trace.read_text())["traceEvents"], wall


def device_busy(fn, device) -> tuple[float, int] | None:
    """One call ``fn`` under torch.profiler: the share of it during which the GPU ran kernels or copies (the rest it
    waited on the host: Python, kernel launches, a host sync such as a CPU tensor copied to the GPU each scheduler
    step), and the host's waits for the GPU in it (``trace_figures``), less those of a profiled call that does
    nothing (this function's closing synchronize, the profiler's own at its exit). None off a CUDA GPU."""
    if device.type != "cuda":
        return None
    share, waits = trace_figures(*_trace(fn, device))
    return share, waits - host_waits(_trace(lambda: None, device)[0])


def run_bench(*, backbone: str = "sd15", preset: str = "full", size: int | None = None, steps: int = 30,
              batch: int = 1, repeats: int = 3, device=None, dtype=None, compile_mode: str | None = None,
              control_end: float = 1.0, feature_cache: int = 1, attention: str = "sdpa", low_vram: bool = False,
              channels_last: bool | None = None, fuse_qkv: bool = True, peak_tflops: float | None = None,
              inductor=None, fast_dtype=None, compiled_only: bool = False, profile: bool = False,
              scheduler: str = "unipc", diffusers_unipc: bool = False, cudnn_benchmark: bool = False,
              out_dir: str | Path = "benchmarks",
              progress=print) -> dict:  # fmt: skip
    """Depth ControlNet (SD1.5 or SDXL), interleaved on the same prompt, control image and seeds:

    - ``diffusers``: the plain pipeline as its docs show it (fp16 on GPU, SDPA, UniPC), ``batch`` images per call
      (``scheduler``: another of ``SCHEDULERS`` in every row, e.g. to measure what UniPC's own work costs; depth2img's
      rows run depth2img's UniPC, diffusers' arithmetic without its host waits, ``schedulers``);
    - ``diffusers-b1`` (when batch > 1): the same, one image per call, as a per-image script runs it, on the first
      ``B1_IMAGES`` seeds (its time per image is what counts; the rest would only lengthen the run);
    - ``depth2img``: the API with the same components and settings (its overhead);
    - ``depth2img-fast``: the fast path (bf16 on GPU, or ``fast_dtype``; channels-last, fused QKV, ControlNet
      skipped outside its window);
    - ``depth2img-fast-compiled`` (``compile_mode``): the same with torch.compile of the UNet, ControlNet and VAE
      decoder; if compiling fails at warm-up the row is dropped and ``compile_error`` says why. Several modes,
      comma-separated, give a row each, ``depth2img-fast-compiled-MODE``, on one baseline (one run, not one per
      mode: a GPU lease is short); ``inductor``: inductor settings on top of each mode's (a dict, or ``NAME=VALUE``
      strings), to measure one before it becomes a mode's own;
    - ``depth2img-fast+cacheN`` (``feature_cache`` N > 1): the fast path reusing deep UNet features (quality trade);
    - ``depth2img-fast-xformers`` (``attention='xformers'``): the fast path with xformers attention instead of SDPA;
      ``attention`` ``sdpa-flash`` or ``sdpa-cudnn`` adds no row: every row of depth2img's but the API's runs with
      SDPA trying FlashAttention's or cuDNN's kernels first (``_attention_preference``; in the path as
      ``attention:flash-first``), to be compared with a run without it by their speed-ups against the same run's
      plain diffusers; ``cudnn_benchmark`` likewise adds no row: every row of depth2img's but the API's runs with
      cuDNN timing its convolution algorithms (``_cudnn_benchmark``; in the path as ``cudnn:benchmark``);
    - ``ROW+diffusers-unipc`` (``diffusers_unipc``): the first compiled row (else the eager fast path) again, the
      same pipeline, with diffusers' own UniPC in place of depth2img's: what depth2img's UniPC saves, in one run;
    - ``depth2img-lowvram-model`` and ``-group`` (``low_vram``, GPU only): model CPU offload or group offloading
      (layer by layer, copies on a CUDA stream), each with VAE slicing and tiling.

    ``compiled_only``: of the rows above, ``diffusers`` (the baseline each row is compared against) and the
    compiled ones (with the others asked for): a compiler setting measured in less device time (on an H100 the
    three rows left out, by their calls' times, about 75 s of a 250 s batch-16 run), without the API overhead or
    the 3x figure. ``profile``: after the timed calls, one more call of plain diffusers, of each compiled row and of
    a ``+diffusers-unipc`` row and the row it repeats, under torch.profiler, for the share of it the GPU was busy
    and the host's waits for it (``device_busy``; on a GPU only).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from . import backends
    from .depth_run import output_dir
    from .depthmap import DepthMap
    from .errors import InputError, first_line
    from .knobs import MAX_STEPS, check_compile
    from .loading import resolve_device, resolve_dtype
    from .registry import ModelRef
    from .transformer import SceneTransformer

    if backbone not in BACKBONES:
        raise InputError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    if repeats < 1:
        raise InputError(f"repeats must be >= 1, got {repeats!r}")
    # (steps 1001 failed in depth2img's first row, after the models were built and plain diffusers' warm-up)
    for key, value, most in (("steps", steps, MAX_STEPS), ("batch", batch, MAX_BATCH)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise InputError(f"{key} must be an integer in 1..{most}, got {value!r}")
    if peak_tflops is not None and not (math.isfinite(peak_tflops) and peak_tflops > 0):
        raise InputError(f"--peak-tflops must be a finite number > 0, got {peak_tflops!r}")
    modes = compile_mode.split(",") if compile_mode is not None else []  # '' is refused (it ran uncompiled)
    for mode in modes:
        check_compile(mode, "--compile", feature_cache=feature_cache, cache_name="--feature-cache")
    if len(set(modes)) < len(modes):
        raise InputError(f"--compile names a mode twice: {compile_mode!r}")
    inductor = backends.check_inductor_options(inductor, "--inductor")
    if inductor and not modes:
        raise InputError("--inductor sets the compiler's options: it needs --compile MODE")
    if diffusers_unipc and scheduler != "unipc":
        raise InputError(f"--diffusers-unipc times a row with diffusers' own UniPC: it needs --scheduler unipc, got "
                         f"{scheduler!r}")  # fmt: skip
    if compiled_only and not modes:
        raise InputError(
            "--compiled-only times plain diffusers against the compiled rows: it needs --compile MODE"
        )
    device = resolve_device(device)
    if low_vram and device.type != "cuda":
        raise InputError("--low-vram measures GPU memory under CPU offload; no GPU is available here")
    backends.check_attention(attention, "--attention", also=tuple(SDPA_ORDERS))  # before any model is built
    backend_class = getattr(backends, BACKBONES[backbone][2])
    backends.check_backbone_knobs(backend_class.traits_for(uses_lora=False), backbone, {}, scheduler=scheduler,
                                  label=lambda key: f"--{key}")  # fmt: skip
    out_dir = output_dir(out_dir, ())  # a file there failed only after the whole run, losing its figures
    size = size or (1024 if backbone == "sdxl" else 512)
    plain_dtype, fast_dtype, default_fast = _dtypes(device, dtype, fast_dtype)
    progress(f"building {backbone} + ControlNet ({preset}) on {device} ...")
    comps = _components(backbone, preset, device, plain_dtype, scheduler)
    plain = _pipeline(backbone, comps)
    ref = ModelRef(name="bench", location="bench", revision=None, is_local=True)

    def ours(pipe, dt):
        return SceneTransformer(
            backend_class(pipe, ref), device=device, dtype=dt, native_size=size, name="bench"
        )

    same = ours(plain, plain_dtype)
    # channels_last (None: the compiled rows on GPUs) and fuse_qkv apply to every fast-path row, so each can be measured off
    fast_options = dict(channels_last=channels_last, fuse_qkv=fuse_qkv)
    fast = applied = None
    # the eager fast path, where a row times it (compiled-only built it, a full copy of the models, for nothing; its
    # --compile refuses --feature-cache, the other row that runs it)
    if not compiled_only:
        fast = ours(_pipeline(backbone, _copy(comps, fast_dtype)), fast_dtype)
        applied = fast.backend.optimize(**fast_options)
    extra, compiled_rows, compiled_path = {}, {}, None  # row name -> its mode; the first mode's path
    for mode in modes:
        name = "depth2img-fast-compiled" + (f"-{mode}" if len(modes) > 1 else "")
        extra[name] = compiled = ours(_pipeline(backbone, _copy(comps, fast_dtype)), fast_dtype)
        compiled_rows[name] = mode
        path = compiled.backend.optimize(
            compile_mode=mode, compile_fallback=False, compile_options=inductor, **fast_options
        )
        compiled_path = compiled_path or path
    if applied is None:  # what the compiled rows apply besides compiling: the same options
        applied = [step for step in compiled_path if ":compile(" not in step]
    # the settings that depth2img's rows run under (around their calls, not in the models)
    marks = [f"attention:{attention.removeprefix('sdpa-')}-first"] if attention in SDPA_ORDERS else []
    marks += ["cudnn:benchmark"] if cudnn_benchmark else []
    applied, compiled_path = applied + marks, compiled_path and compiled_path + marks
    if attention == "xformers":
        extra["depth2img-fast-xformers"] = xf = ours(
            _pipeline(backbone, _copy(comps, fast_dtype)), fast_dtype
        )
        xf.backend.optimize(**fast_options)
        xf.backend.memory(device=device, attention="xformers")
    for mode in ("model", "group") if low_vram else ():
        lv_comps = {
            k: (v.to("cpu") if hasattr(v, "parameters") else v) for k, v in _copy(comps, plain_dtype).items()
        }
        extra[f"depth2img-lowvram-{mode}"] = lv = ours(_pipeline(backbone, lv_comps), plain_dtype)
        lv.backend.memory(device=device, offload=mode, vae_slicing=True, vae_tiling=True)

    yy, xx = np.mgrid[0:size, 0:size]
    depth = DepthMap(1.0 + yy + 0.5 * xx, "metric_depth")
    from PIL import Image

    image = Image.new("RGB", (size, size), (128, 128, 128))
    prompt = "a city street at night, rain"
    seeds = list(range(batch))
    control = torch.from_numpy(depth.control_image()).permute(2, 0, 1)[None]

    def run_plain(seed_list, pipe=plain):
        gens = [torch.Generator("cpu").manual_seed(s) for s in seed_list]
        return pipe(prompt, image=control, num_inference_steps=steps, num_images_per_prompt=len(seed_list),
                     generator=gens, guidance_scale=7.5, height=size, width=size, control_guidance_end=control_end,
                     output_type="np").images  # fmt: skip

    def run_ours(st, stock_unipc=False, **knobs):
        # the API-overhead row stays plain diffusers' own
        stock = _diffusers_unipc(st) if stock_unipc else contextlib.nullcontext()
        with (
            _attention_preference(attention if st is not same else "sdpa"),
            stock,
            _cudnn_benchmark(cudnn_benchmark and st is not same),
        ):
            return st.transform(image, prompt, depth=depth, seed=seeds, steps=steps, strength=1.0,
                                scheduler=scheduler, control_end=control_end, **knobs).raw  # fmt: skip

    variants = {"diffusers": lambda: run_plain(seeds)}  # name -> call
    pipes = {"diffusers": plain}  # name -> the pipeline whose weights it uses
    images = {}  # name -> images per call, where not batch
    if batch > 1 and not compiled_only:
        b1_seeds = seeds[:B1_IMAGES]
        variants["diffusers-b1"], pipes["diffusers-b1"] = (
            lambda: np.concatenate([run_plain([s]) for s in b1_seeds]),
            plain,
        )
        images["diffusers-b1"] = len(b1_seeds)
    if not compiled_only:
        variants["depth2img"], pipes["depth2img"] = lambda: run_ours(same), plain
        variants["depth2img-fast"], pipes["depth2img-fast"] = lambda: run_ours(fast), fast.backend.pipe
    if feature_cache > 1:
        name = f"depth2img-fast+cache{feature_cache}"
        variants[name], pipes[name] = lambda: run_ours(fast, feature_cache=feature_cache), fast.backend.pipe
    for name, st in extra.items():
        variants[name], pipes[name] = lambda st=st: run_ours(st), st.backend.pipe
    twins = {}  # a +diffusers-unipc row -> the row whose pipeline it runs
    if diffusers_unipc:
        twin = next(name for name in (*compiled_rows, "depth2img-fast") if name in variants)
        st, name = extra.get(twin, fast), f"{twin}+diffusers-unipc"
        twins[name], pipes[name] = twin, pipes[twin]
        # beside its row in the table and in each repeat (after it: its warm-up asks whether its row's compile failed)
        placed = {}
        for key, fn in variants.items():
            placed[key] = fn
            if key == twin:
                placed[name] = lambda st=st: run_ours(st, stock_unipc=True)
        variants = placed
    resident = (
        {name: _resident_bytes(pipe, device) for name, pipe in pipes.items()} if device.type == "cuda" else {}
    )
    dtypes = {name: pipe.unet.dtype for name, pipe in pipes.items()}

    outputs, times, peaks, outside, decode = {}, {k: [] for k in variants}, {}, [], []
    compile_errors = {}  # mode -> why its row was dropped
    # mode -> compiled graphs that inductor ran without CUDA graphs in a mode meant to capture them (a CPU tensor
    # input, a mutated input...; on a GPU TORCH_LOGS=perf_hints logs why, on a CPU inductor only counts them): its
    # row then measures the default mode's path
    from torch._dynamo.utils import counters

    cudagraph_skips = {}
    # CUDA-graph rows on a GPU: the memory their graphs hold between calls, a private pool reserved as they are
    # captured (at warm-up), which a timed call, replaying them, does not allocate: its peak counted none of it
    # (the H100's reduce-overhead row read 3.67 GiB at batch 16, the default mode's 8.23)
    pools = {}
    for name, fn in list(variants.items()):  # warm-up (and compilation)
        if twins.get(name, name) not in variants:  # its row's compiling failed
            progress(f"{name} dropped with {twins[name]}")
            del variants[name], pipes[name], times[name]
            resident.pop(name, None)
            continue
        progress(f"warm-up: {name}")
        skipped = counters["inductor"]["cudagraph_skips"]
        graphs = name in compiled_rows and backends.captures_cuda_graphs(compiled_rows[name], inductor)
        if graphs and device.type == "cuda":
            _sync(device)
            torch.cuda.empty_cache()
            reserved = torch.cuda.memory_reserved()
        try:
            outputs[name] = fn()
            if graphs and device.type == "cuda":
                _sync(device)
                torch.cuda.empty_cache()  # what stays reserved is what the row holds
                pools[name] = max(0, torch.cuda.memory_reserved() - reserved)
            if graphs:
                cudagraph_skips[compiled_rows[name]] = counters["inductor"]["cudagraph_skips"] - skipped
        except Exception as err:  # noqa: BLE001  a compiler failure is a result to report, not the end of the run
            if name not in compiled_rows:
                raise
            compile_errors[compiled_rows[name]] = backends.compile_error(err)
            progress(f"compile failed, {name} dropped: {compile_errors[compiled_rows[name]]}")
            del variants[name], pipes[name], times[name]
            resident.pop(name, None)
    compile_error = (
        "; ".join(e if len(modes) == 1 else f"{m}: {e}" for m, e in compile_errors.items()) or None
    )
    # The fast path's VAE decode alone (compiled, if that row runs), on latents of the batch's shape (its time does
    # not depend on their values): the most that overlapping the decode with the next batch's denoising could save,
    # were the device free for both
    best = next(name for name in (*compiled_rows, "depth2img-fast", "diffusers") if name in variants)
    vae, scale = pipes[best].vae, pipes[best].vae_scale_factor
    latents = torch.randn(batch, vae.config.latent_channels, size // scale, size // scale,
                          generator=torch.Generator("cpu").manual_seed(0)).to(device, vae.dtype)  # fmt: skip

    def run_decode():
        with torch.inference_mode():
            vae.decode(latents, return_dict=False)

    run_decode()
    # the denoising loop's own it/s, from the timed calls (step_marks)
    loop = {name: [] for name in variants}
    # --profile's figures, taken after the timed calls: row -> the GPU's busy share of one call, the host's waits for
    # it in that call, why a row's figures are missing
    busy, waits, profile_errors = {}, {}, {}
    count_cpu_attention()
    with FlopCounterMode(display=False) as counter:
        run_plain(seeds)
    # Plain diffusers is also run (untimed) in each dtype a row or the tolerance needs. A row is judged against
    # plain diffusers in its own dtype (the fast path's bf16 on a GPU), so a dtype change is not taken for an
    # optimisation that changed the result; and by the bf16 tolerance: what rounding to bf16 alone changes, plain
    # diffusers in bf16 against its documented dtype (float32 where that is bf16). Measured, not assumed: random
    # weights amplify rounding over the steps, more at larger sizes (a GPU run has both dtypes already; a CPU run
    # adds one bf16 call).
    reference = {plain_dtype: outputs["diffusers"]}
    tolerance_dtypes = (torch.bfloat16, plain_dtype if plain_dtype != torch.bfloat16 else torch.float32)
    for dt in dict.fromkeys((fast_dtype, *tolerance_dtypes)):
        if dt not in reference:
            ref_pipe = _pipeline(backbone, _copy(comps, dt))
            reference[dt] = run_plain(seeds, ref_pipe)
            del ref_pipe
            if device.type == "cuda":
                torch.cuda.empty_cache()
    tolerance = _max_diff(*(reference[dt] for dt in tolerance_dtypes))
    if not np.isfinite(tolerance):
        # plain diffusers in bf16 gave NaN or inf (untimed: depth2img refuses such an output, so a timed row's
        # NaN stops the run at its warm-up): nothing to judge against
        tolerance = None
    flops_per_call = counter.get_total_flops()
    # each row's share against its own dtype's peak (a CPU's float32 rows against its bf16 peak read 3,900 %; on a GPU
    # fp16 rows against the bf16 peak); the fast dtype's is the one reported; a peak given serves every dtype
    flop_peaks = {dt: peak_tflops * 1e12 if peak_tflops else _peak_flops(device, dt)
                  for dt in dict.fromkeys((fast_dtype, *dtypes.values()))}  # fmt: skip
    peak = flop_peaks[fast_dtype]

    def summary(done: int) -> dict:
        """The result after ``done`` repeats."""
        baseline = "diffusers-b1" if "diffusers-b1" in variants else "diffusers"
        base = statistics.median(times[baseline]) / images.get(baseline, batch)  # seconds per image
        rows, exceeded = {}, set()  # exceeded: the dtypes whose peak a row's FLOP/s went past
        for name in variants:
            n = images.get(name, batch)  # images per timed call
            sec = statistics.median(times[name]) / n  # per image
            calls = n if name == "diffusers-b1" else 1
            # FLOPs are counted on plain diffusers; a ControlNet window or the feature cache means fewer are done.
            same_work = control_end >= 1.0 and "+cache" not in name
            same_dtype_diff = _max_diff(outputs[name], reference[dtypes[name]][:n])
            # None: a quality trade, not meant to stay within; or no tolerance to judge by
            within = None if "+cache" in name or tolerance is None else same_dtype_diff <= tolerance
            share = (flops_per_call / batch / sec / flop_peaks[dtypes[name]]
                     if name.startswith("diffusers") or same_work else None)  # fmt: skip
            # a row past its dtype's peak: the peak is none, and the share no figure (a CPU's float16 matmul, about
            # 100x slower than its float32, measured a 'peak' a float16 row ran at 183.8 % of)
            above_peak = share is not None and share > 1
            if above_peak:
                exceeded.add(str(dtypes[name]).replace("torch.", ""))
            whole = steps * calls / (sec * n)
            # the loop is part of the call: a loop slower than its call is a figure gone wrong, not reported
            loop_rate = statistics.median(loop[name]) if loop[name] else None
            loop_below = loop_rate is not None and loop_rate < whole
            rows[name] = {
                "ms_per_image": 1000 * sec, "images_per_hour": 3600 / sec, "it_per_s": whole,
                "loop_it_per_s": None if loop_below else loop_rate, "loop_below_call": loop_below,
                "share_of_peak": None if above_peak else share, "above_peak": above_peak,
                "peak_memory_gib": peaks[name] / 2**30 if name in peaks else None,
                "speedup": base / sec,
                "max_abs_diff_vs_diffusers": _max_diff(outputs[name], outputs["diffusers"][:n]),
                "max_abs_diff_vs_diffusers_same_dtype": same_dtype_diff,
                "within_bf16_tolerance": within,
            }  # fmt: skip
        decode_s = statistics.median(decode)
        api = {}  # the API's overhead: from the depth2img row, which compiled_only leaves out
        if "depth2img" in times:
            plain_s, outside_s = statistics.median(times["diffusers"]), statistics.median(outside)
            api = {
                "api_overhead": statistics.median(times["depth2img"]) / plain_s - 1,
                "api_outside_pipeline_ms": 1000 * outside_s,
                "api_outside_share": outside_s / plain_s,
            }
        return {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": _device_name(device),
            "host_cpu": host_cpu(), "default_dtype": str(resolve_dtype(None, device)).replace("torch.", ""), "backbone": backbone, "preset": preset, "size": size, "steps": steps, "batch": batch, "repeats": done,
            "repeats_planned": repeats,
            "cfg": True, "scheduler": scheduler, "control_end": control_end, "compile": compile_mode, "inductor": inductor, "feature_cache": feature_cache,
            "speedup_baseline": baseline, "b1_images": images.get("diffusers-b1"), "compile_error": compile_error,
            "cudagraph_skips": cudagraph_skips,
            "cudagraph_pool_gib": {compiled_rows[k]: v / 2**30 for k, v in pools.items()} if device.type == "cuda" else None,
            "plain_dtype": str(plain_dtype).replace("torch.", ""), "fast_dtype": str(fast_dtype).replace("torch.", ""),
            "default_fast_dtype": str(default_fast).replace("torch.", ""),
            "fast_path": applied, "compiled_path": compiled_path,
            "channels_last": channels_last, "fuse_qkv": fuse_qkv, "attention": attention,
            "cudnn_benchmark": cudnn_benchmark,
            "bf16_tolerance": tolerance,
            "bf16_tolerance_between": [str(dt).replace("torch.", "") for dt in tolerance_dtypes], "flops_per_call_tflop": flops_per_call / 1e12, "peak_tflops": peak / 1e12,
            "peak_tflops_by_dtype": {str(dt).replace("torch.", ""): p / 1e12 for dt, p in flop_peaks.items()},
            "peak_source": "given" if peak_tflops else "measured matmul", "peak_below_achieved": sorted(exceeded),
            **api, "compiled_only": compiled_only, "diffusers_unipc": diffusers_unipc,
            **({"device_busy_share": busy, "host_waits": waits, "profile_errors": profile_errors} if profile else {}),
            "vae_decode_ms": 1000 * decode_s, "vae_decode_share": decode_s / statistics.median(times[best]),
            "versions": _versions(), "cudnn": torch.backends.cudnn.version(), "results": rows,
        }  # fmt: skip

    for r in range(repeats):
        for name, fn in variants.items():  # interleaved
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            with step_marks(device, type(comps["scheduler"])) as rates:
                t = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t)
            loop[name] += rates
            if name == "depth2img":  # time outside diffusers' pipeline call: the API's own, free of its noise
                outside.append(times[name][-1] - same.backend.last_pipeline_s)
            if device.type == "cuda":
                # what this variant needs on its own: its resident weights plus what the call allocated on top
                # (the other variants' weights, also resident during the run, are not counted)
                need = (
                    resident[name]
                    + pools.get(twins.get(name, name), 0)
                    + torch.cuda.max_memory_allocated()
                    - before
                )
                peaks[name] = max(peaks.get(name, 0), need)
        _sync(device)
        t = time.perf_counter()
        run_decode()
        _sync(device)
        decode.append(time.perf_counter() - t)
        progress(
            f"repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1] * 1000:.0f} ms" for k, v in times.items())
        )
        # written after every repeat: a run cut short (a deadline, a lost machine) still leaves its table
        result = summary(r + 1)
        _write(result, Path(out_dir))
    if profile:
        # after the timed calls: torch 2.11 on CUDA 13 leaves CUPTI attached after a profiler's session, which slows
        # later calls (pytorch issue 144455), the eager rows' many launches most. Off a GPU, no figures.
        for name in (
            n for n in dict.fromkeys(("diffusers", *compiled_rows, *twins.values(), *twins)) if n in variants
        ):
            try:
                busy[name], waits[name] = device_busy(variants[name], device) or (None, None)
            except Exception as err:  # noqa: BLE001  a profiler's failure costs its figures, not the run (a GPU lease)
                busy[name] = waits[name] = None
                profile_errors[name] = f"{type(err).__name__}: {first_line(err)}"
                progress(f"profile of {name} failed: {profile_errors[name]}")
        result = summary(repeats)
        _write(result, Path(out_dir))
    return result


ESTIMATORS = ("depth_anything_v2_small", "depth_anything_v2_base", "depth_anything_v2_large", "dpt_hybrid")


def _estimator(name: str, preset: str):
    """(model, processor) at full size (random weights; processor settings of the hub repos) or tiny."""
    from transformers import DPTImageProcessor

    from . import tiny

    if preset == "tiny":
        return tiny.dpt() if name == "dpt_hybrid" else tiny.depth_anything()
    if name == "dpt_hybrid":
        processor = DPTImageProcessor(
            size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
    else:
        processor = DPTImageProcessor(size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
                                      resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])  # fmt: skip
    return build(name), processor


def run_depth_bench(*, preset: str = "full", images: int = 16, repeats: int = 3, device=None, dtype=None,
                    out_dir: str | Path = "benchmarks", progress=print) -> dict:  # fmt: skip
    """Depth Anything V2 S/B/L and DPT-hybrid on a 451x300 photo (the procedural driving scene: scikit-image's cat,
    used before, is no dependency of an install; timing depends on the size only) x ``images``, interleaved:
    (a) transformers' depth-estimation pipeline, one image per call, fp16 on GPU (as its docs show it);
    (b) depth2img's DepthEstimator with its defaults: batches of 8 in bf16 on GPU, one at a time on CPU. Reports ms/image and the max difference
    of (b) from (a) relative to (a)'s depth range."""
    import copy

    from transformers import pipeline

    from .depth_run import output_dir
    from .errors import InputError
    from .estimators import DepthEstimator
    from .loading import resolve_device, resolve_dtype

    if isinstance(images, bool) or not isinstance(images, int) or not 1 <= images <= MAX_BATCH:
        raise InputError(f"images must be an integer in 1..{MAX_BATCH}, got {images!r}")
    out_dir = output_dir(out_dir, ())  # before the run, not after it
    device = resolve_device(device)
    plain_dtype, fast_dtype, _ = _dtypes(device, dtype)
    from .scene import render_driving_scene

    photos = [render_driving_scene(451, 300, seed=0).image] * images
    rows = {}
    for name in ESTIMATORS:
        progress(f"{name} ({preset}) on {device} ...")
        model, processor = _estimator(name, preset)
        plain = pipeline("depth-estimation", model=copy.deepcopy(model).to(device, plain_dtype), image_processor=processor,
                         device=device)  # fmt: skip
        ours = DepthEstimator(
            model.to(device, fast_dtype), processor, kind="relative_inverse_depth", name=name
        )
        variants = {"transformers": lambda plain=plain: [r["predicted_depth"] for r in plain(photos)],
                    "depth2img": lambda ours=ours: [d.values for d in ours(photos)]}  # fmt: skip
        outputs = {k: fn() for k, fn in variants.items()}  # warm-up
        times = {k: [] for k in variants}
        for _ in range(repeats):
            for k, fn in variants.items():
                _sync(device)
                t = time.perf_counter()
                fn()
                _sync(device)
                times[k].append(time.perf_counter() - t)
        ref = outputs["transformers"][0].float().cpu().numpy()
        got = outputs["depth2img"][0]
        ms = {k: 1000 * statistics.median(v) / images for k, v in times.items()}
        rows[name] = {
            "parameters_m": count_parameters(model) / 1e6, "ms_per_image": ms,
            "images_per_hour": {k: 3.6e6 / v for k, v in ms.items()}, "speedup": ms["transformers"] / ms["depth2img"],
            "max_rel_diff": float(np.abs(got - ref).max() / max(float(ref.max() - ref.min()), 1e-12)),
        }  # fmt: skip
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": _device_name(device),
        "host_cpu": host_cpu(), "preset": preset, "images": images, "repeats": repeats, "image_size": [451, 300],
        "plain_dtype": str(plain_dtype).replace("torch.", ""), "fast_dtype": str(fast_dtype).replace("torch.", ""),
        "versions": _versions(), "results": rows,
    }  # fmt: skip
    lines = [f"Depth estimators, {preset} architectures, {images} photos of 451x300, on **{result['device']}** "
             f"({_host(result)}{result['date']}); median of {repeats} interleaved runs. transformers pipeline, one image per call, "
             f"{result['plain_dtype']}; depth2img DepthEstimator (batches of {ours.default_batch_size}), {result['fast_dtype']}.", "",
             "| model | params (M) | transformers ms/image | depth2img ms/image | speed-up | max diff / depth range |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in rows.items():
        lines.append(f"| {name} | {r['parameters_m']:.1f} | {r['ms_per_image']['transformers']:.1f} | "
                     f"{r['ms_per_image']['depth2img']:.1f} | {r['speedup']:.2f}x | {r['max_rel_diff']:.2e} |")  # fmt: skip
    result["markdown"] = "\n".join(lines) + "\n"
    # the settings that change the figures name the files, as the diffusion bench's do (a --batch 16 run replaced the
    # --batch 4 table the README quotes)
    stem = f"depth-estimators-{preset}" + (f"-b{images}" if images > 1 else "")
    stem += f"-{result['plain_dtype']}" if plain_dtype != resolve_dtype(None, device) else ""
    _write_files(result, Path(out_dir), stem, result["markdown"])
    return result


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


def host_cpu() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform module says: the device name of a CPU
    run only says its architecture and cores, and a GPU run's launch overhead is this CPU's."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _host(result: dict) -> str:
    """'host CPU ..., ' for a table's head (tables written before it was recorded have none)."""
    return f"host CPU {result['host_cpu']}, " if result.get("host_cpu") else ""


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{__import__('os').cpu_count()}"


def _versions():
    from .transformer import _versions as v

    return v()


def _other_peaks(result: dict) -> str:
    """The peaks of the rows' other dtypes, which their shares are of (none in tables made before they were; a peak
    given serves them all)."""
    if result["peak_source"] == "given":
        return ""
    others = {dt: p for dt, p in result.get("peak_tflops_by_dtype", {}).items() if dt != result["fast_dtype"]}
    return "".join(f"; {dt} {p:.3g}" for dt, p in others.items()) + (
        ", each row's share of its dtype's" if others else ""
    )


def _peak_note(result: dict) -> str:
    """Where a row ran faster than its dtype's peak: that peak is not one, and those rows' shares are n/a."""
    exceeded = result.get("peak_below_achieved")  # (none in tables made before 2026-11-28)
    if not exceeded:
        return ""
    which = (
        "the given peak" if result["peak_source"] == "given" else f"the measured {', '.join(exceeded)} peak"
    )
    return f"; {which} is below what the run achieved: not a peak (those rows' share n/a)"


def markdown(result: dict) -> str:
    name = {"sd15": "SD1.5", "sdxl": "SDXL"}[result.get("backbone", "sd15")]
    head = (f"{name} + ControlNet depth, {result['preset']} architecture, {result['size']}x{result['size']}, "
            f"{result['steps']} steps{_scheduler_text(result)}, CFG, batch {result['batch']}, on **{result['device']}** ({_host(result)}{result['date']}); "
            f"median of {result['repeats']} interleaved runs{_cut(result)}. {result['flops_per_call_tflop']:.3f} TFLOP per call; "
            f"peak {result['peak_tflops']:.3g} TFLOP/s ({result['peak_source']}){_other_peaks(result)}"
            f"{_peak_note(result)}. Fast path: "
            f"{result['fast_dtype']}, {', '.join(result['fast_path']) or 'none'}. Speed-up per image against "
            f"`{result.get('speedup_baseline', 'diffusers')}`"
            + (f" (one image per call, on the first {result['b1_images']} seeds)." if result.get("b1_images") else ".")
            + _compiled_text(result) + _tolerance_text(result))  # fmt: skip
    lines = [head, "", "| variant | ms/image | images/hour | it/s (whole call) | it/s (denoising loop) | share of peak | peak memory (GiB) | speed-up | max abs diff vs diffusers | same, diffusers in the variant's dtype | within bf16 tolerance |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for variant, r in result["results"].items():
        share = f"{r['share_of_peak']:.1%}" if r["share_of_peak"] is not None else "n/a"
        share += " (above the peak)" if r.get("above_peak") else ""
        loop_note = " (below the whole call)" if r.get("loop_below_call") else ""
        mem = f"{r['peak_memory_gib']:.2f}" if r["peak_memory_gib"] is not None else "n/a (CPU)"
        lines.append(f"| {variant} | {r['ms_per_image']:.1f} | {r['images_per_hour']:.0f} | {r['it_per_s']:.2f} | "
                     f"{_given(r.get('loop_it_per_s'), '.2f')}{loop_note} | {share} | "
                     f"{mem} | {_given(r.get('speedup'), '.2f', 'x')} | {r['max_abs_diff_vs_diffusers']:.2e} | "
                     f"{_given(r.get('max_abs_diff_vs_diffusers_same_dtype'), '.2e')} | {_verdict(r)} |")  # fmt: skip
    if "api_overhead" in result:  # (a --compiled-only run has no depth2img row)
        lines.append(
            f"\ndepth2img {'API overhead' if result['control_end'] >= 1.0 else 'time difference (ControlNet skipping included)'}"
            f" over plain diffusers (same components and settings): {result['api_overhead']:+.1%}"
        )
    if "api_outside_pipeline_ms" in result:
        lines.append(
            f"\nTime the API spends outside diffusers' pipeline call (checks, conditioning, resizing, metadata): "
            f"{result['api_outside_pipeline_ms']:.2f} ms per call, {result['api_outside_share']:.2%} of the plain call."
        )
    if "device_busy_share" in result:
        shares, errors = result["device_busy_share"], result.get("profile_errors", {})
        lines.append(
            "\nShare of one call the GPU was busy (kernels and copies, torch.profiler; the rest it waited on the host): "
            + (
                ", ".join(f"{name} {_given(share, '.1%')}" for name, share in shares.items())
                or "none profiled"
            )
            + "".join(f" ({name}: {why})" for name, why in errors.items())
            + (" (n/a: no CUDA GPU)" if any(s is None and n not in errors for n, s in shares.items()) else "")
            + "."
        )
        waits = {name: n for name, n in result.get("host_waits", {}).items() if n is not None}
        if waits:
            lines.append(
                "\nTimes the host waited for the GPU in that call (a synchronize, or a copy that waits; "
                f"{result['steps']} steps): " + ", ".join(f"{name} {n}" for name, n in waits.items()) + "."
            )
    if result.get("compile_error"):
        lines.append(
            f"\ntorch.compile ({result['compile']}) failed at warm-up, so its row is dropped: {result['compile_error']}"
        )
    for mode, n in result.get("cudagraph_skips", {}).items():
        lines.append(
            f"\nCUDA graphs ({mode}): "
            + (f"{n} compiled graph(s) ran without them (inductor skipped them: on a GPU `TORCH_LOGS=perf_hints` says why; a CPU has none)"
               if n else "every compiled graph captured" + _pool_text(result, mode))
        )  # fmt: skip
    if "vae_decode_ms" in result:
        lines.append(
            f"\nThe fast path's VAE decode alone, batch {result['batch']}: {result['vae_decode_ms']:.1f} ms, "
            f"{result['vae_decode_share']:.1%} of its call; the most that overlapping the decode with the next "
            "batch's denoising could save, were the device free for both."
        )
    for twin in (name for name in result["results"] if name.endswith("+diffusers-unipc")):
        lines.append(
            f"\n`{twin}` is `{twin.removesuffix('+diffusers-unipc')}` (the same pipeline, in the same run) with "
            "diffusers' own UniPC, which makes the host wait for the GPU at each step, in place of depth2img's."
        )
    if result.get("feature_cache", 1) > 1:
        lines.append(
            f"\n`+cache{result['feature_cache']}` reuses deep UNet features (DeepCache-like): a quality trade, "
            "not the same images; its max abs diff (pixel values in [0, 1]) is what it changed."
        )
    return "\n".join(lines) + "\n"


def _pool_text(result: dict, mode: str) -> str:
    """What the peak memory of a CUDA-graph row says of the graphs' memory pool."""
    if "cudagraph_pool_gib" not in result:  # a table from before the pool was measured (2026-11-27)
        return ("; the row's peak memory leaves out their memory pool, allocated at capture, before the timed "
                "calls, which count only what they allocate on top")  # fmt: skip
    pools = result["cudagraph_pool_gib"]
    if pools is None:  # a CPU's: no memory figures
        return ""
    return (f"; the row's peak memory includes the {pools.get(mode, 0):.2f} GiB their memory pool held after "
            "warm-up (reserved at capture, which a timed call's replay does not allocate)")  # fmt: skip


def _scheduler_text(result: dict) -> str:
    """A scheduler other than UniPC (every table before --scheduler ran UniPC)."""
    return "" if result.get("scheduler", "unipc") == "unipc" else f" ({result['scheduler']})"


def _compiled_text(result: dict) -> str:
    path, modes = result.get("compiled_path"), (result.get("compile") or "").split(",")
    if not path:
        return ""
    if len(modes) == 1:
        return f" `-compiled`: {', '.join(path)}."
    path = [step.replace(f"compile({modes[0]}", "compile(MODE") for step in path]
    return f" `-compiled-MODE` ({', '.join(modes)}): {', '.join(path)}."


def _tolerance_text(result: dict) -> str:
    if "bf16_tolerance" not in result:
        return ""  # a result from before it was measured
    between = " against ".join(result["bf16_tolerance_between"])
    if result["bf16_tolerance"] is None:
        return f" bf16 tolerance: not measured (plain diffusers gave NaN or inf in {between})."
    return (f" bf16 tolerance (plain diffusers in {between}, max abs diff of pixel values in [0, 1]): "
            f"{result['bf16_tolerance']:.2e}; a row within it changed the output by no more than rounding to bf16 "
            "does.")  # fmt: skip


def _given(value, spec: str, unit: str = "") -> str:
    """A figure as ``spec`` formats it; n/a where a result from before it was measured lacks it."""
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _verdict(row: dict) -> str:
    return {True: "yes", False: "no", None: "n/a"}[row.get("within_bf16_tolerance")]


def _cut(result: dict) -> str:
    planned = result.get("repeats_planned", result["repeats"])
    return f" (cut short: {planned} were planned)" if result["repeats"] < planned else ""


def _write(result: dict, out_dir: Path) -> None:
    extra = (f"-b{result['batch']}" if result["batch"] > 1 else "") + (
        f"-ce{result['control_end']:g}" if result["control_end"] < 1 else ""
    )
    extra += f"-{result['compile'].replace(',', '-')}" if result.get("compile") else ""
    # inductor settings: NAME for True, no-NAME for False, NAME-VALUE else (file names that the device tool returns)
    for key, value in (result.get("inductor") or {}).items():
        word = key if value is True else f"no-{key}" if value is False else f"{key}-{value}"
        extra += "-" + re.sub(r"[^A-Za-z0-9_-]+", "_", word)
    extra += f"-cache{result['feature_cache']}" if result.get("feature_cache", 1) > 1 else ""
    extra += "-lowvram" if any("-lowvram" in k for k in result["results"]) else ""
    extra += "-no-channels-last" if result.get("channels_last") is False else ""
    extra += "-no-fused-qkv" if result.get("fuse_qkv") is False else ""
    # the other settings that change the figures: runs that differ name different files (one replaced another)
    extra += f"-s{result['steps']}" if result["steps"] != 30 else ""
    # a --dtype other than the device's default (loading.resolve_dtype)
    extra += f"-{result['plain_dtype']}" if result["plain_dtype"] != result["default_dtype"] else ""
    # a fast-path dtype other than its default (bf16 on GPU); tables made before it could be chosen lack the field
    fast_default = result.get("default_fast_dtype", result["fast_dtype"])
    extra += f"-fast-{result['fast_dtype']}" if result["fast_dtype"] != fast_default else ""
    extra += f"-{result['attention']}" if result.get("attention", "sdpa") != "sdpa" else ""
    extra += "-cudnn-benchmark" if result.get("cudnn_benchmark") else ""
    extra += "-compiled-only" if result.get("compiled_only") else ""
    # a given peak changes the shares; --diffusers-unipc adds a row, --profile the GPU's busy share and waits (a run
    # with one replaced the files of the same run without it; tables made before these were recorded have none)
    extra += f"-peak{result['peak_tflops']:.6g}" if result.get("peak_source") == "given" else ""
    extra += "-diffusers-unipc" if result.get("diffusers_unipc") else ""
    extra += "-profile" if "device_busy_share" in result else ""
    # (the device tool returns no file whose name has a '+': dpm++ is dpmpp)
    extra += (
        "-" + result["scheduler"].replace("+", "p") if result.get("scheduler", "unipc") != "unipc" else ""
    )
    stem = f"{result.get('backbone', 'sd15')}-controlnet-{result['preset']}-{result['size']}{extra}"
    _write_files(result, out_dir, stem, markdown(result))


def _write_files(result: dict, out_dir: Path, stem: str, table: str) -> None:
    """``STEM-DEVICE.json`` and ``.md``, written atomically."""
    from .io import atomic_path

    stem += "-" + "".join(c if c.isalnum() else "-" for c in result["device"]).strip("-").lower()
    with atomic_path(out_dir / f"{stem}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    with atomic_path(out_dir / f"{stem}.md") as tmp:
        tmp.write_text(table)
    result["written"] = [str(out_dir / f"{stem}.json"), str(out_dir / f"{stem}.md")]
