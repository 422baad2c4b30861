"""Geometry check: how well an output kept its source's depth.

Depth is estimated on the output with the same estimator, aligned to the source depth in inverse-depth
space by least-squares scale and shift (the MiDaS evaluation protocol), then compared in depth space:
AbsRel (lower is better), delta < 1.25 (share of pixels within 25 %, higher is better), and the F1 score
of depth edges matched within a small pixel tolerance (higher is better).
"""

from __future__ import annotations

import numpy as np

from .depthmap import DepthMap
from .errors import InputError

# A relative (affine-invariant) source has no absolute scale: its normalised inverse depth is mapped to
# disparities 1/RANGE..1, i.e. a scene whose far end is RANGE times the distance of its near end.
RELATIVE_DEPTH_RANGE = 20.0
EDGE_THRESHOLD = 0.05  # a depth edge: Sobel magnitude of normalised inverse depth above this (per pixel)
EDGE_TOLERANCE_PX = 2  # an edge counts as matched within this distance
METRICS = {"absrel": "lower", "delta1": "higher", "edge_f1": "higher"}


def _target_disparity(depth: DepthMap) -> tuple[np.ndarray, np.ndarray]:
    inverse, valid = depth.inverse(), depth.valid.copy()
    if depth.kind == "metric_depth":
        valid &= depth.values > 0
        return inverse.astype(np.float64), valid
    n = depth.normalized().astype(np.float64)
    return n * (1.0 - 1.0 / RELATIVE_DEPTH_RANGE) + 1.0 / RELATIVE_DEPTH_RANGE, valid


def align_scale_shift(
    pred: np.ndarray, target: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, float, float]:
    """Least-squares s, t minimising ||s * pred + t - target|| over mask; returns (aligned pred, s, t)."""
    p, g = pred[mask].astype(np.float64), target[mask].astype(np.float64)
    a = np.stack([p, np.ones_like(p)], axis=1)
    (s, t), *_ = np.linalg.lstsq(a, g, rcond=None)
    return s * pred + t, float(s), float(t)


def _edges(normalized: np.ndarray) -> np.ndarray:
    import cv2

    n = normalized.astype(np.float32)
    gx = cv2.Sobel(n, cv2.CV_32F, 1, 0, ksize=3) / 8.0  # /8: Sobel's kernel weights sum to 8 per side
    gy = cv2.Sobel(n, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return np.hypot(gx, gy) > EDGE_THRESHOLD


def edge_f1(source: np.ndarray, output: np.ndarray, tolerance: int = EDGE_TOLERANCE_PX) -> float:
    """F1 of depth edges (from normalised inverse depths), an edge matched if within ``tolerance`` px."""
    import cv2

    a, b = _edges(source), _edges(output)
    if not a.any() and not b.any():
        return 1.0
    if not a.any() or not b.any():
        return 0.0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
    near_a = cv2.dilate(a.astype(np.uint8), kernel).astype(bool)
    near_b = cv2.dilate(b.astype(np.uint8), kernel).astype(bool)
    precision = (b & near_a).sum() / b.sum()
    recall = (a & near_b).sum() / a.sum()
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def geometry_scores(source: DepthMap, output: DepthMap) -> dict:
    """Scores of ``output`` (depth re-estimated on a generated image) against ``source``."""
    if source.size != output.size:
        output = output.resized(*source.size)
    target, valid = _target_disparity(source)
    pred = output.inverse().astype(np.float64)
    valid &= output.valid
    if valid.sum() < 2:
        raise InputError("geometry check: fewer than 2 valid pixels to compare")
    aligned, scale, shift = align_scale_shift(pred, target, valid)
    floor = target[valid].min()
    aligned = np.maximum(aligned, floor)  # aligned disparity cannot be farther than the farthest source pixel
    d_out, d_src = 1.0 / aligned[valid], 1.0 / target[valid]
    ratio = np.maximum(d_out / d_src, d_src / d_out)
    return {
        "absrel": float(np.mean(np.abs(d_out - d_src) / d_src)),
        "delta1": float(np.mean(ratio < 1.25)),
        "edge_f1": edge_f1(source.normalized(), output.normalized()),
        "scale": scale,
        "shift": shift,
    }


def passes(scores: dict, metric: str, threshold: float) -> bool:
    if metric not in METRICS:
        raise InputError(f"geometry metric must be one of {', '.join(METRICS)}, got {metric!r}")
    value = scores[metric]
    return value <= threshold if METRICS[metric] == "lower" else value >= threshold
