"""Depth from a rectified stereo pair with OpenCV's semi-global block matching (SGBM)."""

from __future__ import annotations

import numbers

import numpy as np

from .depthmap import DepthMap
from .errors import Depth2ImgWarning, InputError

SGBM_BLOCK_SIZE = 5  # matching window; 5 scored best among 3/5/7 on skimage's Middlebury motorcycle pair
# Under this share of matched pixels the pair is most likely swapped or not rectified (skimage's motorcycle pair:
# 0.82 matched; swapped: 0.17)
MIN_MATCHED = 0.3
# Over this share of the matched pixels within 2 px of the disparity search's end, nearer surfaces lie beyond it and
# were matched wrongly (skimage's motorcycle pair, disparities up to 60 px: searched to 16, 32 or 48 px, 16-37 % of
# them there, median errors 0.3-15 px; to 64 or more, under 0.01 %, 0.18 px)
MAX_AT_SEARCH_END = 0.02


def check_num_disparities(value, width: int | None = None, option: str = "num_disparities") -> None:
    """SGBM's disparity search range: a positive multiple of 16 (below ``width``, where known), an integer (OpenCV
    refuses a float, "16.0", and a str failed at its % with Python's own TypeError)."""
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not whole or value % 16 or value <= 0 or (width is not None and value >= width):
        below = f" below the width {width}" if width is not None else ""
        raise InputError(f"{option} must be a positive multiple of 16{below}, got {value!r}")


