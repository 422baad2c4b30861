"""The generation knobs: their defaults and their checks, in one place for the API, CLI, app and job files."""

from __future__ import annotations

import math
import numbers

from .errors import InputError

DEFAULT_KNOBS = {"steps": 30, "strength": 0.8, "guidance_scale": 7.5, "control_scale": 1.0,
                 "control_start": 0.0, "control_end": 1.0, "feature_cache": 1}  # fmt: skip
CONTROL_KNOBS = ("control_scale", "control_start", "control_end")
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
MAX_IMAGES = 64  # images per transform call
MAX_CACHE_INTERVAL = 10
# --offload: how weights move between CPU and GPU, from most GPU memory to least
OFFLOAD_MODES = {
    "none": "all weights stay on the GPU",
    "model": "each model moves to the GPU while it runs (diffusers' model CPU offload)",
    "group": "layer by layer, the next layer copied on a CUDA stream while this one runs (diffusers' group "
    "offloading): near sequential's memory, its copies overlapping the compute",
    "sequential": "layer by layer, no overlap: least memory, slowest",
}
# --compile: torch.compile modes for the fast path (channels-last and fused QKV come with it); cpp-wrapper is the
# default mode with inductor's C++ wrapper, which launches the kernels from C++ instead of Python
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "cpp-wrapper")
DTYPES = ("float32", "float16", "bfloat16")  # what --dtype and a job's dtype may name


def check_compile(mode, name: str = "compile", offload: str | None = None, feature_cache=1, *,
                  offload_name: str = "offload", cache_name: str = "feature_cache") -> str | None:  # fmt: skip
    """A torch.compile mode or None (eager). Compiled graphs hold the weights where they were traced, so no
    offload mode moves them; the feature cache swaps the UNet's blocks, which a compiled graph would not see.
    ``name``, ``offload_name`` and ``cache_name``: the arguments as the caller's user spells them."""
    if mode is None:
        return None
    if mode not in COMPILE_MODES:
        raise InputError(f"{name} must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if offload not in (None, "none"):
        raise InputError(
            f"{name} {mode} does not combine with {offload_name} {offload}; use one or the other"
        )
    if feature_cache not in (None, 1):
        raise InputError(
            f"{name} {mode} does not combine with {cache_name} {feature_cache}; use one or the other"
        )
    return mode


def _real(value) -> bool:
    """A real number, not a bool (True would run as 1: strength True was txt2img, recorded as true)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_knobs(knobs: dict, label=str) -> None:
    """One InputError per bad knob, naming it (as ``label(key)``: how the caller's user spells it, a CLI's flag)
    and the value received."""
    steps = knobs["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise InputError(f"{label('steps')} must be an integer in 1..{MAX_STEPS}, got {steps!r}")
    s = knobs["strength"]
    if not _real(s) or not 0.0 < s <= 1.0:
        raise InputError(f"{label('strength')} must be in (0, 1], got {s!r}")
    g = knobs["guidance_scale"]
    if not _real(g) or not 0.0 <= g <= 50.0 or not math.isfinite(g):
        raise InputError(f"{label('guidance_scale')} must be in [0, 50], got {g!r}")
    c = knobs["control_scale"]
    if not _real(c) or not 0.0 <= c <= 5.0:
        raise InputError(f"{label('control_scale')} must be in [0, 5], got {c!r}")
    a, b = knobs["control_start"], knobs["control_end"]
    if not (_real(a) and _real(b) and 0.0 <= a < b <= 1.0):
        raise InputError(f"{label('control_start')} and {label('control_end')} must satisfy 0 <= start < end <= 1, "
                         f"got {a!r} and {b!r}")  # fmt: skip
    n = knobs["feature_cache"]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CACHE_INTERVAL:
        raise InputError(
            f"{label('feature_cache')} must be an integer in 1..{MAX_CACHE_INTERVAL} (1 = off), got {n!r}"
        )


def plain_number(value):
    """A NumPy (or other) number as Python's own int or float (np.int64(2) was refused as "not an integer", and
    would not go into JSON metadata); anything else, bools included, as it is."""
    if isinstance(value, bool):  # (NumPy's bool_ is no numbers.Integral: left as it is below)
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def resolved_knobs(preset_knobs: dict, model_knobs: dict, given: dict) -> dict:
    """The knobs a generation runs with: the defaults, then a preset's except those the backbone or its few-step
    LoRA needs (``model_knobs``: Flux's guidance, LCM's steps and guidance), then those, then the ones ``given``
    explicitly (None: not given)."""
    return {**DEFAULT_KNOBS, **{k: v for k, v in preset_knobs.items() if k not in model_knobs}, **model_knobs,
            **{k: plain_number(v) for k, v in given.items() if v is not None}}  # fmt: skip


def check_lora_scale(scale, lora=True, label: str = "lora_scale") -> float:
    """``scale`` of the LoRA ``lora``; a scale other than 1 with no LoRA is refused (it was ignored)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 < scale <= 2.0:
        raise InputError(f"{label} must be in (0, 2], got {scale!r}")
    if not lora and scale != 1.0:
        raise InputError(f"{label} {scale:g} is given without a LoRA to scale")
    return float(scale)


