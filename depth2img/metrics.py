"""Geometry check: how well an output kept its source's depth.

Depth is estimated on the output with the same estimator, aligned to the source depth in inverse-depth
space by least-squares scale and shift (the MiDaS evaluation protocol; the scale kept >= 0, so an output whose
near and far are swapped does not align), then compared in depth space:
AbsRel (lower is better), delta < 1.25 (share of pixels within 25 %, higher is better), and the F1 score
of depth edges matched within a small pixel tolerance (higher is better).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import conditioning
from .depthmap import DepthMap
from .errors import InputError

# A relative (affine-invariant) source has no absolute scale: its normalised inverse depth is mapped to
# disparities 1/RANGE..1, i.e. a scene whose far end is RANGE times the distance of its near end; a relative depth
# (far-bright) to depths 1..RANGE, then inverted.
RELATIVE_DEPTH_RANGE = 20.0
EDGE_THRESHOLD = 0.05  # a depth edge: Sobel magnitude of normalised inverse depth above this (per pixel)
EDGE_TOLERANCE_PX = 2  # an edge counts as matched within this distance
# ... both on maps of at most EDGE_SIDE px a side (a larger one is averaged down to it): depth estimated at ~518 px
# and resized to a 6000x4000 photo spreads a step over ~10 px, under the per-pixel threshold: no edge in either map,
# and an output whose box had moved scored edge F1 1.0, passing a gate on it; lowering the threshold with the side
# instead counted a full-size source's 0.5 % noise as edges (a perfect output scored 0.05)
EDGE_SIDE = 512
# ... where at least this share of the compared pixels have an all-valid Sobel window around them (else edge F1 is None)
MIN_EDGE_SHARE = 0.1
# An output whose aspect ratio is within this of the source's is the same frame at another size (a generation size
# rounded to multiples of 8 or 64 moves it by ~1-2 %) and is resized onto the source's pixels
MAX_ASPECT_CHANGE = 0.03
METRICS = {"absrel": "lower", "delta1": "higher", "edge_f1": "higher"}
# A source against which a flat output would score at least this delta1 spans a narrow depth range (10-13 m):
# AbsRel and delta1 say little there (eval and a job gating on them warn), edge F1 does
NARROW_FLAT_DELTA1 = 0.5


@dataclass
class GeometryReference:
    """What the check needs of a source depth, computed once and reused for all of its outputs."""

    target: np.ndarray  # disparity the outputs are aligned to (float64)
    valid: np.ndarray
    edges: np.ndarray  # inside ``interior`` only
    near_edges: np.ndarray  # edges dilated by the tolerance
    # valid pixels whose Sobel window is all valid: the only ones an edge is looked for at
    interior: np.ndarray
    size: tuple[int, int]
    tolerance: int  # px within which an output edge matches
    target_valid: (
        np.ndarray
    )  # target[valid]: what an output valid everywhere (the usual case) is compared with
    # no valid pixel, or one disparity on all: no geometry to keep, and every score is None (no output passes)
    flat: bool = False
    # delta1 of a flat output (no structure at all) against this source: near 1 where the scene spans a narrow
    # range of depths (10-13 m), where AbsRel and delta1 then say little and edge_f1 is the score to trust
    flat_delta1: float = 0.0
    # _edge_scale of its size: edges, near_edges and interior are at its size / edge_scale
    edge_scale: float = 1.0
    # a far-bright (relative_depth) source's map normalised over its valid pixels: its target is read again over
    # the pixels an output with holes shares with it (depths 1..RANGE over other pixels are other depths)
    far_bright: np.ndarray | None = None


def _inverse(depth: DepthMap) -> tuple[np.ndarray, np.ndarray]:
    """``depth`` as inverse depth, and where it holds one: stereo disparity's point at infinity (0) or failed match
    (< 0) holds none, in a source and in an output alike."""
    inverse, valid = conditioning.to_inverse(depth.values, depth.kind, depth.valid)
    if depth.kind == "disparity":
        valid = valid & (inverse > 0)
    return inverse, valid


def _edge_scale(size) -> float:
    """How many pixels of a map of ``size`` (width, height) make one at ``EDGE_SIDE`` a side (1 for smaller maps)."""
    return max(1.0, max(size) / EDGE_SIDE)


def _edge_view(normalized: np.ndarray, valid: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A normalised map and its valid pixels as edges are looked for in them: averaged down ``scale`` times over the
    valid pixels each covers, valid where at least half of them are (valid where all were, a source with 20 %
    scattered holes, a sparse LiDAR's, kept no pixel: no edge anywhere, and any output scored edge F1 1.0)."""
    if scale == 1.0:
        return normalized, valid
    import cv2

    h, w = normalized.shape
    size = (max(1, round(w / scale)), max(1, round(h / scale)))
    share = cv2.resize(valid.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    held = cv2.resize(np.where(valid, normalized, 0).astype(np.float32), size, interpolation=cv2.INTER_AREA)
    covered = share >= 0.5
    return np.where(covered, held / np.maximum(share, 1e-6), 0).astype(np.float32), covered


def geometry_reference(source: DepthMap, tolerance: int = EDGE_TOLERANCE_PX) -> GeometryReference:
    scale = _edge_scale(source.size)
    inverse, valid = _inverse(source)
    normalized = conditioning.normalize(inverse, valid)
    far_bright = None
    if source.kind in ("metric_depth", "disparity"):
        # true 1/d, or stereo disparity f * B / d: proportional to it, and the scores ignore a scale (it was read as
        # a relative map squeezed to 1:20, and the same error scored another delta1)
        target = inverse
    elif source.kind == "relative_depth":
        far_bright = normalized
        target = _far_bright_inverse(normalized)
        normalized = conditioning.normalize(target, valid)
    else:
        n = normalized.astype(np.float64)
        target = n * (1.0 - 1.0 / RELATIVE_DEPTH_RANGE) + 1.0 / RELATIVE_DEPTH_RANGE
    small, small_valid = _edge_view(normalized, valid, scale)
    interior = _interior(small_valid)
    edges = _edges(small) & interior  # a hole's border is no depth edge (holes normalise to 0)
    g = target[valid]
    flat = g.size < 2 or g.min() == g.max()
    # a flat output's best fit is the mean disparity (what a reversed output is scored as, too)
    flat_delta1 = 1.0 if flat else _delta1(g / g.mean())
    return GeometryReference(target, valid, edges, _dilate(edges, tolerance), interior, source.size, tolerance,
                             g, flat, flat_delta1, scale, far_bright)  # fmt: skip


def _far_bright_inverse(normalized: np.ndarray) -> np.ndarray:
    """1/depth of a far-bright map (larger = farther, unknown scale), ``normalized`` near = 1: read as depths
    1..RELATIVE_DEPTH_RANGE, then inverted (read as disparities, linear in depth where they are linear in 1/depth,
    a perfect output scored AbsRel 0.37). Source and output alike (an output's was read linearly: a far-bright map
    scored AbsRel 0.35 against itself)."""
    far = 1.0 - normalized.astype(np.float64)
    return 1.0 / (1.0 + (RELATIVE_DEPTH_RANGE - 1.0) * far)


def align_scale_shift(
    pred: np.ndarray, target: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, float, float]:
    """Least-squares s, t minimising ||s * pred + t - target|| over mask; returns (aligned pred, s, t).

    The closed form of the two-parameter fit, on centred values (numerically what lstsq gives, tested, at a
    fraction of its cost: 17 ms -> a few ms for a 1024x683 map); a constant pred goes to lstsq, whose minimum-norm
    answer is then the defined one."""
    s, t = _fit(pred[mask].astype(np.float64), target[mask].astype(np.float64))
    return s * pred + t, s, t


def _fit(p: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    """Least-squares s, t of s * p + t ~ g for two vectors (see ``align_scale_shift``)."""
    pc = p - p.mean()
    var = pc @ pc
    if var > 0:
        s = (pc @ (g - g.mean())) / var
        t = g.mean() - s * p.mean()
    else:
        (s, t), *_ = np.linalg.lstsq(np.stack([p, np.ones_like(p)], axis=1), g, rcond=None)
    return float(s), float(t)


def _edges(normalized: np.ndarray) -> np.ndarray:
    import cv2

    n = normalized.astype(np.float32, copy=False)
    gx = cv2.Sobel(n, cv2.CV_32F, 1, 0, ksize=3) / 8.0  # /8: Sobel's kernel weights sum to 8 per side
    gy = cv2.Sobel(n, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return np.hypot(gx, gy) > EDGE_THRESHOLD


def _interior(valid: np.ndarray) -> np.ndarray:
    """Valid pixels whose 3x3 Sobel window holds no invalid one."""
    import cv2

    if valid.all():
        return valid
    return cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8), borderValue=1).astype(bool)


def _dilate(edges: np.ndarray, tolerance: int) -> np.ndarray:
    """Every pixel within ``tolerance`` px of an edge: a disc of radius sqrt(tolerance² + 1), the same along rows and
    columns (OpenCV's 5x5 MORPH_ELLIPSE reached an offset of (1, 2) but not (2, 1); this reaches both, and (2, 0),
    not (2, 2))."""
    import cv2

    y, x = np.ogrid[-tolerance : tolerance + 1, -tolerance : tolerance + 1]
    kernel = (x * x + y * y <= tolerance * tolerance + 1).astype(np.uint8)
    return cv2.dilate(edges.astype(np.uint8), kernel).astype(bool)


def _f1(a: np.ndarray, near_a: np.ndarray, b: np.ndarray, tolerance: int) -> float:
    if not a.any() and not b.any():
        return 1.0
    if not a.any() or not b.any():
        return 0.0
    precision = (b & near_a).sum() / b.sum()
    recall = (a & _dilate(b, tolerance)).sum() / a.sum()
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def edge_f1(source: np.ndarray, output: np.ndarray, tolerance: int = EDGE_TOLERANCE_PX) -> float:
    """F1 of depth edges (from normalised inverse depths), an edge matched if within ``tolerance`` px."""
    if np.shape(source) != np.shape(output):
        raise InputError(
            f"edge_f1: source and output must be maps of one shape, got {np.shape(source)} and {np.shape(output)}"
        )
    scale = _edge_scale(np.shape(source)[::-1])
    everywhere = np.ones(np.shape(source), bool)
    a = _edges(_edge_view(np.asarray(source), everywhere, scale)[0])
    return _f1(
        a, _dilate(a, tolerance), _edges(_edge_view(np.asarray(output), everywhere, scale)[0]), tolerance
    )


def check_frames(source_size, output_size, source: str = "the source", output: str = "the output") -> None:
    """An output at another size of the source's frame (another tool's generation size) is resized onto the
    source's pixels; another aspect ratio means another frame, whose pixels do not align with the source's: one
    line naming ``source`` and ``output``."""
    (sw, sh), (ow, oh) = source_size, output_size
    if abs((ow / oh) / (sw / sh) - 1) > MAX_ASPECT_CHANGE:
        raise InputError(
            f"geometry check: {output} is {ow}x{oh} and {source} {sw}x{sh}; their aspect ratios differ by "
            f"more than {MAX_ASPECT_CHANGE:.0%}, so their pixels do not align (crop or resize the output to the "
            "source's frame)"
        )


def geometry_scores(source: DepthMap | GeometryReference, output: DepthMap) -> dict:
    """Scores of ``output`` (depth re-estimated on a generated image) against ``source`` (a DepthMap, or its
    ``geometry_reference`` when one source is checked against many outputs)."""
    if not isinstance(source, (DepthMap, GeometryReference)) or not isinstance(output, DepthMap):
        got = type(source if not isinstance(source, (DepthMap, GeometryReference)) else output).__name__
        raise InputError(f"geometry_scores takes two DepthMaps (the output's: DepthEstimator on the generated image), "
                         f"got {got}")  # fmt: skip
    ref = source if isinstance(source, GeometryReference) else geometry_reference(source)
    if ref.flat:  # any output "kept" a flat depth (AbsRel 0, delta1 1): no score means anything
        return dict.fromkeys((*METRICS, "scale", "shift"))
    if ref.size != output.size:
        check_frames(ref.size, output.size)
        output = output.resized(*ref.size)
    # (an output's disparity holes had been compared: the same holes scored 0/1/1 in the source, 0.27/0.64/0.51 here)
    pred, pred_valid = _inverse(output)
    # Only the pixels valid in both are compared; an output valid everywhere reuses the reference's selection
    valid = ref.valid if pred_valid.all() else ref.valid & pred_valid
    # a far-bright map is read as depths 1..RANGE over the pixels compared, the source's too (each read over its
    # own valid pixels, a perfect output with holes over the near end scored AbsRel 0.18, delta1 0.59; the same
    # holes in the source 0.21 / 0.53)
    if output.kind == "relative_depth":
        pred = _far_bright_inverse(conditioning.normalize(pred, valid))
    target = ref.target
    if ref.far_bright is not None and valid is not ref.valid:
        target = _far_bright_inverse(conditioning.normalize(ref.far_bright, valid))
    g = ref.target_valid if valid is ref.valid else target[valid]
    if g.size < 2:
        raise InputError("geometry check: fewer than 2 valid pixels to compare")
    p = pred[valid]
    scale, shift = _fit(p, g)
    # near and far swapped: a negative scale would fit a reversed depth as well as a faithful one (a perfect
    # score); the best fit that keeps depth's direction is then flat, and it scores what a flat output would
    # (its edges too: a reversed map has the same edges). A constant output is flat: lstsq's minimum-norm answer gave
    # it a scale > 0 (0.035 for a constant 0.5), and it passed gates no flat output should
    flat = scale < 0 or p.min() == p.max()
    if flat:
        scale, shift = 0.0, float(g.mean())
    # aligned disparity cannot be farther than the farthest source pixel
    aligned = np.maximum(scale * p + shift, g.min())
    # depths d = 1 / disparity; r = d_out / d_src, so AbsRel = mean |r - 1| and delta1 = share of max(r, 1/r) < 1.25
    r = g / aligned
    # edges are compared where both maps are valid around the pixel
    edges, near_edges, interior = ref.edges, ref.near_edges, ref.interior
    if valid is not ref.valid:
        # the source's edges found again on its map stretched over the same pixels as the output's (stretched over
        # its own, a hole of the output's over the near end narrowed the output's range only, its gradients grew
        # ~3x and smooth slopes counted as edges: a perfect output scored edge F1 0.625)
        small, small_valid = _edge_view(conditioning.normalize(target, valid), valid, ref.edge_scale)
        interior = _interior(small_valid)
        edges = _edges(small) & interior
        near_edges = _dilate(edges, ref.tolerance)
    # normalised over the pixels compared (over the output's own valid ones, a near hole of the source's set the
    # output's scale: a perfect output's edge F1 was 0.994)
    out_edges = (
        np.zeros_like(interior)
        if flat
        else _edges(_edge_view(conditioning.normalize(pred, valid), valid, ref.edge_scale)[0]) & interior
    )
    # edges are looked for where a Sobel window is all valid: where those pixels are too few (sparse measurements,
    # a LiDAR's rows), none found is no agreement, and edge F1 is None (it scored 1.0, whatever the output)
    measurable = interior.sum() * ref.edge_scale**2 >= MIN_EDGE_SHARE * np.count_nonzero(valid)
    return {
        "absrel": float(np.mean(np.abs(r - 1.0))),
        "delta1": _delta1(r),
        "edge_f1": _f1(edges, near_edges, out_edges, ref.tolerance) if measurable else None,
        "scale": scale,
        "shift": shift,
    }


def _delta1(r: np.ndarray) -> float:
    """The share of pixels whose depth ratio ``r`` (d_out / d_src) is within 25 %."""
    return float(np.mean((r < 1.25) & (r > 0.8)))


def passes(scores: dict, metric: str, threshold: float) -> bool:
    """Whether ``scores`` meet ``threshold`` on ``metric``. Never for a flat source (scores None), nor for an output
    whose depth does not rise with the source's anywhere (scale 0: reversed, or flat), which on a source spanning a
    narrow depth range scored AbsRel 0.06, delta1 1.0."""
    if metric not in METRICS:
        raise InputError(f"geometry metric must be one of {', '.join(METRICS)}, got {metric!r}")
    value = scores[metric]
    if value is None or not scores.get("scale", 1.0):
        return False
    return value <= threshold if METRICS[metric] == "lower" else value >= threshold
