"""Depth conventions against known answers."""

import numpy as np
import pytest
import torch

from depth2img import conditioning
from depth2img.depthmap import DepthMap
from depth2img.errors import InputError


def test_metric_depth_is_inverted_near_white():
    d = DepthMap(np.array([[1.0, 2.0], [4.0, 8.0]]), "metric_depth")
    # 1/d = 1, .5, .25, .125 -> min-max
    expected = (np.array([[1.0, 0.5], [0.25, 0.125]]) - 0.125) / 0.875
    np.testing.assert_allclose(d.normalized(), expected, atol=1e-6)
    assert d.normalized()[0, 0] == 1.0  # the nearest pixel is white


def test_normalized_is_made_once_and_read_only(monkeypatch):
    """An output's control image, 16-bit PNG and preview each normalised its depth again (in float64)."""
    calls, normalize = [], conditioning.normalize
    monkeypatch.setattr(conditioning, "normalize", lambda *a: calls.append(1) or normalize(*a))
    d = DepthMap(np.array([[1.0, 2.0], [4.0, 8.0]]), "metric_depth")
    d.control_pil, d.to_uint16(), d.normalized()
    assert len(calls) == 1 and not d.normalized().flags.writeable


def test_the_control_tensor_is_each_depths_control_image(rng):
    from depth2img.backends import Backend

    depths = [
        DepthMap(rng.uniform(1, 80, (12, 20)), "metric_depth"),
        DepthMap(rng.uniform(0, 1, (12, 20)), "disparity"),
    ]
    want = torch.stack([torch.from_numpy(d.control_image()).permute(2, 0, 1) for d in depths])
    got = Backend.control_tensor(depths)
    assert got.is_contiguous() and got.dtype == torch.float32 and torch.equal(got, want)


def test_relative_depth_is_reflected():
    d = DepthMap(np.array([[0.0, 1.0], [2.0, 3.0]]), "relative_depth")
    np.testing.assert_allclose(d.normalized(), [[1.0, 2 / 3], [1 / 3, 0.0]], atol=1e-6)


@pytest.mark.parametrize("kind", ["relative_inverse_depth", "disparity"])
def test_inverse_kinds_keep_polarity(kind):
    d = DepthMap(np.array([[10.0, 20.0], [30.0, 50.0]]), kind)
    np.testing.assert_allclose(d.normalized(), [[0.0, 0.25], [0.5, 1.0]], atol=1e-6)


def test_normalisation_is_per_image():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    alone = DepthMap(a, "relative_inverse_depth").normalized()
    # Another image with a huge outlier must not change this one (a batch-wide min-max would).
    other = DepthMap(np.array([[1.0, 2.0], [3.0, 1e6]]), "relative_inverse_depth")
    assert other.normalized()[0, 1] < 1e-5
    np.testing.assert_array_equal(DepthMap(a, "relative_inverse_depth").normalized(), alone)


def test_invalid_pixels_do_not_count_and_are_far():
    values = np.array([[1.0, 2.0], [3.0, 1e9]])
    valid = np.array([[True, True], [True, False]])
    d = DepthMap(values, "relative_inverse_depth", valid)
    np.testing.assert_allclose(d.normalized(), [[0.0, 0.5], [1.0, 0.0]], atol=1e-6)
    assert d.inverse()[1, 1] == 1.0  # filled with the farthest valid value


def test_constant_and_all_invalid_give_zeros_not_nan():
    assert np.array_equal(DepthMap(np.full((3, 4), 7.0), "metric_depth").normalized(), np.zeros((3, 4)))
    empty = DepthMap(np.ones((3, 4)), "metric_depth", np.zeros((3, 4), bool))
    assert np.array_equal(empty.normalized(), np.zeros((3, 4)))
    assert torch.equal(
        DepthMap(np.full((16, 16), 2.0), "disparity").sd2_depth(16, 16, 8), torch.zeros(1, 1, 2, 2)
    )


def test_control_image_shape_range_and_white_near():
    d = DepthMap(np.linspace(1, 10, 30 * 20).reshape(30, 20), "metric_depth")
    img = d.control_image()
    assert img.shape == (30, 20, 3) and img.dtype == np.float32
    assert img.min() == 0.0 and img.max() == 1.0
    assert np.all(img[0, 0] == 1.0) and np.all(img[-1, -1] == 0.0)
    resized = d.control_image(41, 17)
    assert resized.shape == (17, 41, 3) and 0 <= resized.min() and resized.max() <= 1


def test_sd2_conversion_equals_diffusers_prepare_depth_map(rng):
    from types import SimpleNamespace

    from diffusers import StableDiffusionDepth2ImgPipeline

    values = rng.uniform(0.5, 20.0, size=(72, 104)).astype(np.float32)
    d = DepthMap(values, "metric_depth")
    ours = d.sd2_depth(72, 104, 8)
    theirs = StableDiffusionDepth2ImgPipeline.prepare_depth_map(
        SimpleNamespace(vae_scale_factor=8), torch.zeros(1, 3, 72, 104),
        torch.from_numpy(d.inverse())[None], 1, False, torch.float32, torch.device("cpu"),
    )  # fmt: skip
    assert ours.shape == theirs.shape == (1, 1, 9, 13)
    assert (ours - theirs).abs().max().item() <= 1e-6
    assert ours.min().item() == -1.0 and ours.max().item() == 1.0


