"""Pure functions from raw depth values to what each backbone is conditioned on.

Conventions (see REFERENCE.md): ControlNet/T2I depth models were trained on MiDaS-style maps, so the
control image is inverse depth (disparity-like), min-max normalised per image, near = white, RGB in
[0, 1]. SD2-depth takes inverse depth at latent size, normalised per sample to [-1, 1], exactly as
``StableDiffusionDepth2ImgPipeline.prepare_depth_map`` does it.
"""

from __future__ import annotations

import numpy as np

# What the numbers of a DepthMap mean.
KINDS = {
    "relative_inverse_depth": "affine-invariant inverse depth from a monocular estimator (near = large)",
    "disparity": "stereo disparity in pixels (near = large)",
    "metric_depth": "depth in metres (near = small)",
    "relative_depth": "depth of unknown scale and shift (near = small)",
}


def to_inverse(
    values: np.ndarray, kind: str, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Map raw values to a near = large quantity; returns (inverse, valid) with invalid pixels set to the farthest valid value.

    Metric depth is inverted as 1/d, the MiDaS disparity convention (a choice: the ControlNets' training maps
    were MiDaS disparity, and also ZoeDepth's as 1 - d clipped to its 2nd..85th percentiles, which keeps more
    contrast far away; which conditions better is not measured here);
    relative depth, whose shift is unknown, is reflected (max - d) so that min-max normalisation gives 1 - d.
    """
    raw = values
    values = np.asarray(values, dtype=np.float64)  # 1/d of a tiny float32 depth overflows float32
    valid = usable(values, kind, valid)
    if kind in ("relative_inverse_depth", "disparity"):
        inverse = values.copy() if np.may_share_memory(values, raw) else values  # a converted array is ours
    elif kind == "metric_depth":
        inverse = np.zeros_like(values)
        np.divide(1.0, values, out=inverse, where=valid)
    elif kind == "relative_depth":
        top = values[valid].max() if valid.any() else 0.0
        inverse = top - values
    else:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if valid.all():  # the usual case: no masked copies
        return inverse, valid
    far = inverse[valid].min() if valid.any() else 0.0
    inverse[~valid] = far
    return inverse, valid


def usable(values: np.ndarray, kind: str, valid: np.ndarray | None = None) -> np.ndarray:
    """The pixels whose value means something: marked valid, finite, and for metric depth > 0 (0 = no measurement)."""
    values = np.asarray(values)
    finite = np.isfinite(values)
    mask = finite if valid is None else np.asarray(valid, bool) & finite
    return mask & (values > 0) if kind == "metric_depth" else mask


def fill_unusable(values: np.ndarray, usable_mask: np.ndarray) -> np.ndarray:
    """``values`` with each unusable pixel set to its nearest usable one (zeros where none is), so that resizing
    blends no hole's placeholder (a 0, a NaN) into the pixels around it."""
    import cv2

    if not usable_mask.any():
        return np.zeros(values.shape, np.float32)
    # Each usable pixel is a label of its own, numbered in raster order; every pixel gets its nearest one's label
    _, label = cv2.distanceTransformWithLabels(
        (~usable_mask).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    return np.asarray(values)[usable_mask][label - 1]


def normalize(inverse: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Min-max normalise one image to [0, 1] over its valid pixels (near = 1); a constant map gives zeros."""
    inverse = np.asarray(inverse, dtype=np.float64)
    valid = np.ones(inverse.shape, bool) if valid is None else np.asarray(valid, bool)
    everywhere = valid.all()
    if not everywhere and not valid.any():
        return np.zeros(inverse.shape, np.float32)
    lo, hi = (inverse.min(), inverse.max()) if everywhere else (inverse[valid].min(), inverse[valid].max())
    if not hi > lo:
        return np.zeros(inverse.shape, np.float32)
    out = (inverse - lo) / (hi - lo)
    if not everywhere:
        out[~valid] = 0.0
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32)


def resize_depth(values: np.ndarray, height: int, width: int, *, nearest: bool = False) -> np.ndarray:
    """Resize a depth array to (height, width): bicubic by default (as transformers and diffusers do), nearest for masks.

    Every value counts: fill a map's holes first (``fill_unusable``)."""
    import cv2

    values = np.asarray(values)
    if values.shape == (height, width):
        return values.copy()
    if nearest:
        # INTER_NEAREST_EXACT samples each output pixel's centre, as the values' resize is aligned; INTER_NEAREST
        # took its top-left source pixel, moving a mask's edges by a pixel against its values on a 3x shrink
        exact = cv2.INTER_NEAREST_EXACT
        return cv2.resize(values.astype(np.uint8), (width, height), interpolation=exact).astype(bool)
    src = values.astype(np.float32)
    shrinking = height < src.shape[0] and width < src.shape[1]
    out = cv2.resize(src, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    # Bicubic overshoots; keep the result inside the source range.
    return np.clip(out, src.min(), src.max())


def control_array(normalized: np.ndarray) -> np.ndarray:
    """The ControlNet conditioning image: (H, W, 3) float32 in [0, 1], near = white."""
    return np.repeat(np.asarray(normalized, np.float32)[..., None], 3, axis=2)


def sd2_depth(inverse: np.ndarray, height: int, width: int, vae_scale_factor: int):
    """SD2-depth's extra UNet channel: a (1, 1, height // f, width // f) tensor in [-1, 1].

    Same operations, in the same order, as diffusers' ``prepare_depth_map`` applied to ``inverse``.
    A constant map gives zeros instead of diffusers' division by zero.
    """
    import torch

    # scaled to [0, 1] in float64 first, as SD2DepthBackend hands it to diffusers (min-max ignores the rescale)
    source = normalize(inverse)
    if not source.max() > source.min():
        # Judge constancy before resizing: bicubic weights carry float rounding that min-max would blow up.
        return torch.zeros(1, 1, height // vae_scale_factor, width // vae_scale_factor)
    depth = torch.as_tensor(source)[None, None]
    depth = torch.nn.functional.interpolate(
        depth,
        size=(height // vae_scale_factor, width // vae_scale_factor),
        mode="bicubic",
        align_corners=False,
    )
    lo = torch.amin(depth, dim=[1, 2, 3], keepdim=True)
    hi = torch.amax(depth, dim=[1, 2, 3], keepdim=True)
    if not bool((hi > lo).all()):
        return torch.zeros_like(depth)
    return 2.0 * (depth - lo) / (hi - lo) - 1.0
