"""Image and depth-file reading: conversions, full precision, and one clear line for every bad input."""

import errno
import re
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from depth2img import io
from depth2img.depthmap import DepthMap
from depth2img.errors import InputError


def test_mode_conversions(tmp_path, chelsea):
    chelsea.convert("CMYK").save(tmp_path / "cmyk.jpg")
    chelsea.convert("P").save(tmp_path / "pal.png")
    rgba = chelsea.convert("RGBA")
    rgba.putalpha(0)
    rgba.save(tmp_path / "clear.png")
    for name in ("cmyk.jpg", "pal.png", "clear.png"):
        img = io.load_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == chelsea.size
    assert np.all(np.asarray(io.load_image(tmp_path / "clear.png")) == 255)  # transparent -> white


def test_16bit_grey_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.array([0, 257, 32896, 65535], np.uint16), (16, 4))
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    rgb = np.asarray(io.load_image(tmp_path / "g16.png"))
    assert rgb.shape == (16, 16, 3)
    assert list(rgb[0, :4, 0]) == [0, 1, 128, 255]


@pytest.mark.parametrize(
    "values, mode",
    [(np.array([0, 2**18, 2**19, 2**20], np.int32), "I"), (np.array([0, 250, 500, 1000], np.float32), "F")],
)
def test_32_bit_grey_past_its_assumed_range_is_scaled_by_its_peak(values, mode):
    """Over 65535 (mode I) or 255 (mode F) three quarters of a ramp came out white."""
    rgb = np.asarray(io.to_rgb(Image.fromarray(np.tile(values, (16, 4)), mode)))
    assert list(rgb[0, :4, 0]) == [0, 64, 128, 255]


def test_premultiplied_grey_alpha_converts():
    """Mode La (premultiplied): Pillow converts it to LA only, so the conversion to RGBA raised a ValueError."""
    img = Image.new("LA", (16, 16), (200, 255)).convert("La")
    assert np.asarray(io.to_rgb(img))[0, 0].tolist() == [200, 200, 200]


def test_exif_rotation_is_honoured(tmp_path, chelsea):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    chelsea.save(tmp_path / "rot.jpg", exif=exif)
    assert io.load_image(tmp_path / "rot.jpg").size == (chelsea.height, chelsea.width)
    # the size a depth file must fit, from the header alone: the same as load_image's
    assert io.header_size(tmp_path / "rot.jpg") == (chelsea.height, chelsea.width)
    for suffix in (
        ".tif",
        ".png",
        ".webp",
        ".avif",
    ):  # Pillow's TIFF reader turns the size itself: it was turned twice
        chelsea.save(
            tmp_path / f"rot{suffix}", exif=exif.tobytes()
        )  # (Pillow's AVIF writer drops it from an Exif)
        assert io.header_size(tmp_path / f"rot{suffix}") == io.load_image(tmp_path / f"rot{suffix}").size
        assert io.load_image(tmp_path / f"rot{suffix}").size == (chelsea.height, chelsea.width)
    # a one-channel TIFF turned a quarter: Pillow gave it back unturned, its pixels scrambled (a photo and a depth
    # from it, misaligned without a word); refused. Half-turned it reads right.
    grey = np.asarray(chelsea.convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey.tif", exif=exif)
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.tif", exif=exif)
    with pytest.raises(InputError, match=r"grey.tif: Pillow misreads this TIFF's EXIF orientation \(it comes back "
                                         r"451x300, not 300x451, its pixels scrambled\); save it upright"):  # fmt: skip
        io.load_image(tmp_path / "grey.tif")
    with pytest.raises(InputError, match="grey16.tif: Pillow misreads this TIFF's EXIF orientation"):
        io.read_depth_file(tmp_path / "grey16.tif", "near-bright")
    # a depth PNG stored turned, with the EXIF orientation that shows it upright: read upright, as the photo is (it
    # was read as stored)
    from PIL import ImageOps

    from depth2img.io import UPRIGHT

    upright = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100
    for orientation, method in {2: 0, 3: 3, 4: 1, 5: 5, 6: 2, 7: 6, 8: 4}.items():  # the inverse turns
        stored = np.asarray(Image.fromarray(upright.astype(np.int32), "I").transpose(Image.Transpose(method)))
        exif[0x0112] = orientation
        assert np.array_equal(UPRIGHT[orientation](stored), upright), orientation
        Image.fromarray(stored.astype(np.uint16)).save(tmp_path / "d.png", exif=exif)
        got = io.read_depth_file(tmp_path / "d.png", "near-bright").values
        assert np.array_equal(got, upright.astype(np.float32)), orientation
        assert np.array_equal(np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "d.png"))), upright)
    exif[0x0112] = 3
    Image.fromarray(grey).save(tmp_path / "grey180.tif", exif=exif)
    assert np.array_equal(np.asarray(io.load_image(tmp_path / "grey180.tif"))[..., 0], grey[::-1, ::-1])
    chelsea.save(tmp_path / "plain.jpg")
    assert io.header_size(tmp_path / "plain.jpg") == chelsea.size
    (tmp_path / "text.jpg").write_text("hello")
    assert io.header_size(tmp_path / "text.jpg") is None and io.header_size(tmp_path / "gone.jpg") is None


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("zero.png", lambda p: p.write_bytes(b""), "empty file"),
        ("noise.png", lambda p: p.write_bytes(np.random.default_rng(1).bytes(2000)), "not a readable image"),
        ("text.jpg", lambda p: p.write_text("hello"), "not a readable image"),
        ("tiny.png", lambda p: Image.new("RGB", (1, 1)).save(p), "too small"),
        (
            "strip.png",
            lambda p: Image.new("RGB", (1700, 100)).save(p),
            r"1700x100 is too elongated \(the longer side must be at most 16x the shorter\)",
        ),
    ],
)
def test_bad_images_one_line(tmp_path, name, make, message):
    make(tmp_path / name)
    with pytest.raises(InputError, match=message) as err:
        io.load_image(tmp_path / name)
    assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)


def test_images_given_to_the_api_are_checked_the_same_way():
    assert io.check_image(Image.new("L", (1600, 100))).size == (
        1600,
        100,
    )  # 16:1 is allowed, either way round
    assert io.check_image(Image.new("L", (100, 1600))).size == (100, 1600)
    for size, message in [((16, 257), "16x257 is too elongated"), ((15, 15), "15x15 is too small")]:
        with pytest.raises(InputError, match=f"^photo: {message}"):
            io.check_image(Image.new("RGB", size), "photo")


def test_truncated_image(tmp_path, chelsea):
    chelsea.save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt"):
        io.load_image(tmp_path / "cut.jpg")


def test_decompression_bomb_refused_before_decoding(tmp_path):
    Image.new("L", (3000, 2000)).save(tmp_path / "big.png")
    with pytest.raises(InputError, match="over the 1,000,000-pixel limit"):
        io.load_image(tmp_path / "big.png", max_pixels=1_000_000)


