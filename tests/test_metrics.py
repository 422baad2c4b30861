"""The geometry check against synthetic cases with known answers."""

import numpy as np
import pytest

from depth2img.depthmap import DepthMap
from depth2img.metrics import align_scale_shift, edge_f1, geometry_scores, passes
from depth2img.scene import render_driving_scene


@pytest.fixture(scope="module")
def scene_depth():
    return render_driving_scene(256, 128, seed=2).depth  # metric, with sharp object edges


def _inverse(depth):
    return DepthMap(depth.inverse(), "relative_inverse_depth", depth.valid)


def test_identical_is_perfect(scene_depth):
    s = geometry_scores(scene_depth, _inverse(scene_depth))
    assert s["absrel"] < 1e-6 and s["delta1"] == 1.0 and s["edge_f1"] == 1.0


def test_scaled_and_shifted_inverse_is_perfect(scene_depth):
    moved = DepthMap(3.7 * scene_depth.inverse() + 0.25, "relative_inverse_depth", scene_depth.valid)
    s = geometry_scores(scene_depth, moved)
    assert s["absrel"] < 1e-6 and s["delta1"] == 1.0 and s["edge_f1"] == 1.0
    assert s["scale"] == pytest.approx(1 / 3.7) and s["shift"] == pytest.approx(-0.25 / 3.7)


def test_swapped_near_and_far_is_no_fit(scene_depth):
    """A negative scale fitted a depth with near and far swapped perfectly (absrel 0, delta1 1): a job's geometry
    check accepted an output whose depth ran backwards."""
    inverse = scene_depth.inverse()
    reversed_ = geometry_scores(scene_depth, DepthMap(inverse.max() - inverse, "relative_inverse_depth"))
    flat = geometry_scores(scene_depth, DepthMap(np.ones_like(inverse), "relative_inverse_depth"))
    assert reversed_["scale"] == 0.0 and reversed_["absrel"] == pytest.approx(flat["absrel"], rel=1e-12)
    assert reversed_["delta1"] == flat["delta1"] < 0.5 and reversed_["absrel"] > 0.5
    assert reversed_["edge_f1"] == flat["edge_f1"] == 0.0  # a reversed map has the same edges: none are kept


def test_a_far_bright_source_is_read_as_depth(scene_depth):
    """A far-bright source (larger = farther, unknown scale and shift) was read as disparities, linear in depth where
    they are linear in 1/depth: a perfect output scored AbsRel 0.37 and delta1 0.38. It is read as depth spanning
    1:RELATIVE_DEPTH_RANGE, so a scene of that range scores perfect, whatever the file's scale and shift."""
    from depth2img.metrics import RELATIVE_DEPTH_RANGE

    z = np.where(scene_depth.valid, scene_depth.values, scene_depth.values[scene_depth.valid].max())
    z = np.clip(z, z.min(), RELATIVE_DEPTH_RANGE * z.min())
    s = geometry_scores(DepthMap(3 * z + 7, "relative_depth"), DepthMap(1 / z, "relative_inverse_depth"))
    assert s["absrel"] < 1e-6 and s["delta1"] == 1.0 and s["edge_f1"] == 1.0
    # a far-bright output is read the same way: against itself, or itself scaled and shifted, perfect (an output's
    # was read linearly: AbsRel 0.35, delta1 0.36)
    far_bright = DepthMap(3 * z + 7, "relative_depth")
    for output in (far_bright, DepthMap(2 * z + 3, "relative_depth")):
        s = geometry_scores(far_bright, output)
        assert s["absrel"] < 1e-6 and s["delta1"] == 1.0 and s["edge_f1"] == 1.0, s