def test_bad_depth_arrays_are_refused():
    with pytest.raises(InputError, match="2-D"):
        DepthMap(np.zeros((2, 3, 4)), "metric_depth")
    with pytest.raises(InputError, match="NaN or infinite"):
        DepthMap(np.array([[1.0, np.nan]]), "metric_depth")
    with pytest.raises(InputError, match="kind must be one of"):
        DepthMap(np.ones((2, 2)), "depthish")
    with pytest.raises(ValueError, match="kind must be one of"):
        conditioning.to_inverse(np.ones((2, 2)), "nope")


def test_resize_keeps_range_and_mask_nearest():
    d = DepthMap(
        np.array([[0.0, 10.0], [10.0, 0.0]]) + 1, "metric_depth", np.array([[True, False], [True, True]])
    )
    r = d.resized(7, 5)
    assert r.values.shape == (5, 7) and r.valid.shape == (5, 7) and r.valid.dtype == bool
    assert r.values.min() >= 1.0 and r.values.max() <= 11.0
    assert not r.valid[0, -1] and r.valid[-1, 0]


def test_a_shrunk_mask_samples_each_pixels_centre():
    """On a 3x shrink the mask took each output pixel's top-left source pixel, while the values' resize is
    centred: a hole under an output pixel's centre was dropped, and the mask's edges moved by a pixel."""
    valid = np.ones((3, 9), bool)
    valid[:, 1] = False  # the centre column of output pixel 0
    valid[:, 6] = False  # the top-left column of output pixel 2, not its centre
    got = conditioning.resize_depth(valid, 1, 3, nearest=True)
    assert got.tolist() == [[False, True, True]]


@pytest.mark.parametrize("hole", ["zero", "nan"])
@pytest.mark.parametrize(
    "size", [(512, 384), (80, 60), (1280, 960)]
)  # shrink (area), odd shrink, enlarge (cubic)
def test_resizing_blends_no_hole_into_valid_pixels(hole, size):
    # A 10 m wall with a 5 m box and 5 % sensor dropouts: 0 = no measurement (read_depth_file's metric
    # convention), or NaN under a mask. The dropouts once blended into their neighbours at generation size, so
    # wall pixels came out nearer than the box (normalised 1.0 on the wall, 0.04 on the box).
    rng = np.random.default_rng(0)
    values = np.full((480, 640), 10.0)
    values[150:330, 200:440] = 5.0
    holes = rng.random(values.shape) < 0.05
    values[holes] = 0.0 if hole == "zero" else np.nan
    d = DepthMap(values, "metric_depth", None if hole == "zero" else ~holes)
    r = d.resized(*size)
    valid = r.valid
    w, h = size
    assert valid.mean() > 0.9 and valid.shape == (h, w)
    depth = r.values[valid]
    assert (
        depth.min() >= 5.0 - 1e-4 and depth.max() <= 10.0 + 1e-4
    )  # nothing nearer or farther than the scene
    n = r.normalized()
    box = np.zeros((h, w), bool)
    box[int(h * 0.35) : int(h * 0.65), int(w * 0.35) : int(w * 0.65)] = True  # well inside the box
    wall = np.zeros((h, w), bool)
    wall[: int(h * 0.25)] = True  # well outside it
    assert n[box & valid].min() == pytest.approx(1.0, abs=1e-4)
    assert n[wall & valid].max() == pytest.approx(0.0, abs=1e-4)
    assert r.control_image().shape == (h, w, 3)


def test_fill_unusable_takes_the_nearest_usable_value():
    values = np.array([[1.0, 0.0, 0.0, 0.0, 0.0, 7.0], [np.nan, np.nan, 0.0, 0.0, 0.0, 0.0]])
    usable = conditioning.usable(values, "metric_depth")
    np.testing.assert_array_equal(
        conditioning.fill_unusable(values, usable), [[1, 1, 1, 7, 7, 7], [1, 1, 1, 7, 7, 7]]
    )
    assert not conditioning.fill_unusable(values, np.zeros_like(usable)).any()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda d: d.resized(0, 10), r"^resized: width must be a whole number of pixels >= 1, got 0$"),
        (lambda d: d.resized(48.5, 32), r"^resized: width must be a whole number of pixels >= 1, got 48.5$"),
        (lambda d: d.resized(10, -5), r"^resized: height must be a whole number of pixels >= 1, got -5$"),
        # (cv2's "Insufficient memory", or the machine's)
        (
            lambda d: d.resized(10**6, 10**6),
            r"^resized: 1000000x1000000 is over the pixel limit \d+ \(DEPTH2IMG",
        ),
        (
            lambda d: d.control_image(48),
            r"^control_image: give both width and height or neither, got 48 and None$",
        ),
        (
            lambda d: DepthMap(np.array([["a"]]), "metric_depth"),
            r"^depth values must be real numbers, got dtype <U1$",
        ),
        (lambda d: DepthMap(np.ones((2, 2)) * 1j, "metric_depth"), "got dtype complex128"),
    ],
)
def test_depthmap_arguments_are_one_line(call, message):
    """From a Python user's review: raw cv2 and numpy errors, and complex values silently made real."""
    from depth2img.errors import InputError

    with pytest.raises(InputError, match=message):
        call(DepthMap(np.ones((8, 12)), "metric_depth"))