def test_pillows_own_bomb_guard_names_the_size_and_the_setting(tmp_path, monkeypatch):
    """Pillow's guard (its limit under ours) named neither the image's size nor DEPTH2IMG_MAX_PIXELS."""
    Image.new("L", (60, 50)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # stands for Pillow's 89.5 MP
    for pillow_limit in (1000, 2000):  # over 2x its limit Pillow raises, between 1x and 2x it warns
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
        with pytest.raises(InputError, match=r"big.png: 3,000 pixels, over the 500-pixel limit \(decompression-bomb "
                           r"guard; raise DEPTH2IMG_MAX_PIXELS to allow it\)$"):  # fmt: skip
            io.load_image(tmp_path / "big.png", max_pixels=500)


def test_header_size_reads_what_the_pixel_limit_allows_and_warns_of_nothing(tmp_path, monkeypatch):
    """Over Pillow's own guard (scaled down here as above) header_size printed Pillow's warning, and past twice it
    gave None (so the --depth check was skipped) even where DEPTH2IMG_MAX_PIXELS allowed the image."""
    Image.new("L", (60, 50)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setenv("DEPTH2IMG_MAX_PIXELS", "5000")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert io.header_size(tmp_path / "big.png") == (60, 50)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setenv("DEPTH2IMG_MAX_PIXELS", "500")  # over ours: load_image refuses it, and says so
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert io.header_size(tmp_path / "big.png") is None


def test_a_bad_pixel_limit_setting_is_one_line(tmp_path, monkeypatch, chelsea):
    chelsea.save(tmp_path / "c.png")
    for bad in ("abc", "\u00b2"):  # '²' passes str.isdigit, not int()
        monkeypatch.setenv("DEPTH2IMG_MAX_PIXELS", bad)
        with pytest.raises(InputError, match=f"^DEPTH2IMG_MAX_PIXELS must be an integer >= 1, got '{bad}'$"):
            io.load_image(tmp_path / "c.png")
    monkeypatch.setenv("DEPTH2IMG_MAX_PIXELS", "100000")
    with pytest.raises(InputError, match="is 135,300 pixels, over the 100,000-pixel limit"):
        io.load_image(tmp_path / "c.png")
    with pytest.raises(InputError, match="over the 100,000-pixel limit"):
        io.read_depth_file(tmp_path / "c.png", "near-bright")


def test_expand_inputs(tmp_path, chelsea):
    (tmp_path / "d").mkdir()
    chelsea.save(tmp_path / "d" / "b.png")
    chelsea.save(tmp_path / "d" / "a.jpg")
    (tmp_path / "d" / "notes.txt").write_text("x")
    paths, problems = io.expand_inputs(
        [str(tmp_path / "d"), str(tmp_path / "d" / "*.png"), str(tmp_path / "nope.png")]
    )
    assert [p.name for p in paths] == ["a.jpg", "b.png"]  # directory sorted, glob duplicate dropped
    assert problems == [f"{tmp_path / 'nope.png'}: no such file or directory"]


# ------------------------------------------------------------------------------------------ depth files


def test_png16_round_trip_is_exact(tmp_path, rng):
    d = DepthMap(rng.uniform(1, 80, size=(37, 53)), "metric_depth")
    io.write_depth_png16(d, tmp_path / "d.png")
    raw = np.asarray(Image.open(tmp_path / "d.png"))
    assert raw.dtype == np.uint16 and raw.min() == 0 and raw.max() == 65535
    np.testing.assert_array_equal(raw, d.to_uint16())
    back = io.read_depth_file(tmp_path / "d.png")  # polarity comes from the file's text chunk
    assert back.kind == "relative_inverse_depth"
    np.testing.assert_allclose(back.normalized(), d.normalized(), atol=0.5 / 65535 + 1e-7)
    assert len(np.unique(back.values)) > 256  # never squeezed through 8 bits


def test_png16_of_a_depth_with_holes_keeps_them(tmp_path, rng):
    """Holes were written as 0, the code of the farthest depth, and read back as valid: a geometry check of the file
    scored them as far depth (a perfect output: delta1 0.96, edge F1 0.11)."""
    values = rng.uniform(1, 80, size=(37, 53))
    values[rng.uniform(size=values.shape) < 0.05] = 0  # sensor dropouts
    d = DepthMap(values, "metric_depth", values > 0)
    io.write_depth_png16(d, tmp_path / "d.png")
    png = Image.open(tmp_path / "d.png")
    raw = np.asarray(png)
    assert png.info[io.INVALID_TEXT_KEY] == "0" and (raw == 0).sum() == (values == 0).sum()
    assert raw[values > 0].min() == 1 and raw.max() == 65535  # the farthest depth is 1, no longer 0
    back = io.read_depth_file(tmp_path / "d.png")
    np.testing.assert_array_equal(back.valid, values > 0)
    np.testing.assert_allclose(
        back.normalized()[back.valid], d.normalized()[d.valid], atol=0.5 / 65534 + 1e-7
    )
    np.testing.assert_array_equal(
        back.control_image(), io.read_depth_file(tmp_path / "d.png").control_image()
    )
    # a depth with no hole is written as before, with no such chunk (test_png16_round_trip_is_exact)
    io.write_depth_png16(DepthMap(values + 1, "metric_depth"), tmp_path / "full.png")
    assert io.INVALID_TEXT_KEY not in Image.open(tmp_path / "full.png").info


def test_npy_of_a_depth_with_holes_keeps_them(tmp_path):
    """A hole's placeholder was written as it was (the rendered scene's sky: 300 m) and read back as a measurement,
    where the 16-bit PNG beside it kept it a hole."""
    from depth2img import render_driving_scene

    d = render_driving_scene(160, 80, seed=0).depth
    assert d.kind == "metric_depth" and 0.05 < (~d.valid).mean() < 0.5 and d.values[~d.valid].min() > 0
    written = io.write_depth_products(d, tmp_path, "s", formats=("npy", "png16"))
    raw = np.load(written[0])
    assert raw.dtype == np.float32 and (raw[~d.valid] == 0).all()
    np.testing.assert_array_equal(
        raw[d.valid], d.values[d.valid].astype(np.float32)
    )  # the values, as they were
    for back in (io.read_depth_file(written[0], "metric"), io.read_depth_file(written[1])):
        np.testing.assert_array_equal(back.valid, d.valid)
    # other kinds have no mark of a hole: 0 was a far-bright depth's nearest value, read back as a near surface
    values = np.linspace(1, 2, 12).reshape(3, 4)
    for kind in ("relative_inverse_depth", "relative_depth", "disparity"):
        holed = DepthMap(values, kind, values < 1.9)
        np.testing.assert_array_equal(
            np.load(io.write_depth_npy(holed, tmp_path / "f.npy")), values.astype("f4")
        )


@pytest.mark.parametrize("holes", [False, True])
def test_png16_of_a_far_bright_depth_reads_back_as_that_depth(tmp_path, holes):
    """A far-bright depth's 16-bit PNG (its reflection, near-bright: what conditioned the model) was read back as a
    near-bright map, which the geometry scores read otherwise: a perfect output scored AbsRel 0.35 against the PNG
    and 0 against the far-bright file it came from."""
    from depth2img.metrics import geometry_scores

    yy, xx = np.mgrid[0:64, 0:96]
    d = 1.0 + 19.0 * yy / 63.0 + 0 * xx  # 1..20 m down the frame
    d[20:40, 30:60] = 2.0  # a near box
    valid = np.ones(d.shape, bool)
    if holes:
        valid[:4] = False
    far = DepthMap(d, "relative_depth", valid)
    io.write_depth_png16(far, tmp_path / "d.png")
    back = io.read_depth_file(tmp_path / "d.png")
    assert back.kind == "relative_depth" and back.meta["polarity"] == "far-bright"
    np.testing.assert_array_equal(back.valid, valid)
    # the control image as before (reflected twice), within 16-bit rounding
    np.testing.assert_allclose(back.control_image(), far.control_image(), atol=1.5 / 65535)
    # scored as the far-bright depth itself is (perfect where it spans 1:20, as without holes)
    perfect = DepthMap(1.0 / d, "relative_inverse_depth")
    s, own = geometry_scores(back, perfect), geometry_scores(far, perfect)
    assert abs(s["absrel"] - own["absrel"]) < 1e-3 and abs(s["delta1"] - own["delta1"]) < 1e-3, (s, own)
    assert holes or (s["absrel"] < 1e-3 and s["delta1"] == 1.0 and s["edge_f1"] == 1.0)


@pytest.mark.parametrize("holes", [False, True])
def test_png16_of_stereo_disparity_reads_back_as_that_disparity(tmp_path, holes):
    """A review of the geometry check (2026-11-28): `depth --right` wrote its 16-bit PNG recording only near-bright,
    and it read back as a relative inverse depth, which the scores read otherwise (skimage's motorcycle pair: AbsRel
    0.0869 / delta1 0.9348 against the PNG, 0.0993 / 0.9169 against the disparity it came from)."""
    from PIL import PngImagePlugin

    from depth2img.metrics import geometry_scores

    yy, xx = np.mgrid[0:64, 0:96]
    # 0.5..60 px, a range of 1:120 (not the 1:20 a relative map is read as)
    disparity = 0.5 + 59.5 * yy / 63.0 + 0 * xx
    disparity[20:40, 30:60] = 45.0  # a near box
    valid = np.ones(disparity.shape, bool)
    if holes:
        valid[:, :4] = False  # unmatched
    d = DepthMap(disparity, "disparity", valid)
    io.write_depth_png16(d, tmp_path / "d.png")
    back = io.read_depth_file(tmp_path / "d.png")
    assert back.kind == "disparity" and back.meta["polarity"] == "near-bright"
    np.testing.assert_array_equal(back.valid, valid)
    step = 59.5 / (65534 if holes else 65535)
    np.testing.assert_allclose(back.values[valid], disparity[valid], atol=0.5 * step + 1e-5)
    # scored as the disparity itself is
    output = DepthMap(1.0 / (disparity + 3.0 * (xx > 50)), "relative_inverse_depth")
    s, own = geometry_scores(back, output), geometry_scores(d, output)
    for k in ("absrel", "delta1", "edge_f1"):
        assert s[k] == pytest.approx(own[k], abs=1e-4), k
    # a range chunk that is not two numbers (lowest <= highest) is one line naming the file
    png = Image.open(tmp_path / "d.png")
    info = PngImagePlugin.PngInfo()
    for key in (io.KIND_TEXT_KEY, io.FROM_TEXT_KEY):
        info.add_text(key, png.info[key])
    info.add_text(io.RANGE_TEXT_KEY, "60 0.5")
    png.save(tmp_path / "bad.png", pnginfo=info)
    with pytest.raises(InputError, match=r"bad\.png: the file records disparity, .* got '60 0\.5'$"):
        io.read_depth_file(tmp_path / "bad.png")


def test_a_recorded_polarity_beats_a_given_one_with_a_warning(tmp_path, rng):
    """One --depth-polarity serves every --depth file of a run: it silently inverted depth2img's own PNGs, which
    record theirs, when given for the run's other files."""
    from depth2img.errors import Depth2ImgWarning

    d = DepthMap(rng.uniform(1, 80, size=(12, 10)), "metric_depth")
    io.write_depth_png16(d, tmp_path / "d.png")
    with pytest.warns(Depth2ImgWarning, match=r"d.png: the file records its depth as near-bright, which it keeps; "
                      r"the polarity given \(far-bright\) is for files that record none$"):  # fmt: skip
        back = io.read_depth_file(tmp_path / "d.png", "far-bright")
    assert back.kind == "relative_inverse_depth" and back.meta["polarity"] == "near-bright"
    np.testing.assert_allclose(back.normalized(), d.normalized(), atol=0.5 / 65535 + 1e-7)
    np.savez(tmp_path / "k.npz", depth=d.values, kind="metric_depth")  # a DepthMap kind names it too
    assert io.read_depth_file(tmp_path / "k.npz").kind == "metric_depth"
    np.savez(
        tmp_path / "s.npz", depth=d.values, kind="disparity"
    )  # stereo disparity: near-bright, kept as it is
    back = io.read_depth_file(tmp_path / "s.npz")
    assert back.kind == "disparity" and back.meta["polarity"] == "near-bright"
    np.testing.assert_array_equal(back.values, d.values.astype("f4"))
    np.savez(tmp_path / "t.npz", depth=d.values, kind="metric_depth ")  # a typo: refused, not overridden
    for given in (None, "near-bright"):
        with pytest.raises(InputError, match=r"t.npz: the file records its depth as 'metric_depth ', which is none "
                           r"of near-bright, far-bright, metric \(or relative_inverse_depth, "):  # fmt: skip
            io.read_depth_file(tmp_path / "t.npz", given)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert io.read_depth_file(tmp_path / "d.png", "near-bright").kind == "relative_inverse_depth"


def test_an_npz_valid_mask_marks_the_holes(tmp_path):
    """An .npz's 'valid' array was ignored, silently: a far-bright depth had no way to mark its holes (its 0 is the
    nearest depth), which then scored as the nearest pixels (AbsRel 0.895 for a perfect output)."""
    from depth2img import geometry_scores

    y, x = np.mgrid[0:48, 0:64]
    far_bright = (2 + 18 * x / 63).astype(np.float32)
    holed, valid = far_bright.copy(), np.ones(far_bright.shape, bool)
    holed[:8], valid[:8] = np.nan, False
    np.savez(tmp_path / "d.npz", depth=holed, valid=valid, kind="far-bright")
    depth = io.read_depth_file(tmp_path / "d.npz")
    assert (depth.valid == valid).all() and np.isfinite(depth.values).all() and depth.kind == "relative_depth"
    scores = geometry_scores(depth, DepthMap(far_bright, "relative_depth"))
    assert scores["absrel"] == pytest.approx(0, abs=1e-6) and scores["delta1"] == 1
    # a metric depth's negative value at a hole is no depth; a mask of another shape or of other values is refused
    holed[:8] = -1
    np.savez(tmp_path / "m.npz", depth=holed, valid=valid.astype(np.uint8), kind="metric")
    assert (io.read_depth_file(tmp_path / "m.npz").valid == valid).all()
    for bad in (valid[:, :10], valid * 0.5):
        np.savez(tmp_path / "b.npz", depth=holed, valid=bad, kind="metric")
        with pytest.raises(
            InputError, match=r"b\.npz: 'valid' must be a mask of the depth's shape \(48, 64\)"
        ):
            io.read_depth_file(tmp_path / "b.npz")


def test_npy_round_trip_raw(tmp_path, rng):
    d = DepthMap(rng.uniform(1, 80, size=(20, 30)), "metric_depth")
    io.write_depth_npy(d, tmp_path / "d.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), d.values)
    back = io.read_depth_file(tmp_path / "d.npy", "metric")
    np.testing.assert_array_equal(back.values, d.values)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="POSIX file size limit")
def test_an_npy_that_does_not_fit_fails_with_its_errno(tmp_path):
    """NumPy writes a file with tofile, whose OSError has no errno ("6144 requested and 3040 written"): a full disk
    was not seen as one (the run went on, failing every later input). The limit stands in for a full disk."""
    import resource

    depth = DepthMap(np.ones((64, 96)), "metric_depth")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit: EFBIG, not the signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OSError) as failed:
            io.write_depth_npy(depth, tmp_path / "d.npy")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert failed.value.errno == errno.EFBIG and list(tmp_path.iterdir()) == []


def test_user_depth_formats_and_polarity(tmp_path, monkeypatch):
    far_bright = np.tile(np.arange(32, dtype=np.uint8) * 8, (16, 1))
    Image.fromarray(far_bright).save(tmp_path / "d8.png")
    d = io.read_depth_file(tmp_path / "d8.png", "far-bright")
    assert d.normalized()[0, 0] == 1.0 and d.normalized()[0, -1] == 0.0
    near = io.read_depth_file(tmp_path / "d8.png", "near-bright")
    assert near.normalized()[0, -1] == 1.0
    Image.fromarray(np.full((16, 16), 2.5, np.float32), "F").save(tmp_path / "d.tif")
    assert io.read_depth_file(tmp_path / "d.tif", "metric").values[0, 0] == 2.5
    # unsigned 32-bit (Pillow opens it as signed: 4e9 came back as -294967296), and signed 32-bit as written
    import tifffile

    tifffile.imwrite(tmp_path / "u32.tif", np.tile(np.array([1, 4_000_000_000], np.uint32), (16, 8)))
    assert io.read_depth_file(tmp_path / "u32.tif", "metric").values[0, :2].tolist() == [1, 4e9]
    Image.fromarray(np.tile(np.array([-5, 7], np.int32), (16, 8)), "I").save(tmp_path / "i32.tif")
    with pytest.raises(InputError, match="negative"):
        io.read_depth_file(tmp_path / "i32.tif", "metric")
    # float64 (numpy's default float, which Pillow cannot open: "not a readable image"), grey in one or three planes
    ramp = np.tile(np.array([1.5, 80.25]), (16, 8))
    tifffile.imwrite(tmp_path / "f64.tif", ramp)
    tifffile.imwrite(tmp_path / "f64x3.tif", np.dstack([ramp] * 3))
    for name in ("f64.tif", "f64x3.tif"):
        assert io.read_depth_file(tmp_path / name, "metric").values[0, :2].tolist() == [1.5, 80.25]
    tifffile.imwrite(tmp_path / "f64rgb.tif", np.dstack([ramp, ramp, ramp * 2]))
    with pytest.raises(InputError, match="f64rgb.tif: a colour image is not a depth map"):
        io.read_depth_file(tmp_path / "f64rgb.tif", "metric")
    # signed 8-bit, read as unsigned: -4..-1 came back as 252..255, the farthest as the nearest
    tifffile.imwrite(tmp_path / "i8.tif", np.tile(np.array([-4, -1, 0, 3], np.int8), (8, 2)))
    assert io.read_depth_file(tmp_path / "i8.tif", "near-bright").values[0, :4].tolist() == [-4, -1, 0, 3]
    # grey in a 16-bit colour TIFF that OpenCV fails on (turned by EXIF orientation 6): it was read at 8 bits
    wide = np.repeat(np.tile(np.arange(0, 65535, 2048, dtype=np.uint16), (8, 1))[..., None], 3, 2)
    tifffile.imwrite(tmp_path / "rgb16.tif", wide, photometric="rgb", extratags=[(274, "H", 1, 6, True)])
    with pytest.raises(
        InputError, match="rgb16.tif: a 16-bit colour image that cannot be read at its full precision"
    ):
        io.read_depth_file(tmp_path / "rgb16.tif", "near-bright")
    monkeypatch.setenv("DEPTH2IMG_MAX_PIXELS", "255")  # the pixel limit holds for it too, from its header
    monkeypatch.setattr(io, "_opencv_read", lambda path: pytest.fail(f"{path} was decoded"))
    with pytest.raises(InputError, match=r"f64.tif: .*16x16 is 256 pixels"):
        io.read_depth_file(tmp_path / "f64.tif", "metric")
    kitti = np.array([[0, 256 * 10], [256 * 5, 256 * 20]], np.uint16)  # KITTI: metres * 256, 0 = no return
    Image.fromarray(kitti).save(tmp_path / "k.png")
    k = io.read_depth_file(tmp_path / "k.png", "metric", depth_scale=1 / 256)
    assert k.values[0, 1] == 10.0 and not k.valid[0, 0]
    np.savez(tmp_path / "d.npz", depth=np.ones((4, 4)) * 3, kind="metric")
    assert io.read_depth_file(tmp_path / "d.npz").kind == "metric_depth"


@pytest.mark.parametrize(
    "name, make, polarity, message",
    [
        (
            "amb.png",
            lambda p: Image.fromarray(np.zeros((8, 8), np.uint8)).save(p),
            None,
            "does not say which way",
        ),
        (
            "nan.npy",
            lambda p: np.save(p, np.array([[1.0, np.nan]])),
            "metric",
            "1 depth values are NaN or infinite",
        ),
        # 0 marks a hole in metric depth only: the advice to use it made a far-bright file's holes its nearest pixels
        (
            "inf.npy",
            lambda p: np.save(p, np.array([[1.0, np.inf]])),
            "near-bright",
            r"NaN or infinite; in metric depth mark missing pixels as 0 \(no measurement\); in the other polarities 0 "
            r"is a depth \(the nearest far-bright one\): give an \.npz with a 'valid' mask, or a DepthMap with one$",
        ),
        ("neg.npy", lambda p: np.save(p, np.array([[1.0, -2.0]])), "metric", "negative"),
        ("cube.npy", lambda p: np.save(p, np.zeros((2, 3, 4))), "metric", "2-D array"),
        (
            "colour.png",
            lambda p: Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), np.uint8)).save(p),
            "near-bright",
            "colour image is not a depth map",
        ),  # fmt: skip
        ("d.jpg", lambda p: p.write_bytes(b"x"), "metric", "depth files must be one of"),
        # NumPy's advice to load it unsafely (with allow_pickle) is no message for a web visitor
        (
            "pickle.npy",
            lambda p: np.save(p, np.array([{"a": 1}], dtype=object)),
            "metric",
            r"not a readable NumPy file \(an array of Python objects, which is never loaded \(loading runs code\)\)$",
        ),
        (
            "text.npy",
            lambda p: p.write_bytes(b"nope"),
            "metric",
            r"\(no NumPy array header: is it a \.npy file\?\)$",
        ),
        (
            "junk.npz",
            lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 40),
            "metric",
            "not a readable NumPy file",
        ),
        ("cut.npz", lambda p: _cut_npz(p), "metric", "not a readable NumPy file"),
        # a header whose dict is cut open: NumPy's tokenizer raised, an internal error
        ("open.npy", lambda p: _open_header(p), "metric", r"not a readable NumPy file \(.*EOF in multi-line"),
        (
            "obj.npz",
            lambda p: np.savez(p, depth=np.array([{"a": 1}], dtype=object)),
            "metric",
            r"member unreadable \(an array of Python objects, which is never loaded",
        ),
        ("huge.npy", lambda p: np.save(p, np.full((2, 2), 1e39)), "metric", "beyond float32's range"),
        (
            "two.npz",
            lambda p: np.savez(p, a=np.ones((2, 2)), b=np.ones((2, 2))),
            "metric",
            r"found \['a', 'b'\]",
        ),
    ],
)
def test_bad_depth_files(tmp_path, name, make, polarity, message):
    make(tmp_path / name)
    with pytest.raises(InputError, match=message) as err:
        io.read_depth_file(tmp_path / name, polarity)
    assert "\n" not in str(err.value) and str(tmp_path / name) in str(err.value)


