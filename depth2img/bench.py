"""``depth2img bench``: plain diffusers against depth2img, interleaved, on the same inputs.

Full-size architectures are built from ``configs/bench/*.json`` with random weights (timing does not depend
on weight values); ``--preset tiny`` uses the tiny test models so CI can smoke-test the command on CPU.
Reported per variant: ms per image, images per hour, denoising it/s, share of peak FLOP/s (FLOPs counted
with torch.utils.flop_counter), peak memory, and the max abs difference of its output from plain diffusers.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

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
        elif name == "sd_vae":
            from diffusers import AutoencoderKL

            model = AutoencoderKL.from_config(cfg)
        elif name == "clip_l_text":
            from transformers import CLIPTextConfig, CLIPTextModel

            model = CLIPTextModel(CLIPTextConfig(**cfg))
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


def _sd15_components(preset: str, device, dtype):
    from diffusers import ControlNetModel, UniPCMultistepScheduler

    from . import tiny

    if preset == "tiny":
        import torch

        torch.manual_seed(0)
        unet = tiny._sd_unet()
        comps = dict(unet=unet, vae=tiny._sd_vae(), text_encoder=tiny._clip_text(),
                     controlnet=ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32)))  # fmt: skip
    else:
        comps = {k: build(n, device) for k, n in (("unet", "sd15_unet"), ("controlnet", "sd15_controlnet"),
                                                   ("vae", "sd_vae"), ("text_encoder", "clip_l_text"))}  # fmt: skip
    comps = {k: v.to(device=device, dtype=dtype).eval() for k, v in comps.items()}
    # The scheduler diffusers' ControlNet docs use; the SD1.5 repo's own scheduler config.
    scheduler = UniPCMultistepScheduler.from_config(tiny._sd_scheduler().config)
    return dict(**comps, tokenizer=tiny.clip_tokenizer(), scheduler=scheduler)


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


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_bench(*, preset: str = "full", size: int = 512, steps: int = 30, batch: int = 1, repeats: int = 3,
              device=None, dtype=None, compile_mode: str | None = None, control_end: float = 1.0,
              peak_tflops: float | None = None, out_dir: str | Path = "benchmarks", progress=print) -> dict:  # fmt: skip
    """SD1.5 + ControlNet depth: (a) plain diffusers as its docs show it, (b) depth2img with the same settings
    (the API's overhead), (c) depth2img's fast path (bf16 on GPU, channels-last, fused QKV, optional compile,
    ControlNet skipped outside its window). Interleaved, same prompt, control image and seeds."""
    import copy

    import torch
    from diffusers import StableDiffusionControlNetPipeline
    from torch.utils.flop_counter import FlopCounterMode

    from .backends import SD15Backend
    from .depthmap import DepthMap
    from .loading import resolve_device, resolve_dtype
    from .registry import ModelRef
    from .transformer import SceneTransformer

    device = resolve_device(device)
    plain_dtype = resolve_dtype(dtype, device)  # diffusers docs: fp16 on GPU (fp32 on CPU)
    fast_dtype = torch.bfloat16 if device.type == "cuda" else plain_dtype
    progress(f"building SD1.5 + ControlNet ({preset}) on {device} ...")
    comps = _sd15_components(preset, device, plain_dtype)
    plain = StableDiffusionControlNetPipeline(**comps, safety_checker=None, feature_extractor=None,
                                              requires_safety_checker=False)  # fmt: skip
    plain.set_progress_bar_config(disable=True)
    ref = ModelRef(name="bench", location="bench", revision=None, is_local=True)
    same = SceneTransformer(
        SD15Backend(plain, ref), device=device, dtype=plain_dtype, native_size=size, name="bench"
    )
    fast_comps = {
        k: (copy.deepcopy(v).to(dtype=fast_dtype) if hasattr(v, "parameters") else v)
        for k, v in comps.items()
    }
    fast_pipe = StableDiffusionControlNetPipeline(**fast_comps, safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)  # fmt: skip
    fast = SceneTransformer(
        SD15Backend(fast_pipe, ref), device=device, dtype=fast_dtype, native_size=size, name="bench"
    )
    applied = fast.backend.optimize(compile_mode=compile_mode)
    for st in (same, fast):
        st.backend.set_scheduler("unipc")

    yy, xx = np.mgrid[0:size, 0:size]
    depth = DepthMap(1.0 + yy + 0.5 * xx, "metric_depth")
    from PIL import Image

    image = Image.new("RGB", (size, size), (128, 128, 128))
    prompt = "a city street at night, rain"
    seeds = list(range(batch))
    control = torch.from_numpy(depth.control_image()).permute(2, 0, 1)[None]

    def run_plain():
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        return plain(prompt, image=control, num_inference_steps=steps, num_images_per_prompt=batch, generator=gens,
                     control_guidance_end=control_end, output_type="np").images  # fmt: skip

    def run_ours(st):
        return st.transform(image, prompt, depth=depth, seed=seeds, steps=steps, strength=1.0,
                            control_end=control_end).raw  # fmt: skip

    variants = {
        "diffusers": run_plain,
        "depth2img": lambda: run_ours(same),
        "depth2img-fast": lambda: run_ours(fast),
    }
    outputs, times, peaks = {}, {k: [] for k in variants}, {}
    for name, fn in variants.items():  # warm-up (and compilation)
        outputs[name] = fn()
    with FlopCounterMode(display=False) as counter:
        run_plain()
    flops_per_call = counter.get_total_flops()
    for r in range(repeats):
        for name, fn in variants.items():  # interleaved
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated())
        progress(
            f"repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1] * 1000:.0f} ms" for k, v in times.items())
        )
    peak = peak_tflops * 1e12 if peak_tflops else _peak_flops(device, fast_dtype)
    rows = {}
    for name in variants:
        sec = statistics.median(times[name])
        rows[name] = {
            "ms_per_image": 1000 * sec / batch, "images_per_hour": 3600 * batch / sec, "it_per_s": steps / sec,
            # FLOPs are counted on plain diffusers; with a window depth2img skips ControlNet calls, so it does fewer.
            "share_of_peak": flops_per_call / sec / peak if name == "diffusers" or control_end >= 1.0 else None,
            "peak_memory_gib": peaks[name] / 2**30 if name in peaks else None,
            "max_abs_diff_vs_diffusers": float(np.abs(np.asarray(outputs[name], np.float32) - outputs["diffusers"]).max()),
        }  # fmt: skip
    overhead = statistics.median(times["depth2img"]) / statistics.median(times["diffusers"]) - 1
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": _device_name(device),
        "preset": preset, "size": size, "steps": steps, "batch": batch, "repeats": repeats, "cfg": True,
        "control_end": control_end, "plain_dtype": str(plain_dtype).replace("torch.", ""),
        "fast_dtype": str(fast_dtype).replace("torch.", ""), "fast_path": applied,
        "flops_per_call_tflop": flops_per_call / 1e12, "peak_tflops": peak / 1e12,
        "peak_source": "given" if peak_tflops else "measured matmul", "api_overhead": overhead,
        "versions": _versions(), "results": rows,
    }  # fmt: skip
    _write(result, Path(out_dir))
    return result


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{__import__('os').cpu_count()}"


def _versions():
    from .transformer import _versions as v

    return v()


def markdown(result: dict) -> str:
    head = (f"SD1.5 + ControlNet depth, {result['preset']} architecture, {result['size']}x{result['size']}, "
            f"{result['steps']} steps, CFG, batch {result['batch']}, on **{result['device']}** ({result['date']}); "
            f"median of {result['repeats']} interleaved runs. {result['flops_per_call_tflop']:.3f} TFLOP per call; "
            f"peak {result['peak_tflops']:.1f} TFLOP/s ({result['peak_source']}). Fast path: "
            f"{result['fast_dtype']}, {', '.join(result['fast_path']) or 'none'}.")  # fmt: skip
    lines = [head, "", "| variant | ms/image | images/hour | it/s | share of peak | peak memory (GiB) | max abs diff vs diffusers |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in result["results"].items():
        share = f"{r['share_of_peak']:.1%}" if r["share_of_peak"] is not None else "n/a"
        mem = f"{r['peak_memory_gib']:.2f}" if r["peak_memory_gib"] is not None else "n/a (CPU)"
        lines.append(f"| {name} | {r['ms_per_image']:.1f} | {r['images_per_hour']:.0f} | {r['it_per_s']:.2f} | {share} | "
                     f"{mem} | {r['max_abs_diff_vs_diffusers']:.2e} |")  # fmt: skip
    lines.append(
        f"\ndepth2img {'API overhead' if result['control_end'] >= 1.0 else 'time difference (ControlNet skipping included)'}"
        f" over plain diffusers (same components and settings): {result['api_overhead']:+.1%}"
    )
    return "\n".join(lines) + "\n"


def _write(result: dict, out_dir: Path) -> None:
    from .io import atomic_path

    slug = "".join(c if c.isalnum() else "-" for c in result["device"]).strip("-").lower()
    extra = (f"-b{result['batch']}" if result["batch"] > 1 else "") + (
        f"-ce{result['control_end']:g}" if result["control_end"] < 1 else ""
    )
    stem = f"sd15-controlnet-{result['preset']}-{result['size']}{extra}-{slug}"
    with atomic_path(out_dir / f"{stem}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    with atomic_path(out_dir / f"{stem}.md") as tmp:
        tmp.write_text(markdown(result))
    result["written"] = [str(out_dir / f"{stem}.json"), str(out_dir / f"{stem}.md")]