def test_a_disparity_file_is_scored_as_disparity(tmp_path):
    """A .npz recording kind 'disparity' was read as a relative inverse depth: squeezed to 1:20, its 0s (no match)
    taken as the farthest depth, so a perfect output scored AbsRel 0.08."""
    from depth2img.io import read_depth_file

    rng = np.random.default_rng(0)
    disparity = rng.uniform(5, 60, (40, 60))
    disparity[rng.uniform(size=disparity.shape) < 0.1] = 0  # no match
    np.savez(tmp_path / "d.npz", depth=disparity, kind="disparity")
    source = read_depth_file(tmp_path / "d.npz")
    perfect = DepthMap(np.where(disparity > 0, disparity, 30.0), "disparity")  # an estimator has no holes
    s = geometry_scores(source, perfect)
    assert s["absrel"] < 1e-6 and s["delta1"] == 1.0, s


def test_relative_source_is_perfect_against_itself():
    rel = DepthMap(np.random.default_rng(0).uniform(0, 1, (40, 60)), "relative_inverse_depth")
    s = geometry_scores(rel, DepthMap(rel.values * 2 + 5, "relative_inverse_depth"))
    assert s["absrel"] < 1e-6 and s["delta1"] == 1.0


def test_blurred_loses_edges(scene_depth):
    import cv2

    blurred = DepthMap(cv2.GaussianBlur(scene_depth.inverse(), (0, 0), 6), "relative_inverse_depth")
    s = geometry_scores(scene_depth, blurred)
    assert s["edge_f1"] < 0.6 and s["absrel"] > 0.02


def test_shuffled_and_flipped_are_poor(scene_depth):
    rng = np.random.default_rng(0)
    inv = scene_depth.inverse()
    shuffled = DepthMap(rng.permutation(inv.ravel()).reshape(inv.shape), "relative_inverse_depth")
    flipped = DepthMap(inv[::-1].copy(), "relative_inverse_depth")
    for bad in (shuffled, flipped):
        s = geometry_scores(scene_depth, bad)
        assert s["delta1"] < 0.5 and s["absrel"] > 0.3 and s["edge_f1"] < 0.5


def test_align_recovers_known_scale_shift():
    pred = np.linspace(0, 1, 50).reshape(5, 10)
    aligned, s, t = align_scale_shift(pred, 2 * pred - 1, np.ones((5, 10), bool))
    assert s == pytest.approx(2) and t == pytest.approx(-1) and np.allclose(aligned, 2 * pred - 1)