def _open_header(path):
    np.save(path, np.ones((4, 6), np.float32))
    data = path.read_bytes()
    length = int.from_bytes(data[8:10], "little")
    header = data[10 : 10 + length].decode("latin1").replace("(4, 6), }", "(4, 6    ")
    path.write_bytes(data[:10] + header.encode("latin1") + data[10 + length :])


def _cut_npz(path):
    np.savez_compressed(path, depth=np.random.default_rng(0).random((64, 64)))
    path.write_bytes(path.read_bytes()[:-200])  # its central directory gone


def test_depth_too_large_for_float32_after_scaling(tmp_path):
    np.save(tmp_path / "d.npy", np.full((2, 2), 1e30))
    with pytest.raises(InputError, match=r"depth scale 1e\+10 takes depth values beyond float32's range"):
        io.read_depth_file(tmp_path / "d.npy", "metric", depth_scale=1e10)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grey_stored_as_colour_keeps_16_bits(tmp_path, suffix):
    """Pillow opens a 48-bit PNG or TIFF at 8 bits a channel: a grey depth saved by OpenCV as three equal 16-bit
    channels read back as 2 levels instead of 256."""
    import cv2

    levels = (1000 + np.arange(256, dtype=np.uint16)).reshape(16, 16)
    cv2.imwrite(str(tmp_path / f"g{suffix}"), np.dstack([levels] * 3))
    d = io.read_depth_file(tmp_path / f"g{suffix}", "near-bright")
    np.testing.assert_array_equal(d.values, levels)
    tinted = np.dstack([levels, levels, levels + 1])
    cv2.imwrite(str(tmp_path / f"c{suffix}"), tinted)
    with pytest.raises(InputError, match="colour image is not a depth map"):
        io.read_depth_file(tmp_path / f"c{suffix}", "near-bright")