def denoising_steps(steps: int, strength: float, flow_matching: bool = False) -> int:
    """The steps a generation runs, as diffusers' pipelines count them: img2img int(steps x strength) of them in the
    SD pipelines; in flow-matching ones (Flux) the steps less int(steps - steps x strength), one more where
    steps x strength is not whole; strength 1, all."""
    if flow_matching:  # FluxControlImg2ImgPipeline.get_timesteps, the same float operations
        return steps - int(max(steps - min(steps * strength, steps), 0))
    return min(int(steps * strength), steps)


def check_denoising_steps(steps: int, strength: float, flow_matching: bool = False, label=str) -> None:
    """At least one denoising step must be left (``denoising_steps``), and on a flow-matching backbone (Flux) one
    step skipped, which keeps the photo in img2img. Checked per request, and up front where both are given (no
    preset or model default can change them). ``label`` names a knob as the caller's user wrote
    it (a flag, a job key)."""
    left = denoising_steps(steps, strength, flow_matching)
    if left < 1:
        raise InputError(
            f"{label('steps')} x {label('strength')} must leave at least one denoising step: "
            f"{label('steps')}={steps} and {label('strength')}={strength} leave {left}; raise either"
        )
    if flow_matching and strength < 1 and left == steps:
        # Flux's img2img skips int(steps - steps x strength) steps: none, and it started from pure noise, the photo
        # unused, yet recorded as img2img (4 steps at 0.8)
        fewest = max(steps + 1, math.floor(1 / (1 - strength)))
        while denoising_steps(fewest, strength, flow_matching) == fewest:
            fewest += 1
        # (past the most steps taken, the advice was refused in turn: 10000 at 0.9999)
        more = f"{label('steps')} {fewest} or more, " if fewest <= MAX_STEPS else ""
        raise InputError(
            f"{label('steps')}={steps} and {label('strength')}={strength} keep nothing of the photo: a flow-matching "
            f"backbone (Flux) skips int({label('steps')} x (1 - {label('strength')})) steps, none here, and starts "
            f"from pure noise; give {more}a lower {label('strength')}, or {label('strength')} 1 (from the depth "
            "alone)"
        )


def check_seed(seed, label=str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) <= MAX_SEED:
        raise InputError(f"{label('seed')} must be an integer in 0..2**63-1, got {seed!r}")
    return int(seed)


def seed_run(seed, num_images: int, label=str) -> list[int]:
    """The seeds of ``num_images`` images from ``seed``: image i uses seed + i, which must stay a seed."""
    base = check_seed(seed, label)
    if base + num_images - 1 > MAX_SEED:
        raise InputError(
            f"{label('seed')} {base} with {label('num_images')} {num_images}: image i uses seed + i, which passes "
            "2**63-1; give a smaller seed"
        )
    return list(range(base, base + num_images))


def check_batch_size(n, name: str = "batch_size") -> int:
    n = plain_number(n)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"{name} must be an integer >= 1, got {n!r}")
    return n


def check_native_size(n, label: str = "native_size") -> int:
    """A backbone's generation pixel budget (n x n); outputs go back to each input's size."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 16 <= int(n) <= 4096:
        raise InputError(f"{label} must be an integer in 16..4096 (pixels a side), got {n!r}")
    return int(n)


def request_seeds(seed, num_images: int, label=str) -> list[int]:
    """The seed of each image a request makes: ``seed`` an int (image i uses seed + i), a list (one image per seed)
    or None (random, seed + i likewise)."""
    import secrets

    if seed is None:
        base = secrets.randbelow(2**31)
        return [base + i for i in range(num_images)]
    if isinstance(seed, (list, tuple)):
        seeds = [check_seed(s, label) for s in seed]
        if not seeds:
            raise InputError(f"{label('seed')} list is empty")
        # (seed=[1, 1] made two images of one file name: one overwrote the other, its manifest line kept)
        check_distinct_seeds(seeds, label("seed"))
        # the list makes one image per seed (2 were made where 3 were asked for)
        if num_images not in (1, len(seeds)):
            raise InputError(f"{label('seed')} is a list of {len(seeds)} seeds and {label('num_images')} {num_images}: "
                             "a seed list makes one image per seed; give one or the other")  # fmt: skip
        return seeds
    return seed_run(seed, num_images, label)


def check_distinct_seeds(seeds, what: str) -> None:
    """One line naming ``what`` if a seed is listed twice: each seed makes one image, named by its seed."""
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise InputError(f"{what} lists {repeated[0]} more than once; each seed makes one image")


def check_num_images(n, label=str) -> int:
    n = plain_number(n)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise InputError(f"{label('num_images')} must be an integer in 1..{MAX_IMAGES}, got {n!r}")
    return n