@pytest.mark.parametrize("case", ["noisy", "masked", "constant"])
def test_align_equals_numpy_lstsq(case, rng):
    """The closed-form fit gives numpy's least-squares answer (a constant pred: lstsq's minimum-norm one)."""
    pred = rng.random((60, 80)) * 5 + 1
    target = 0.3 * pred + 0.2 + rng.normal(0, 0.05, pred.shape)
    mask = rng.random(pred.shape) > (0.5 if case == "masked" else 0.0)
    if case == "constant":
        pred = np.full_like(pred, 2.5)
    p, g = pred[mask], target[mask]
    (s_ref, t_ref), *_ = np.linalg.lstsq(np.stack([p, np.ones_like(p)], axis=1), g, rcond=None)
    aligned, s, t = align_scale_shift(pred, target, mask)
    assert s == pytest.approx(s_ref, rel=1e-10, abs=1e-12) and t == pytest.approx(t_ref, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(aligned, s_ref * pred + t_ref, rtol=1e-10)


def test_edge_f1_edge_cases():
    flat = np.zeros((20, 20))
    step = np.zeros((20, 20))
    step[:, 10:] = 1
    assert edge_f1(flat, flat) == 1.0 and edge_f1(step, flat) == 0.0 and edge_f1(step, step) == 1.0

    def step_at(col):
        out = np.zeros((20, 20))
        out[:, col:] = 1
        return out

    assert edge_f1(step, step_at(12)) == 1.0  # within the 2 px tolerance
    assert edge_f1(step, step_at(16)) == 0.0


@pytest.mark.parametrize("holes_in", ["source", "output"])
def test_the_border_of_a_hole_is_no_depth_edge(scene_depth, holes_in):
    """Holes normalise to 0, so each one's border looked like a depth edge: a perfect output of a source with 2 %
    sensor dropouts scored edge F1 0.70 (a job thresholding edge_f1 would reject and retry it)."""
    dropouts = np.random.default_rng(1).random(scene_depth.values.shape) < 0.02
    values = np.where(dropouts, 0.0, scene_depth.values)  # metric 0 = no measurement
    holed = DepthMap(values, "metric_depth", scene_depth.valid)
    clean = DepthMap(scene_depth.inverse(), "relative_inverse_depth", scene_depth.valid & ~dropouts)
    if holes_in == "source":
        s = geometry_scores(holed, _inverse(scene_depth))
    else:
        s = geometry_scores(scene_depth, clean)
    assert s["edge_f1"] == 1.0 and s["delta1"] == 1.0


def test_the_edge_tolerance_is_the_same_along_rows_and_columns():
    """OpenCV's 5x5 ellipse reached an offset of (1, 2) but not (2, 1): F1 of a map and of its transpose differed."""
    a = np.zeros((20, 20))
    a[5, 5] = a[14, 14] = 1.0  # two isolated bumps: their edges are small rings
    for dy, dx in ((1, 2), (2, 1), (2, 0), (0, 2)):
        b = np.roll(a, (dy, dx), axis=(0, 1))
        assert edge_f1(a, b) == edge_f1(a.T, b.T), (dy, dx)
    for offset in ((0, 2), (1, 2), (2, 1)):  # the old reach (1, 2) kept, (2, 1) added: matched
        assert edge_f1(a, np.roll(a, offset, axis=(0, 1))) == 1.0, offset


def test_passes():
    assert passes({"delta1": 0.9}, "delta1", 0.8) and not passes({"absrel": 0.3}, "absrel", 0.2)
    assert passes({"absrel": 0.05, "scale": 0.3}, "absrel", 0.1)
    # no fit rising with the source's depth (a reversed or flat output), or a flat source: never
    assert not passes({"absrel": 0.05, "scale": 0.0}, "absrel", 0.1)
    assert not passes({"delta1": None, "scale": None}, "delta1", 0.0)
    from depth2img.errors import InputError

    with pytest.raises(
        InputError, match="geometry metric must be one of absrel, delta1, edge_f1, got 'rmse'"
    ):
        passes({}, "rmse", 1)


def test_a_reversed_output_of_a_narrow_range_scene_fails_every_gate(scene_depth):
    """A scene spanning 10-13 m: a flat output's fit scored AbsRel 0.06, delta1 1.0, and a reversed output (fitted as
    flat) passed 'absrel <= 0.1' and 'delta1 >= 0.9' gates."""
    from depth2img.metrics import geometry_reference

    z = np.where(scene_depth.valid, scene_depth.values, scene_depth.values[scene_depth.valid].max())
    narrow = DepthMap(10 + 3 * (z - z.min()) / (z.max() - z.min()), "metric_depth")
    ref = geometry_reference(narrow)
    assert ref.flat_delta1 == 1.0 and not ref.flat
    inverse = 1 / narrow.values
    reversed_ = geometry_scores(ref, DepthMap(inverse.max() - inverse, "relative_inverse_depth"))
    assert reversed_["delta1"] == 1.0 and reversed_["absrel"] < 0.1  # what a flat output scores here
    assert not passes(reversed_, "delta1", 0.9) and not passes(reversed_, "absrel", 0.1)
    assert passes(geometry_scores(ref, DepthMap(inverse, "relative_inverse_depth")), "delta1", 0.9)
    constant = geometry_scores(ref, DepthMap(np.full_like(inverse, 0.5), "relative_inverse_depth"))
    assert (
        constant["scale"] == 0.0
        and not passes(constant, "delta1", 0.9)
        and not passes(constant, "absrel", 0.1)
    )
    # the usual scene: a flat output is far off
    assert geometry_reference(scene_depth).flat_delta1 < 0.5


@pytest.mark.parametrize("valid", ["all", "none"])
def test_a_flat_source_scores_none_and_passes_nothing(valid):
    """A constant source depth scored AbsRel 0, delta1 1 against any output, noise included: every gate passed."""
    from depth2img.metrics import geometry_reference

    source = DepthMap(np.full((20, 30), 4.0), "metric_depth", np.full((20, 30), valid == "all"))
    noise = DepthMap(np.random.default_rng(0).uniform(0.1, 1, (20, 30)), "relative_inverse_depth")
    assert geometry_reference(source).flat
    s = geometry_scores(source, noise)
    assert s == {"absrel": None, "delta1": None, "edge_f1": None, "scale": None, "shift": None}
    assert not any(passes(s, m, t) for m, t in (("absrel", 1e9), ("delta1", 0.0), ("edge_f1", 0.0)))


def test_a_stereo_disparity_source_scores_as_its_depth(scene_depth):
    """Disparity (f * B / d) is proportional to 1/d: it scores an output as the metric depth does (it was read as a
    relative map squeezed to 1:20: an unrelated scene's delta1 was 0.85 against 0.80), and 0 disparity (a point at
    infinity) is no depth to compare."""
    z = np.where(scene_depth.valid, scene_depth.values, np.inf)
    disparity = DepthMap(0.54 * 720 / z, "disparity")  # the sky: disparity 0
    other = render_driving_scene(256, 128, seed=5).depth
    for output in (_inverse(scene_depth), _inverse(other)):
        got, want = geometry_scores(disparity, output), geometry_scores(scene_depth, output)
        for k in ("absrel", "delta1", "edge_f1"):
            assert got[k] == pytest.approx(want[k], abs=1e-6), k
    # an output's holes likewise (0: no depth, < 0: no match): source and output swapped score alike (the output's
    # were compared: 0/1/1 one way, 0.27/0.64/0.51 the other)
    holed = np.where(np.arange(disparity.width) < 40, -1.0, disparity.values)
    full = DepthMap(np.where(disparity.values > 0, disparity.values, 1e-3), "disparity")
    there, back = (
        geometry_scores(DepthMap(holed, "disparity"), full),
        geometry_scores(full, DepthMap(holed, "disparity")),
    )
    assert there["delta1"] == back["delta1"] == 1 and back["absrel"] == pytest.approx(0, abs=1e-6)


def test_output_edges_are_normalised_over_the_pixels_compared(scene_depth):
    """The output's inverse depth was normalised over its own valid pixels, holes of the source included: a perfect
    output of a source whose nearest 5 % are holes scored edge F1 0.994."""
    scene = render_driving_scene(320, 160, seed=0).depth
    d, v = scene.values.astype(np.float64), scene.valid
    filled = np.where(v, d, d[v].max())
    near = filled < np.quantile(filled[v], 0.05)
    holed = DepthMap(np.where(near, 0, d), "metric_depth", v & ~near)
    assert geometry_scores(holed, DepthMap(1 / filled, "relative_inverse_depth"))["edge_f1"] == 1.0


@pytest.mark.parametrize("kind", ["metric_depth", "disparity", "relative_inverse_depth", "relative_depth"])
def test_source_edges_are_normalised_over_the_pixels_compared(kind):
    """A review of the geometry check (2026-11-28): the source's edges were found on its map stretched over its own
    valid pixels, the output's over only the pixels both share; an output missing the nearest 10 columns (a
    narrower range: gradients ~3x) found edges on smooth slopes, and a perfect output scored edge F1 0.625 (0.5 as
    relative depth), 1.0 with the holes in the source instead."""
    x = np.mgrid[0:64, 0:96][1]
    d = 1 + 19 * x / 95
    d[20:40, 30:50] = 3.0  # a box: the one true depth edge
    values = d if kind in ("metric_depth", "relative_depth") else 1 / d
    hole = x < 10
    full = DepthMap(values, kind)
    holed = DepthMap(np.where(hole, 0, values), kind, ~hole)
    for source, output in ((full, holed), (holed, full), (holed, holed)):
        assert geometry_scores(source, output)["edge_f1"] == 1.0


@pytest.mark.parametrize("kind", ["metric_depth", "disparity", "relative_inverse_depth", "relative_depth"])
def test_a_perfect_output_scores_perfect_whichever_map_has_holes(kind):
    """A review of the geometry check (2026-11-28): a far-bright (relative_depth) map was read as depths 1..20 over
    its own valid pixels, the source's over all of its own: with the nearest 10 columns holes in the output only,
    a perfect output scored AbsRel 0.18, delta1 0.59 (0.21 / 0.53 with the holes in the source only)."""
    x = np.mgrid[0:64, 0:96][1]
    d = 1 + 19 * x / 95
    d[20:40, 30:50] = 3.0
    values = d if kind in ("metric_depth", "relative_depth") else 1 / d
    hole = x < 10
    full = DepthMap(values, kind)
    holed = DepthMap(np.where(hole, 0, values), kind, ~hole)
    for source, output in ((full, holed), (holed, full), (holed, holed)):
        scores = geometry_scores(source, output)
        assert scores["absrel"] == pytest.approx(0, abs=1e-6) and scores["delta1"] == 1.0, scores


def test_scattered_holes_keep_edges_found_or_say_none_could_be():
    """A review of the geometry check (2026-11-28): a map averaged down (over 512 px) kept a pixel only where all it
    covered was valid; with 20 % scattered holes (a sparse LiDAR's) none was, no edge was found in either map, and an
    unrelated output scored edge F1 1.0. Where too few pixels have an all-valid window (a LiDAR's rows at full size),
    edge F1 is None."""
    h, w = 800, 1200
    y, x = np.mgrid[0:h, 0:w]
    box = np.where((abs(x - 600) < 200) & (abs(y - 500) < 150), 3.0, 20.0)
    moved = np.where((abs(x - 240) < 120) & (abs(y - 260) < 100), 3.0, 20.0)
    valid = np.random.default_rng(0).random((h, w)) >= 0.2
    source = DepthMap(np.where(valid, box, 0), "metric_depth", valid)
    assert geometry_scores(source, DepthMap(box, "metric_depth"))["edge_f1"] == 1.0
    assert geometry_scores(source, DepthMap(moved, "metric_depth"))["edge_f1"] == 0.0
    rows = np.zeros((200, 300), bool)
    rows[::2] = True
    small = box[350:550, 450:750]  # the box's corner
    scores = geometry_scores(
        DepthMap(np.where(rows, small, 0), "metric_depth", rows), DepthMap(small, "metric_depth")
    )
    assert scores["edge_f1"] is None and scores["delta1"] == 1.0


def test_edge_f1_refuses_maps_of_two_shapes():
    from depth2img.errors import InputError

    with pytest.raises(InputError, match=r"^edge_f1: .* one shape, got \(10, 10\) and \(12, 12\)$"):
        edge_f1(np.zeros((10, 10)), np.zeros((12, 12)))


@pytest.mark.parametrize("case", ["all valid", "source holes", "output holes", "metric source"])
def test_scores_equal_the_plain_formulas(case, rng):
    """The fast path (reference selection reused, AbsRel and delta1 from r = d_out / d_src) gives what the
    textbook formulas give on the same pixels."""
    from depth2img import conditioning
    from depth2img.metrics import geometry_reference

    h, w = 60, 80
    src_vals = rng.uniform(0.5, 30.0, (h, w)) if case == "metric source" else rng.uniform(0.1, 1.0, (h, w))
    src_valid = rng.random((h, w)) > (0.2 if case == "source holes" else 0.0)
    source = DepthMap(
        src_vals, "metric_depth" if case == "metric source" else "relative_inverse_depth", src_valid
    )
    out_vals = np.abs(rng.normal(0.5, 0.2, (h, w))) + 0.05
    output = DepthMap(
        out_vals, "relative_inverse_depth", rng.random((h, w)) > (0.3 if case == "output holes" else 0)
    )
    got = geometry_scores(geometry_reference(source), output)

    target = geometry_reference(source).target
    pred, pred_valid = conditioning.to_inverse(output.values, output.kind, output.valid)
    valid = source.valid & pred_valid & np.isfinite(source.values)
    aligned, s, t = align_scale_shift(pred, target, valid)
    if s < 0:  # a fit reversing near and far is none: flat (uncorrelated random maps land on either side)
        s, t = 0.0, target[valid].mean()
        aligned = np.full_like(aligned, t)
    aligned = np.maximum(aligned, target[valid].min())
    d_out, d_src = 1.0 / aligned[valid], 1.0 / target[valid]
    ratio = np.maximum(d_out / d_src, d_src / d_out)
    assert got["absrel"] == pytest.approx(np.mean(np.abs(d_out - d_src) / d_src), rel=1e-12)
    assert got["delta1"] == pytest.approx(np.mean(ratio < 1.25), abs=1e-12)
    assert (got["scale"], got["shift"]) == (pytest.approx(s, rel=1e-12), pytest.approx(t, rel=1e-12))


def test_to_inverse_never_writes_into_its_input(tmp_path):
    from depth2img import conditioning

    mapped = np.lib.format.open_memmap(tmp_path / "d.npy", mode="w+", dtype=np.float64, shape=(2, 2))
    mapped[:] = [
        [1.0, np.nan],
        [3.0, 4.0],
    ]  # np.load(..., mmap_mode="r+") of a user's .npy gives such an array
    for values in (
        np.array([[1.0, np.nan], [3.0, 4.0]]),
        np.array([[1.0, np.nan], [3.0, 4.0]], np.float32),
        mapped,
    ):
        for view in (values, values[:, :]):
            before = view.copy()
            inverse, valid = conditioning.to_inverse(view, "relative_inverse_depth")
            assert inverse[0, 1] == 1.0 and not valid[0, 1]  # the hole takes the farthest valid value
            np.testing.assert_array_equal(view, before)  # NaN where it was: the caller's array is untouched


def test_edges_are_found_on_large_maps_as_on_small_ones():
    """A review of large photos (2026-11-28): depth estimated at ~518 px and resized to 4000x3000 or 6000x4000 spread
    a step over ~10 px, under the per-pixel edge threshold: neither map had an edge, and an output whose box had moved
    scored edge F1 1.0, passing a gate on it. Edges are now looked for on maps averaged down to 512 px a side (its
    re-verification: lowering the threshold with the side instead counted a full-size source's 0.5 % noise as edges,
    and a perfect output scored 0.05)."""
    from depth2img.metrics import geometry_reference

    def low(x0):  # estimator-sized inverse depth: a ramp, and a box nearer than its surroundings
        a = np.tile(np.linspace(0, 1, 389, dtype=np.float32)[:, None], (1, 518))
        a[150:300, x0 : x0 + 100] += 0.3
        return DepthMap(a, "relative_inverse_depth")

    for size in [(518, 389), (2000, 1502), (6000, 4000)]:
        source = low(60).resized(*size)
        assert geometry_reference(source).edges.any(), size
        assert geometry_scores(source, low(350).resized(*size))["edge_f1"] == 0.0, size
        assert geometry_scores(source, low(62).resized(*size))["edge_f1"] > 0.95, size  # 2 px at 518: kept
        noise = np.random.default_rng(0).normal(0, 0.005, source.values.shape)
        noisy = (source.values + noise).astype(np.float32)
        assert geometry_scores(DepthMap(noisy, source.kind), source)["edge_f1"] > 0.95, size