def test_outputs_get_the_umask_mode_not_mkstemps_private_one(tmp_path):
    import os

    d = DepthMap(np.random.default_rng(0).random((16, 16)), "relative_inverse_depth")
    old = os.umask(0o027)
    try:
        for umask, mode in ((0o027, 0o640), (0o077, 0o600)):  # the umask of the moment, as open() applies it
            os.umask(umask)
            for written in io.write_depth_products(d, tmp_path, "a"):
                assert written.stat().st_mode & 0o777 == mode, written
    finally:
        os.umask(old)


def test_a_pixel_limit_raised_past_pillows_own_is_honoured(tmp_path, monkeypatch):
    """Pillow refuses images over its MAX_IMAGE_PIXELS (89.5 MP) itself; a DEPTH2IMG_MAX_PIXELS above it was
    refused with a message naming the higher limit. Pillow's is the process's: it is put back after (it had
    stayed raised for the caller's own code)."""
    Image.new("L", (300, 200)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)  # stands for Pillow's 89.5 MP
    assert io.load_image(tmp_path / "big.png", max_pixels=100_000).size == (300, 200)
    monkeypatch.setenv("DEPTH2IMG_MAX_PIXELS", "100000")
    assert io.header_size(tmp_path / "big.png") == (300, 200)
    assert Image.MAX_IMAGE_PIXELS == 30_000
    with pytest.raises(InputError, match="over the 50,000-pixel limit"):
        io.load_image(tmp_path / "big.png", max_pixels=50_000)


