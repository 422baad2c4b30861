"""An opt-in feature cache for UNet backbones, after DeepCache (Ma, Fang & Wang, CVPR 2024).

Adjacent denoising steps produce nearly the same deep UNet features. With ``interval`` N, every N-th UNet call
runs in full; on the calls between, only the outermost blocks run (``conv_in``, the first down block, the last
up block, ``conv_out``) and the deep blocks' outputs from the last full call are reused. The ControlNet's
residuals are reused the same way (the outer blocks only read its shallowest ones).

This is a quality trade: the output is no longer what diffusers computes. ``depth2img bench --feature-cache N``
reports its speed and its max abs difference from plain diffusers; ``feature_cache`` is recorded in each
output's metadata. Off (``1``) by default.
"""

from __future__ import annotations

import contextlib

from .errors import InputError

# Set on a module whose forward depth2img compiled (backends.compile_forward): its torch.compile mode
COMPILE_MODE_ATTR = "_depth2img_compile_mode"


class _Calls:
    def __init__(self):
        self.unet = 0  # UNet calls started in this pipeline call (the ControlNet runs just before each)
        self.deep = 0  # calls that ran the deep blocks (for tests and benchmarks)

    def cached(self, interval: int) -> bool:
        return self.unet % interval != 0


@contextlib.contextmanager
def swapped_forward(module, make):
    """``module.forward = make(original forward)`` inside the block; what was there before is back afterwards
    (so wrappers nest and unwind in any order)."""
    had = "forward" in module.__dict__
    before = module.__dict__.get("forward")
    module.forward = make(module.forward)
    try:
        yield
    finally:
        if had:
            module.forward = before
        else:
            del module.forward


@contextlib.contextmanager
def unet_feature_cache(unet, interval: int, controlnet=None):
    """Inside the block, ``unet`` (a diffusers UNet2DConditionModel) and ``controlnet`` reuse their deep
    features on all but every ``interval``-th call. Yields the call counts. ``interval`` 1 changes nothing."""
    calls = _Calls()
    if interval <= 1:
        yield calls
        return
    if getattr(unet, COMPILE_MODE_ATTR, None) or getattr(unet, "_compiled_call_impl", None) is not None:
        raise InputError(
            "feature_cache does not combine with torch.compile (compile=...); use one or the other"
        )
    outputs = {}

    def reuse(key, counts_deep=False):
        def make(original):
            def forward(*args, **kwargs):
                if calls.cached(interval) and key in outputs:
                    return outputs[key]
                if counts_deep:
                    calls.deep += 1
                outputs[key] = out = original(*args, **kwargs)
                return out

            return forward

        return make

    def controlnet_make(original):
        def forward(*args, conditioning_scale=1.0, **kwargs):
            # Reused only at the scale it was computed with: diffusers switches the ControlNet off (scale 0)
            # outside its guidance window. That reaches a cached step through the outermost blocks only: the reused
            # deep blocks' outputs hold the control of the last full step, so the window moves by up to N-1 steps
            # (a step just past control_end still carries control; one just past control_start mostly not yet).
            key = ("controlnet", float(conditioning_scale))
            if calls.cached(interval) and key in outputs:
                return outputs[key]
            outputs[key] = out = original(*args, conditioning_scale=conditioning_scale, **kwargs)
            return out

        return forward

    def unet_make(original):
        def forward(*args, **kwargs):
            try:
                return original(*args, **kwargs)
            finally:
                calls.unet += 1

        return forward

    with contextlib.ExitStack() as stack:
        deep = [*unet.down_blocks[1:], unet.mid_block, *unet.up_blocks[:-1]]
        for i, block in enumerate(deep):
            stack.enter_context(swapped_forward(block, reuse(i, counts_deep=i == 0)))
        if controlnet is not None:
            stack.enter_context(swapped_forward(controlnet, controlnet_make))
        stack.enter_context(swapped_forward(unet, unet_make))
        yield calls