def _fill_holes(disparity: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill each invalid pixel with the farther (smaller) of its nearest valid neighbours on the same row:
    holes in stereo are mostly occlusions, which belong to the background."""
    h, w = disparity.shape
    cols = np.broadcast_to(np.arange(w), (h, w))
    left_idx = np.maximum.accumulate(np.where(valid, cols, 0), axis=1)
    left_ok = np.maximum.accumulate(valid, axis=1)
    right_idx = (w - 1) - np.maximum.accumulate(np.where(valid[:, ::-1], cols, 0), axis=1)[:, ::-1]
    right_ok = np.maximum.accumulate(valid[:, ::-1], axis=1)[:, ::-1]
    left = np.where(left_ok, np.take_along_axis(disparity, left_idx, 1), np.inf)
    right = np.where(right_ok, np.take_along_axis(disparity, right_idx, 1), np.inf)
    filled = np.where(valid, disparity, np.minimum(left, right))
    far = disparity[valid].min() if valid.any() else 0.0
    filled[~np.isfinite(filled)] = far  # rows with no valid pixel at all
    return filled.astype(np.float32)


def stereo_depth(
    left,
    right,
    *,
    num_disparities: int | None = None,
    block_size: int = SGBM_BLOCK_SIZE,
    name: str = "stereo",
    option: str = "num_disparities",
) -> DepthMap:
    """Disparity in pixels aligned with the left image, dense: each unmatched pixel (an occlusion, the band at the
    left edge the right camera does not see) takes the farther of its nearest matched neighbours on its row.

    The filled map is the depth everywhere (valid everywhere), so the .npy, the 16-bit PNG, the preview and the
    control image all show the same map; ``meta["matched"]`` is the share of pixels SGBM matched, and
    ``sgbm_disparity`` gives the raw disparity and its mask. ``left`` and ``right`` are PIL images (or HxWx3 uint8
    arrays) of the same size, already rectified. ``num_disparities`` defaults to an eighth of the width, rounded up
    to a multiple of 16; where more than ``MAX_AT_SEARCH_END`` of the matched pixels lie at its end, a warning says to
    raise it. ``name`` begins its error and warning (a command names the pair's left image); ``option``: how the caller
    spells ``num_disparities`` in them.
    """
    import warnings

    disparity, matched, num_disparities = sgbm_disparity(
        left, right, num_disparities=num_disparities, block_size=block_size, option=option
    )
    if not matched.any():  # all fill: a flat map written as depth, valid everywhere
        raise InputError(f"{name}: no pixel matched at a disparity above 0: is the right image the left one again, "
                         "or a surface without texture?")  # fmt: skip
    # (a swapped pair's few matches lie anywhere, 4 % of them at the search's end: said as swapped)
    at_end = float((disparity[matched] >= num_disparities - 2).mean())
    if matched.mean() < MIN_MATCHED:
        warnings.warn(f"{name}: only {matched.mean():.0%} of the pixels matched; are left and right swapped, or the "
                      "pair not rectified?", Depth2ImgWarning, stacklevel=2)  # fmt: skip
    elif at_end > MAX_AT_SEARCH_END:
        # (a matched pixel's disparity silently ends there: exit 0, a wrong depth)
        warnings.warn(f"{name}: {at_end:.0%} of the matched pixels lie at the end of the {num_disparities}-px "
                      f"disparity search: nearer surfaces are beyond it and matched wrongly; raise {option} (a "
                      "multiple of 16 below the width)", Depth2ImgWarning, stacklevel=2)  # fmt: skip
    return DepthMap(_fill_holes(disparity, matched), "disparity", source="stereo-sgbm",
                    meta={"num_disparities": num_disparities, "block_size": block_size,
                          "matched": float(matched.mean())})  # fmt: skip


def sgbm_disparity(
    left,
    right,
    *,
    num_disparities: int | None = None,
    block_size: int = SGBM_BLOCK_SIZE,
    option: str = "num_disparities",
) -> tuple[np.ndarray, np.ndarray, int]:
    """OpenCV SGBM's disparity (float32 pixels), the mask of matched pixels, and the disparity range used."""
    import cv2
    from PIL import Image

    from .io import to_rgb

    def pixels(image, name):
        # as load_image converts a photo: 16-bit grey scaled (convert("RGB") clipped it to one level), alpha on white
        if isinstance(image, Image.Image):
            return np.asarray(to_rgb(image))
        if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim in (2, 3):
            if image.ndim == 2 or image.shape[2] == 3:
                return image
        got = (
            f"a {image.dtype} array of shape {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        # (OpenCV's assertion, or an unpacking error, was the message)
        raise InputError(f"stereo: {name} must be a PIL image or an HxW or HxWx3 uint8 array, got {got}")

    left, right = pixels(left, "left"), pixels(right, "right")
    if left.shape[:2] != right.shape[:2]:
        raise InputError(
            f"stereo pair sizes differ: left {left.shape[1]}x{left.shape[0]}, right {right.shape[1]}x{right.shape[0]}; "
            "give a rectified pair of the same size"
        )
    if left.ndim != right.ndim:  # (said the sizes differed, naming two equal sizes)
        raise InputError(f"stereo: left is {'grey' if left.ndim == 2 else 'colour'} and right "
                         f"{'grey' if right.ndim == 2 else 'colour'}; give two images of one kind")  # fmt: skip
    h, w = left.shape[:2]
    if num_disparities is None:
        if w <= 16:
            raise InputError(f"stereo pair is {w} px wide: too narrow to match (more than 16 px needed)")
        num_disparities = max(16, int(np.ceil(w / 8 / 16)) * 16)
    check_num_disparities(num_disparities, w, option)
    whole = isinstance(block_size, numbers.Integral) and not isinstance(block_size, bool)
    if not whole or block_size % 2 == 0 or not 1 <= block_size <= 11:
        raise InputError(f"block_size must be an odd integer, 1..11, got {block_size!r}")
    num_disparities, block_size = int(num_disparities), int(block_size)
    channels = left.shape[2] if left.ndim == 3 else 1
    matcher = cv2.StereoSGBM_create(
        minDisparity=0, numDisparities=num_disparities, blockSize=block_size,
        P1=8 * channels * block_size**2, P2=32 * channels * block_size**2,  # OpenCV's recommended smoothness
        disp12MaxDiff=1, uniquenessRatio=10, speckleWindowSize=100, speckleRange=2,
        mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY,
    )  # fmt: skip
    disparity = (
        matcher.compute(left, right).astype(np.float32) / 16.0
    )  # SGBM returns fixed point, 4 fractional bits
    return disparity, disparity > 0, num_disparities