def test_label_masks_and_the_apps_photo_open_under_the_pixel_limit(tmp_path, monkeypatch):
    """Pillow's guard is put back after each read (above): the other readers of a photo-sized file (a job's mask
    check, the app's before/after photo, an output's metadata) open it under DEPTH2IMG_MAX_PIXELS too; with Pillow's
    guard alone, a mask over twice it was taken as damaged, and an output's record could not be read."""
    from depth2img.batch import _intact
    from depth2img.outputs import read_png_metadata, save_png
    from depth2img.ui import _viewable

    Image.new("L", (300, 200)).save(tmp_path / "mask.png")
    Image.new("RGB", (300, 200)).save(tmp_path / "photo.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # stands for Pillow's 89.5 MP
    monkeypatch.setenv("DEPTH2IMG_MAX_PIXELS", "100000")
    assert _intact(tmp_path / "mask.png")
    photo = io.load_image(tmp_path / "photo.png")
    assert _viewable(tmp_path / "photo.png", photo, tmp_path) == str(tmp_path / "photo.png")
    save_png(photo, tmp_path / "out.png", {"seed": 3})
    assert read_png_metadata(tmp_path / "out.png") == {"seed": 3}
    assert Image.MAX_IMAGE_PIXELS == 10_000


def test_bad_polarity_named():
    with pytest.raises(InputError, match="polarity must be one of near-bright, far-bright, metric, got 'up'"):
        io.read_depth_file("x.npy", "up")


def test_failed_product_write_leaves_nothing(tmp_path, monkeypatch):
    d = DepthMap(np.ones((4, 4)), "metric_depth")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(io.DEPTH_WRITERS, "preview", ("_depth_preview.png", boom))
    with pytest.raises(OSError):
        io.write_depth_products(d, tmp_path, "x")
    assert list(tmp_path.iterdir()) == []


def _zlib_level(path) -> int:
    """FLEVEL of a PNG's zlib stream (0 fastest .. 3 maximum): the first IDAT chunk's second byte, top 2 bits."""
    data = Path(path).read_bytes()
    i = data.index(b"IDAT")
    return data[i + 5] >> 6


def test_every_png_is_written_at_the_fast_compression_level(tmp_path, chelsea):
    """Lossless at any level; level 1 is 4-9x faster to encode than Pillow's default (measured, io.py)."""
    from depth2img.depthmap import DepthMap
    from depth2img.io import write_depth_products
    from depth2img.outputs import read_png_metadata, save_png

    yy, xx = np.mgrid[0:300, 0:451]
    depth = DepthMap((1.0 + yy + 0.5 * xx).astype(np.float32), "metric_depth")
    paths = write_depth_products(depth, tmp_path, "d", ("png16", "preview"))
    paths.append(save_png(chelsea, tmp_path / "o.png", {"seed": 1}))
    assert [_zlib_level(p) for p in paths] == [0, 0, 0]
    assert read_png_metadata(paths[-1]) == {"seed": 1}
    assert np.array_equal(np.asarray(Image.open(paths[-1])), np.asarray(chelsea))  # still lossless


def test_background_writer_takes_two_bursts_without_waiting():
    """A batch of 16 images, submitted at once, waited for 8 of them to be written (max_pending 8), the GPU idle."""
    import threading

    from depth2img.outputs import BackgroundWriter

    submitted, waited = threading.Event(), []

    def write():
        waited.append(submitted.wait(timeout=10))  # done only once every submit has returned

    with BackgroundWriter(threads=1, burst=16) as writer:
        assert writer.max_pending == 32
        for _ in range(32):
            writer.submit(write)
        submitted.set()
        writer.flush()
    assert waited == [True] * 32


def test_background_writer_keeps_order_reraises_errors_and_bounds_its_queue(monkeypatch):
    import threading

    from depth2img.outputs import BackgroundWriter

    settled = []
    with BackgroundWriter() as writer:
        for i in range(5):
            writer.submit(
                lambda i=i: i * i, then=lambda f: settled.append((f.result(), threading.current_thread()))
            )
        writer.flush()
    assert [v for v, _ in settled] == [0, 1, 4, 9, 16]  # in submission order
    assert {t for _, t in settled} == {threading.current_thread()}  # `then` runs in the caller's thread

    def disk_full():
        raise OSError(28, "No space left on device")

    with BackgroundWriter() as writer:
        with pytest.raises(OSError, match="No space left"):  # the default `then` re-raises, in this thread
            writer.submit(disk_full)
            writer.flush()

    # Several threads write in parallel; the ordered steps and the `then`s keep submission order
    second_done, steps, thens = threading.Event(), [], []

    def first():
        return "first" if second_done.wait(timeout=20) else "first, alone"  # waits for the second write

    def second():
        second_done.set()
        return "second"

    with BackgroundWriter(threads=2) as writer:
        for fn in (first, second):
            writer.submit(fn, in_order=lambda r: steps.append((r, threading.current_thread().name)),
                          then=lambda f: thens.append(f.result()))  # fmt: skip
        writer.after(lambda: steps.append(("after", threading.current_thread().name)))
        writer.flush()
    assert thens == ["first", "second"] and [r for r, _ in steps] == ["first", "second", "after"]
    assert {name.rsplit("_", 1)[0] for _, name in steps} == {"depth2img-writer-order"}
    with BackgroundWriter(
        threads=2
    ) as writer:  # a failed write skips its ordered step; `then` gets the error
        writer.submit(
            disk_full, in_order=lambda r: steps.append("never"), then=lambda f: thens.append(f.exception())
        )
        writer.flush()
    assert isinstance(thens[-1], OSError) and "never" not in steps

    for bad in ("0", "two", "-1", "\u00b2"):
        monkeypatch.setenv("DEPTH2IMG_WRITER_THREADS", bad)
        with pytest.raises(
            InputError, match=f"^DEPTH2IMG_WRITER_THREADS must be an integer >= 1, got '{bad}'$"
        ):
            BackgroundWriter()
    monkeypatch.setenv("DEPTH2IMG_WRITER_THREADS", "3")
    assert BackgroundWriter().threads == 3
    monkeypatch.delenv("DEPTH2IMG_WRITER_THREADS")

    gate = threading.Event()
    with BackgroundWriter(max_pending=1) as writer:
        submitter = threading.Thread(target=lambda: [writer.submit(gate.wait, 30) for _ in range(3)])
        submitter.start()
        submitter.join(timeout=0.5)
        assert submitter.is_alive()  # the third write waits while two are queued behind a slow one
        gate.set()
        submitter.join(timeout=30)
        assert not submitter.is_alive()
        writer.flush()


def test_a_result_written_on_several_threads_is_the_same_and_a_failure_leaves_nothing(tmp_path, monkeypatch):
    import errno
    import json

    from depth2img import outputs
    from depth2img.transformer import TransformResult

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 60, 3), np.uint8)) for _ in range(3)]
    depth = DepthMap(rng.random((40, 60)).astype(np.float32) + 0.5, "metric_depth")
    meta = [{"seed": s, "preset": "rain"} for s in (1, 2, 3)]
    result = TransformResult(images, depth, images[0], [1, 2, 3], meta)  # control: an output image, shared
    made, saved, original = {}, [], outputs.save_png

    def recorded(image, path, metadata=None):
        saved.append(id(image))
        return original(image, path, metadata)

    monkeypatch.setattr(outputs, "save_png", recorded)
    for threads in (1, 4):
        out = tmp_path / f"t{threads}"
        saved.clear()
        records = outputs.write_transform_result(result, out, "x", source="x.png", threads=threads)
        assert (
            len(saved) == len(set(saved)) == 4
        )  # Pillow's save sets attributes: never one object twice at once
        made[threads] = {p.name: p.read_bytes() for p in out.iterdir()}
        assert [r["output"] for r in records] == ["x_rain_s1.png", "x_rain_s2.png", "x_rain_s3.png"]
    assert made[1] == made[4] and len(made[1]) == 3 + 4  # images; depth16, preview, control, manifest
    assert [json.loads(line)["seed"] for line in made[4]["manifest.jsonl"].decode().splitlines()] == [1, 2, 3]

    def disk_full_on_the_second_image(image, path, metadata=None):
        if path.name == "x_rain_s2.png":
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(image, path, metadata)

    monkeypatch.setattr(outputs, "save_png", disk_full_on_the_second_image)
    for threads in (1, 4):
        out = tmp_path / f"fail{threads}"
        with pytest.raises(OSError, match="No space left"):
            outputs.write_transform_result(result, out, "x", threads=threads)
        assert list(out.iterdir()) == []  # none of its files is left, and no manifest line


def test_images_opened_on_many_threads_leave_the_warning_filters_as_they_were(tmp_path):
    """Read-ahead loaders and the app's workers open images at once; catch_warnings on two threads at a time
    restored each other's filter lists and could leave Pillow's bomb warning an error for the whole process."""
    import sys
    import threading
    import warnings

    Image.new("L", (40, 30)).save(tmp_path / "small.png")
    Image.new("L", (400, 300)).save(tmp_path / "big.png")
    before = list(warnings.filters)
    refused = []

    def load(n):
        for i in range(n):
            try:
                io.load_image(tmp_path / ("big.png" if i % 3 == 0 else "small.png"), max_pixels=100_000)
            except InputError as err:
                refused.append(str(err))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns often, as they may on a busy machine
    try:
        threads = [threading.Thread(target=load, args=(150,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert warnings.filters == before
    assert len(refused) == 8 * 50 and all("over the 100,000-pixel limit" in r for r in refused)


def _npy_header_only(fh, shape):
    """An .npy header declaring ``shape`` with no data after it: reading the data would fail."""
    np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": shape})


def test_a_numpy_depth_over_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    """A 365 KB .npz held a 12000x8000 array and was decoded in full (2 GB): no pixel guard on NumPy files."""
    import zipfile

    monkeypatch.setenv("DEPTH2IMG_MAX_PIXELS", "1199")
    with open(tmp_path / "d.npy", "wb") as fh:
        _npy_header_only(fh, (30, 40))
    with zipfile.ZipFile(tmp_path / "d.npz", "w", zipfile.ZIP_DEFLATED) as z, z.open("depth.npy", "w") as fh:
        _npy_header_only(fh, (30, 40))
    # a bomb in the 'kind' entry
    np.savez_compressed(tmp_path / "k.npz", depth=np.ones((4, 4)), kind=np.zeros(1200))
    guard = (
        r"over the 1,199-pixel limit \(decompression-bomb guard; raise DEPTH2IMG_MAX_PIXELS to allow it\)$"
    )
    for name, size in (("d.npy", "40x30"), ("d.npz", "40x30"), ("k.npz", r"shape \(1200,\)")):
        with pytest.raises(
            InputError, match=rf"^{re.escape(str(tmp_path / name))}: {size} is 1,200 pixels, {guard}"
        ):
            io.read_depth_file(tmp_path / name, "metric")
    # at the limit: read, and a header-only file is damaged
    monkeypatch.setenv("DEPTH2IMG_MAX_PIXELS", "1200")
    np.save(tmp_path / "ok.npy", np.ones((30, 40)))
    assert io.read_depth_file(tmp_path / "ok.npy", "metric").size == (40, 30)
    with pytest.raises(InputError, match="d.npz: .npz member unreadable"):
        io.read_depth_file(tmp_path / "d.npz", "metric")


def test_expand_inputs_keeps_a_file_reached_twice_once(tmp_path, monkeypatch):
    """p.png and $PWD/p.png ran twice; a symlink loop under a recursive glob made one photo 41 inputs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    for name in ("p.png", "q.png"):
        (tmp_path / "d" / name).write_bytes(b"x")
    (tmp_path / "d" / "self").symlink_to("../d")
    paths, problems = io.expand_inputs(["d/q.png", str(tmp_path / "d" / "q.png"), "d/**/*.png", "d"])
    # each file once, under its first spelling, in its first place
    assert paths == [Path("d/q.png"), Path("d/p.png")] and problems == []
    # two names linked to one file (a Hugging Face snapshot's identical frames) are two inputs
    (tmp_path / "d" / "r.png").symlink_to("p.png")
    assert io.expand_inputs(["d"]) == ([Path("d") / n for n in ("p.png", "q.png", "r.png")], [])


def test_a_folder_skips_hidden_files_as_a_glob_does(tmp_path):
    """macOS AppleDouble ._NAME files in an input folder were read as images (one error each, exit 2)."""
    (tmp_path / "d").mkdir()
    for name in ("p.png", "._p.png", ".q.png"):
        (tmp_path / "d" / name).write_bytes(b"x")
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "._p.png").write_bytes(b"x")
    assert io.expand_inputs([str(tmp_path / "d")]) == ([tmp_path / "d" / "p.png"], [])
    assert io.expand_inputs([str(tmp_path / "d" / "*.png")]) == ([tmp_path / "d" / "p.png"], [])
    # a hidden file named on its own is still an input
    named = tmp_path / "d" / "._p.png"
    assert io.expand_inputs([str(named)]) == ([named], [])
    suffixes = ", ".join(io.IMAGE_SUFFIXES)
    assert io.expand_inputs([str(tmp_path / "h")]) == (
        [],
        [f"{tmp_path / 'h'}: directory has no files ending in {suffixes}"],
    )


def test_a_folders_photos_of_a_kind_not_read_are_said(tmp_path):
    """An iPhone's .heic photos (or a camera's raw files) in a folder were left out without a word; a .jfif (a JPEG)
    was too, though it is read when named."""
    import warnings

    from depth2img.errors import Depth2ImgWarning

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (16, 16)).save(folder / "a.png")
    Image.new("RGB", (16, 16)).save(folder / "e.jfif", format="JPEG")
    for name in ("b.HEIC", "c.heic", "d.dng", "notes.txt", ".x.heic"):
        (folder / name).write_bytes(b"x")
    with pytest.warns(
        Depth2ImgWarning, match=r": 1 \.dng, 2 \.heic file\(s\) skipped, photos of a kind"
    ) as said:
        assert io.expand_inputs([str(folder)]) == ([folder / "a.png", folder / "e.jfif"], [])
    assert len(said) == 1 and io.load_image(folder / "e.jfif").size == (16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a folder of depth files: nothing said
        io.expand_inputs([str(folder)], suffixes=io.DEPTH_SUFFIXES)


def test_a_path_argument_given_something_else_is_one_line(tmp_path):
    """A PIL image or an array given as a path failed inside pathlib (TypeError: expected str, bytes or os.PathLike)."""
    from depth2img.batch import load_job, run_job

    for call, arg, name in [(io.load_image, Image.new("RGB", (32, 32)), "load_image: path"),
                            (io.read_depth_file, np.zeros((4, 4)), "read_depth_file: path"),
                            (load_job, None, "job file \\(a Job or its YAML's path\\)"),
                            (run_job, {"inputs": "x"}, "job file \\(a Job or its YAML's path\\)")]:  # fmt: skip
        with pytest.raises(InputError, match=f"^{name} must be a file path \\(str or os.PathLike\\), got "):
            call(arg)


def test_depth_writers_check_their_formats_and_stem_before_writing(tmp_path):
    """A bad format name was a raw KeyError ('png'); a string of formats was read letter by letter; a None stem
    named the files None_s3.png."""
    d = DepthMap(np.ones((8, 12)), "metric_depth")
    for formats, stem, message in [(("png",), "x", "depth formats must be a list of png16, npy, preview"),
                                   ("npy", "x", "got 'npy'"),
                                   (None, "x", "got None$"), (3, "x", "got 3$"),  # (a TypeError: internal error)
                                   (("npy",), None, "^stem must be a file name without its suffix, got None$"),
                                   (("npy",), "a/b", "got 'a/b'"),
                                   # hidden files '._depth.npy'; a raw OSError "File name too long"
                                   (("npy",), ".", "got '.'$"),
                                   (("npy",), "x" * 151, "^stem must take at most 150 bytes .*got 151")]:  # fmt: skip
        with pytest.raises(InputError, match=message):
            io.write_depth_products(d, tmp_path, stem, formats)
    assert list(tmp_path.iterdir()) == []
    assert [p.name for p in io.write_depth_products(d, tmp_path, "x", ["npy"])] == ["x_depth.npy"]
    # the longest a stem may be leaves room for all that a transform's outputs add to it
    from depth2img import outputs
    from depth2img.transformer import TransformResult

    stem, image = "é" * 75, Image.new("RGB", (12, 8))
    result = TransformResult([image], d, image, [2**63 - 1], [{"preset": "p" * 60, "seed": 2**63 - 1}])
    written = outputs.write_transform_result(result, tmp_path / "long", stem)
    assert written[0]["output"] == f"{stem}_{'p' * 60}_s{2**63 - 1}.png"


def test_load_images_max_pixels_is_checked(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    for bad in ("big", 0, True):
        with pytest.raises(InputError, match="^load_image: max_pixels must be a whole number >= 1, got "):
            io.load_image(tmp_path / "a.png", max_pixels=bad)
    assert io.load_image(tmp_path / "a.png", max_pixels=32 * 32).size == (32, 32)


def test_a_failed_atomic_write_names_the_file_asked_for_not_its_temporary(tmp_path):
    """A folder where the file goes: the error named the hidden temporary (or, on the CLI, only the folder)."""
    (tmp_path / "a.png").mkdir()
    with pytest.raises(IsADirectoryError) as raised, io.atomic_path(tmp_path / "a.png") as tmp:
        tmp.write_bytes(b"x")
    assert raised.value.filename == str(tmp_path / "a.png") and raised.value.errno == errno.EISDIR
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # the temporary is gone


def test_a_temporary_that_cannot_be_made_names_the_file_asked_for(tmp_path, monkeypatch):
    """A review of file-system errors (2026-11-28): in a read-only folder write_depth_products' PermissionError named
    the hidden temporary ('.x_depth16.png.5edd1bcd.part.png'). (Simulated: the tests may run as root.)"""
    import os

    real = os.open

    def read_only(path, flags, *args):
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(PermissionError) as raised:
        io.write_depth_products(DepthMap(np.ones((8, 8)), "relative_inverse_depth"), tmp_path, "x", ["png16"])
    assert raised.value.filename == str(tmp_path / "x_depth16.png") and raised.value.errno == errno.EACCES


def test_a_failed_write_inside_an_atomic_path_names_the_file_whatever_its_error_class(tmp_path):
    """A full disk raises with no file name; a library's own OSError subclass may take other arguments than
    OSError's (re-raising its class with OSError's arguments was a TypeError, an 'internal error')."""

    class DeviceGone(OSError):
        def __init__(self, message):
            super().__init__(errno.EIO, message)

    for raised in (OSError(errno.ENOSPC, "No space left on device"), DeviceGone("device gone")):
        with pytest.raises(OSError) as caught, io.atomic_path(tmp_path / "b.png"):
            raise raised
        assert caught.value.filename == str(tmp_path / "b.png") and caught.value.errno == raised.errno
        assert caught.value.__cause__ is raised and list(tmp_path.iterdir()) == []


def test_a_depth_without_structure_is_said(tmp_path):
    """A blank or saturated depth file (one value everywhere, or metric zeros: no measurement) makes a black
    control image; it was taken silently, so a user learnt it only from outputs that kept no geometry."""
    import warnings

    from depth2img.errors import Depth2ImgWarning
    from depth2img.io import depth_for_image, read_depth_file

    Image.fromarray(np.full((32, 48), 700, np.uint16)).save(tmp_path / "flat.png")
    with pytest.warns(Depth2ImgWarning) as seen:
        depth = read_depth_file(tmp_path / "flat.png", "near-bright")
    said = f"{tmp_path / 'flat.png'}: every depth value is 700, so it carries no structure and the outputs keep none"
    assert [str(w.message) for w in seen] == [depth.notes[0]] and depth.notes[0].startswith(said)
    np.save(tmp_path / "zeros.npy", np.zeros((8, 8)))
    with pytest.warns(
        Depth2ImgWarning, match=r"zeros.npy: no pixel holds a measurement \(metric 0 marks none\)"
    ):
        read_depth_file(tmp_path / "zeros.npy", "metric")
    # constant over its valid pixels: the holes do not count as structure
    holes = np.full((8, 8), 3.0)
    holes[:2] = 0
    with pytest.warns(Depth2ImgWarning, match=r"depth array: every valid depth value is 3, so"):
        depth_for_image(holes, (8, 8), "metric")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one more value is structure: nothing said
        holes[5, 5] = 2.0
        assert depth_for_image(holes, (8, 8), "metric").notes == []
    # a DepthMap the caller made is checked as an array is (it was taken silently), and said once: passed on again
    # (variations hands its depth to each row) it is not said again
    with pytest.warns(Depth2ImgWarning, match=r"^depth: every depth value is 1, so it carries no structure"):
        flat = depth_for_image(DepthMap(np.ones((8, 8)), "relative_inverse_depth"), (8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert depth_for_image(flat, (8, 8)) is flat and len(flat.notes) == 1
    with pytest.raises(InputError, match=r"^depth: metric depth has 16 negative values$"):
        depth_for_image(DepthMap(np.arange(-16.0, 48).reshape(8, 8), "metric_depth"), (8, 8))
    # a negative fill at a pixel marked invalid is no depth value
    fill = DepthMap(np.arange(64.0).reshape(8, 8) - 1, "metric_depth", np.arange(64).reshape(8, 8) > 0)
    assert depth_for_image(fill, (8, 8)) is fill


def test_a_depthmap_holds_its_own_arrays():
    """A caller refilling one buffer per frame (DepthMap(buf, ...)) changed the depth of every earlier result: its
    depth16 and control files were written from the next frame's depth."""
    buf, mask = np.ones((4, 6), np.float32), np.ones((4, 6), bool)
    depth = DepthMap(buf, "relative_inverse_depth", mask)
    buf[:], mask[:] = 7, False
    assert (depth.values == 1).all() and depth.valid.all()


def test_a_bfloat16_tensor_is_taken_as_a_depth_as_float16_is():
    """A bfloat16 tensor (a model's output) was refused: 'cannot be read as numbers (Got unsupported ScalarType
    BFloat16)'."""
    import torch

    from depth2img.io import depth_for_image

    values = torch.linspace(1, 9, 48).reshape(6, 8)
    for dtype in (torch.bfloat16, torch.float16):
        got = depth_for_image(values.to(dtype), (8, 6), "metric")
        np.testing.assert_array_equal(got.values, values.to(dtype).float().numpy())


def test_depth_pngs_with_alpha_are_read_and_1_bit_or_cmyk_ones_refused_in_one_line(tmp_path):
    """An LA PNG (grey + alpha) was refused as "depth must be a 2-D array, got shape (16, 16, 2)" and a 1-bit one
    as "depth must hold real numbers, got dtype bool"; grey values are read as an RGBA depth's are, alpha ignored."""
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(grey).convert("LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(io.read_depth_file(tmp_path / "la.png", "near-bright").values, grey)
    Image.fromarray(grey).convert("1").save(tmp_path / "bits.png")
    Image.fromarray(grey).convert("CMYK").save(tmp_path / "cmyk.tif")
    for name, what in (
        ("bits.png", "a 1-bit image holds two values, not"),
        ("cmyk.tif", "a CMYK image is not"),
    ):
        with pytest.raises(InputError) as err:
            io.read_depth_file(tmp_path / name, "near-bright")
        assert str(err.value) == (
            f"{tmp_path / name}: {what} a depth map; give a greyscale 8/16-bit PNG, a float TIFF or a .npy"
        )


@pytest.mark.parametrize("threads", [1, 3])
def test_a_failed_write_touches_no_file_an_earlier_run_left(tmp_path, threads):
    """A rerun into a folder (another seed) that failed for one input removed what it had written over: the
    earlier run's depth and control files, which its finished images' manifest lines name (a review's case). The
    files now take their names only once every write has succeeded; a nested group's writes wait too."""
    from functools import partial

    def text(path, value):
        with io.atomic_path(path) as tmp:
            tmp.write_text(value)
        return Path(path)

    def group(*paths):  # as write_depth_products, inside write_transform_result's writes
        return io.write_all_or_none([partial(text, p, "new") for p in paths])

    shared, nested = tmp_path / "in_depth16.png", tmp_path / "in_control.png"
    shared.write_text("earlier")
    nested.write_text("earlier")
    (tmp_path / "in_s100.png").mkdir()  # the new image's name is taken
    jobs = [
        partial(text, shared, "new"),
        partial(group, nested),
        partial(text, tmp_path / "in_s100.png", "x"),
    ]
    with pytest.raises(IsADirectoryError, match=r"in_s100.png"):
        io.write_all_or_none(jobs, threads)
    assert shared.read_text() == "earlier" and nested.read_text() == "earlier"
    assert io.stale_temp_files(tmp_path) == []

    def fails(path):
        with io.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise ValueError("encoder failed")

    with pytest.raises(ValueError, match="encoder failed"):
        io.write_all_or_none([partial(text, shared, "new"), partial(fails, tmp_path / "new.png")], threads)
    assert shared.read_text() == "earlier" and not (tmp_path / "new.png").exists()
    assert io.stale_temp_files(tmp_path) == []
    fresh = []
    written = io.write_all_or_none(
        [partial(text, shared, "new"), partial(group, tmp_path / "b.png")], threads, fresh
    )
    assert written == [shared, tmp_path / "b.png"] and fresh == [tmp_path / "b.png"]
    assert shared.read_text() == "new" and (tmp_path / "b.png").read_text() == "new"
    assert io.stale_temp_files(tmp_path) == []


def test_a_files_data_reaches_the_disk_before_it_takes_its_name(tmp_path, monkeypatch):
    """The manifest line after a file is flushed to disk; the file was only renamed, so after a power cut a line
    could name an empty image (delayed allocation), which a resume takes as made."""
    import os as os_module

    events = []
    fsync, replace = os_module.fsync, os_module.replace
    monkeypatch.setattr(io.os, "fsync", lambda fd: (events.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(io.os, "replace", lambda a, b: (events.append("replace"), replace(a, b))[1])
    with io.atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("a")
    assert events == ["fsync", "replace"] and (tmp_path / "a.txt").read_text() == "a"


def test_the_subfolders_left_out_are_named_with_globs_that_read_them(tmp_path):
    """A review of the warning: it suggested one suffix's glob where subfolders held others, did not escape a folder
    named with brackets (its glob matched nothing), named a subfolder whose images were all hidden (which a glob
    skips) and the parent of the run's own output folder."""
    import glob

    from depth2img.errors import Depth2ImgWarning

    src = tmp_path / "ph [1]"
    for name in (
        "a/x.png",
        "b/y.jpg",
        "c/.thumbs/t.png",
        "d/.h.png",
        "runs/today/o.png",
        "e/notes.txt",
        "top.png",
    ):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b"x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths, problems = io.expand_inputs([str(src)], outputs=[str(src / "runs" / "today")])
    assert [p.name for p in paths] == ["top.png"] and not problems
    said = [str(w.message) for w in caught if issubclass(w.category, Depth2ImgWarning)]
    pattern = f"{glob.escape(str(src))}/**/*"
    assert said == [f"{src}: the images in 2 subfolder(s) (a, b) are not read; give '{pattern}.png' or '{pattern}.jpg' "
                    "for them"]  # fmt: skip
    found = sorted(
        Path(p).name for suffix in (".png", ".jpg") for p in glob.glob(pattern + suffix, recursive=True)
    )
    assert found == ["o.png", "top.png", "x.png", "y.jpg"]  # the patterns read the named subfolders' images


def test_inputs_in_a_folder_that_cannot_be_searched_or_listed_fail_alone(tmp_path, chelsea, monkeypatch):
    """A review of file-system errors (2026-11-28): an input under a folder without search permission, or a folder that
    cannot be listed, stopped the whole run with Python's PermissionError (an internal error, exit 1; the other inputs
    not made). Each is one line, its own failure. (Simulated: the tests may run as root, whom chmod does not stop.)"""
    import os

    from depth2img.depth_run import run_depth
    from depth2img.errors import Depth2ImgWarning

    locked, ok = tmp_path / "locked", tmp_path / "ok.png"
    locked.mkdir()
    chelsea.resize((64, 48)).save(ok)
    chelsea.resize((64, 48)).save(locked / "a.png")
    real_stat, real_listdir = os.stat, os.listdir

    def denied(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def stat(path, *args, **kwargs):
        return denied(path) if str(path).startswith(f"{locked}{os.sep}") else real_stat(path, *args, **kwargs)

    def listdir(path="."):
        return denied(path) if str(path) == str(locked) else real_listdir(path)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "listdir", listdir)
    paths, problems = io.expand_inputs([str(locked / "a.png"), str(locked), str(locked / "*.png"), str(ok)])
    assert paths == [ok]
    assert problems == [f"{locked / 'a.png'}: cannot be read (Permission denied)",
                        f"{locked}: cannot be read (Permission denied)",
                        f"{locked / '*.png'}: cannot be read (Permission denied)"]  # fmt: skip
    with pytest.raises(InputError, match=r"^.*locked/a.png: cannot be read \(Permission denied\)$"):
        io.load_image(locked / "a.png")
    # a recursive pattern over them: glob skipped the folder that cannot be listed without a word
    real_scandir = os.scandir

    def scandir(path="."):
        return denied(path) if str(path) == str(locked) else real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.warns(Depth2ImgWarning, match=rf"^{tmp_path}/\*\*/\*.png: 1 folder\(s\) under it cannot be read, their "
                                              rf"photos left out \({locked}\)$"):  # fmt: skip
        paths, problems = io.expand_inputs([f"{tmp_path}/**/*.png"])
    assert paths == [ok] and problems == []
    monkeypatch.setattr(os, "scandir", real_scandir)
    for _ in range(2):  # the second into an output folder that is there (its check of the inputs raised)
        report = run_depth([locked / "a.png", ok], tmp_path / "out", estimator="tiny", progress=False)
        assert [p.name for p in report.done] == ["ok.png"]
        assert report.failed == [f"{locked / 'a.png'}: cannot be read (Permission denied)"]
