"""Pins for behaviour a mutation audit found unguarded: batch rejections and retry seeds, list files, stale temp
files, depth files and their aspect, previews, geometry metrics, stereo holes, generation size and metadata."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from depth2img import io
from depth2img.depthmap import DepthMap
from depth2img.errors import InputError

W, H = 96, 64
PROMPT = "a street"


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Two procedural 96x64 driving frames in a `frames/` folder."""
    from depth2img.scene import render_driving_scene

    root = tmp_path_factory.mktemp("pins-frames")
    (root / "frames").mkdir()
    for k in range(2):
        render_driving_scene(W, H, seed=k).image.save(root / "frames" / f"f{k}.png")
    return root


def write_job(root: Path, name="job.yaml", **overrides) -> Path:
    job = {"inputs": "frames", "output": "out", "model": "tiny", "presets": ["fog"], "seeds": 1,
           "knobs": {"steps": 2, "strength": 0.5}, "layout": "coco", "labels": {}}  # fmt: skip
    job.update(overrides)
    path = root / name
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture(scope="module")
def sd15():
    from depth2img.transformer import SceneTransformer

    return SceneTransformer.from_pretrained("tiny")


@pytest.fixture(scope="module")
def photo(chelsea):
    return chelsea.resize((W, H))


@pytest.fixture(scope="module")
def ramp():
    """A metric depth the photo's size: 1 m at the top left, farther to the right and down."""
    yy, xx = np.mgrid[0:H, 0:W]
    return DepthMap(1.0 + yy + 0.3 * xx, "metric_depth")


# ---------------------------------------------------------------------------------------------- batch jobs


@pytest.mark.parametrize(
    "layout, index", [("coco", "annotations.json"), ("imagefolder", "train/metadata.jsonl")]
)
def test_a_job_whose_items_are_all_rejected_indexes_no_image(frames, tmp_path, layout, index):
    """A rejected item's manifest line named an image that was never written, and the dataset index listed it."""
    from depth2img.batch import read_manifest, run_job

    out = tmp_path / "o"
    job = write_job(frames, name=f"reject-{layout}.yaml", inputs="frames/f0.png", output=str(out), layout=layout,
                    geometry={"metric": "absrel", "threshold": 0.0, "retries": 0})  # fmt: skip
    report = run_job(job, progress=False)
    assert report.done == 0 and report.rejected == 1 and report.retried == 0
    lines = read_manifest(out / "manifest.jsonl")
    assert len(lines) == 1 and lines[0]["final"] and not lines[0]["accepted"]
    assert lines[0]["output"] is None
    assert all((out / r["output"]).is_file() for r in lines if r["output"] is not None)
    text = (out / index).read_text()
    if layout == "coco":
        assert json.loads(text)["images"] == []
    else:
        assert text == ""


def test_a_geometry_retry_never_reuses_another_items_seed(frames, tmp_path):
    """With seeds 0 and 1, item s0's retry used seed 1: the same image as item s1, twice in the dataset."""
    from depth2img.batch import SEED_STRIDE, read_manifest, run_job

    out = tmp_path / "o"
    job = write_job(frames, name="retry-seeds.yaml", inputs="frames/f0.png", output=str(out), seeds=2,
                    geometry={"metric": "absrel", "threshold": 0.0, "retries": 1})  # fmt: skip
    report = run_job(job, progress=False)
    assert report.rejected == 2 and report.retried == 2
    lines = read_manifest(out / "manifest.jsonl")
    got = sorted((r["item_seed"], r["attempt"], r["seed"]) for r in lines)
    assert got == [(0, 0, 0), (0, 1, SEED_STRIDE), (1, 0, 1), (1, 1, 1 + SEED_STRIDE)]
    assert SEED_STRIDE == 1_000_003
    by_item: dict = {}
    for r in lines:
        by_item.setdefault(r["item"], set()).add(r["seed"])
    a, b = by_item.values()
    assert not a & b  # no generation seed is shared by two items


def test_resume_removes_the_stale_temp_files_of_a_killed_run(frames, tmp_path):
    """A SIGKILLed writer's `.NAME.XXXX.part.png` stayed in images/ for good after --resume."""
    from depth2img.batch import run_job

    out = tmp_path / "o"
    job = write_job(frames, name="stale.yaml", inputs="frames/f0.png", output=str(out))
    assert run_job(job, progress=False).done == 1
    stale = [
        out / "images" / ".f0__fog__s0.png.1a2b3c4d.part.png",
        out / "depth" / ".f0_depth.npy.deadbeef.part.npy",
    ]
    for p in stale:
        p.write_bytes(b"half")
    # named like them, but no temp file of ours: a user's file and a folder (it crashed on unlink)
    kept = [out / "images" / ".notes.partial.txt", out / ".f0.png.1a2b3c4d.part.jpg", out / ".cache.parts"]
    kept[0].write_text("mine")
    kept[1].write_text("suffix differs")
    kept[2].mkdir()
    again = run_job(job, resume=True, progress=False)
    assert again.skipped == 1 and again.done == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert sorted(p.name for p in (out / "images").iterdir()) == [".notes.partial.txt", "f0__fog__s0.png"]


def test_list_file_lines_are_taken_from_the_list_files_folder(frames, tmp_path):
    """`sub/list.txt` naming `f0.png` meant sub/f0.png; read from the job's folder it was 'no such file'."""
    from depth2img.batch import job_inputs, load_job

    (tmp_path / "sub").mkdir()
    Image.open(frames / "frames" / "f0.png").save(tmp_path / "sub" / "f0.png")
    (tmp_path / "sub" / "list.txt").write_text("# frames to transform\nf0.png\n\n   \n#f1.png\n")
    job = load_job(write_job(tmp_path, inputs="sub/list.txt", output="out"))
    paths, problems = job_inputs(job)
    assert paths == [tmp_path / "sub" / "f0.png"] and problems == []


# ---------------------------------------------------------------------------------------------- transform runs


def test_a_torn_last_manifest_line_does_not_swallow_the_next_runs_record(sd15, frames, tmp_path):
    """A run killed mid-line left a partial line; the next run's line was glued to it and lost as bad JSON."""
    from depth2img import run_transform
    from depth2img.outputs import read_manifest

    out = tmp_path / "o"
    out.mkdir()
    (out / "old_s0.png").write_bytes(
        b"an earlier run's image"
    )  # a line whose file is gone is dropped on a rerun
    good = json.dumps({"output": "old_s0.png", "seed": 0}, sort_keys=True) + "\n"
    (out / "manifest.jsonl").write_text(good + '{"output": "torn_s0.png", "se')
    report = run_transform([frames / "frames" / "f0.png"], out, prompt=PROMPT, model=sd15, seed=5, progress=False,
                           knobs={"steps": 2, "strength": 0.5})  # fmt: skip
    assert not report.failed and len(report.written) >= 1
    lines = read_manifest(out / "manifest.jsonl")
    assert [r["output"] for r in lines] == ["old_s0.png", "f0_s5.png"] and lines[1]["seed"] == 5
    # the torn line is cut off, and the next run's line follows the good one
    assert (out / "manifest.jsonl").read_text().startswith(good + "{")


def test_a_rerun_drops_the_manifest_lines_of_outputs_deleted_since(sd15, frames, tmp_path):
    """A rerun into a folder kept the lines of outputs the user had deleted: the manifest listed missing files."""
    from depth2img import run_transform
    from depth2img.outputs import read_manifest

    out = tmp_path / "o"
    kw = dict(prompt=PROMPT, model=sd15, seed=3, progress=False, knobs={"steps": 2, "strength": 0.5})
    run_transform([frames / "frames" / "f0.png", frames / "frames" / "f1.png"], out, **kw)
    assert sorted(r["output"] for r in read_manifest(out / "manifest.jsonl")) == ["f0_s3.png", "f1_s3.png"]
    (out / "f1_s3.png").unlink()
    run_transform([frames / "frames" / "f0.png"], out, **kw)  # replaces f0_s3.png: the manifest is compacted
    assert [r["output"] for r in read_manifest(out / "manifest.jsonl")] == ["f0_s3.png"]


# ---------------------------------------------------------------------------------------------- generation


def test_the_photo_is_resized_to_generation_size_with_lanczos(sd15, photo, ramp):
    """A nearest-neighbour resize of the photo (aliasing, jagged edges) went into img2img unnoticed."""
    from depth2img.transformer import generation_size

    req = sd15.prepare(photo, PROMPT, depth=ramp, seed=0, steps=2, strength=0.5)
    size = generation_size(W, H, sd15.native_size, sd15.backend.size_multiple)
    assert req.gen_image.size == size != (W, H)
    want = np.asarray(photo.resize(size, Image.LANCZOS))
    assert np.array_equal(np.asarray(req.gen_image), want)


def test_metadata_records_the_input_size_as_width_height(sd15, photo, ramp):
    """input_size was written [height, width]: a 96x64 photo recorded as 64x96."""
    result = sd15.transform(photo, PROMPT, depth=ramp, seed=0, steps=2, strength=0.5)
    assert result.images[0].size == (W, H)
    assert result.metadata[0]["input_size"] == [W, H]
    gw, gh = result.metadata[0]["generation_size"]
    assert gw > gh  # the landscape photo is generated landscape


def test_requests_differing_only_in_negative_prompt_batch_like_separate_runs(sd15, photo, ramp):
    """Same photo and prompt, two negatives: the batch used the first negative prompt for both images."""
    a = sd15.prepare(photo, PROMPT, depth=ramp, seed=2, steps=2, strength=0.6, negative_prompt="blurry")
    b = sd15.prepare(photo, PROMPT, depth=ramp, seed=2, steps=2, strength=0.6, negative_prompt="dark, foggy",
                     reuse=a)  # fmt: skip
    assert b.gen_image is a.gen_image and b.gen_depth is a.gen_depth  # one photo, one depth in the batch
    batched = sd15.run([a, b])
    alone = [sd15.run([r])[0] for r in (a, b)]
    for got, want in zip(batched, alone):
        assert np.abs(got.raw - want.raw).max() < 1e-5
    assert np.abs(alone[0].raw - alone[1].raw).max() > 1e-3  # the negatives do change the image
    assert [r.metadata[0]["negative_prompt"] for r in batched] == ["blurry", "dark, foggy"]


def test_sd2_depth_refuses_a_constant_depth():
    """A constant depth gave SD2-depth a zero depth channel and a meaningless image, exit 0."""
    from depth2img.transformer import SceneTransformer

    st = SceneTransformer.from_pretrained("tiny/sd2-depth")
    photo = Image.new("RGB", (64, 64), (90, 120, 150))
    flat = DepthMap(np.full((64, 64), 3.0), "metric_depth")
    with pytest.raises(InputError, match="depth is constant") as err:
        st.transform(photo, PROMPT, depth=flat, seed=0, steps=2, strength=0.5)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- depth files


def test_a_depth_of_the_same_aspect_is_resized_to_width_by_height(tmp_path):
    """A smaller depth was resized to (height, width): a 96x64 photo got a 64x96 depth."""
    import cv2

    yy, xx = np.mgrid[0:32, 0:48]
    values = (1.0 + 0.1 * xx + 0.02 * yy * yy).astype(np.float32)
    np.save(tmp_path / "d.npy", values)
    for given in (values, tmp_path / "d.npy"):
        got = io.depth_for_image(given, (96, 64), "metric")
        assert got.size == (96, 64) and got.values.shape == (64, 96)
        want = np.clip(
            cv2.resize(values, (96, 64), interpolation=cv2.INTER_CUBIC), values.min(), values.max()
        )
        assert np.array_equal(got.values, want)


def test_a_depth_of_another_aspect_is_refused_beyond_one_percent():
    """A 100x62 depth (3% off) was bent onto a 100x64 photo instead of being refused."""
    with pytest.raises(InputError, match=r"depth is 100x62 but the image is 100x64: aspect ratios differ"):
        io.depth_for_image(np.ones((62, 100)), (100, 64), "metric")
    got = io.depth_for_image(np.ones((128, 201)), (200, 128), "metric")  # 0.5 % off: odd-size rounding
    assert got.size == (200, 128)


@pytest.mark.parametrize("scale", [0, -1, 0.0, "2", None, float("inf"), float("nan")])
def test_a_depth_scale_that_is_not_positive_is_refused(tmp_path, scale):
    """--depth-scale 0 made every metric depth 0 m (and -1 negative), with no error; "2" or None was a raw
    TypeError."""
    np.save(tmp_path / "d.npy", np.full((16, 16), 2.0))
    with pytest.raises(InputError, match=r"^depth scale must be a finite number > 0, got "):
        io.read_depth_file(tmp_path / "d.npy", "metric", depth_scale=scale)


def test_depth_preview_shows_near_bright():
    """The preview's colours ran the wrong way: near dark, far bright."""
    import cv2

    depth = DepthMap(np.tile(np.linspace(1.0, 10.0, 32, dtype=np.float32), (16, 1)), "metric_depth")
    preview = io.depth_preview(depth)
    assert preview.shape == (16, 32, 3) and preview.dtype == np.uint8

    def inferno(v):
        return cv2.cvtColor(
            cv2.applyColorMap(np.array([[v]], np.uint8), cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB
        )[0, 0]

    assert np.array_equal(preview[0, 0], inferno(255))  # 1 m: the nearest, brightest
    assert np.array_equal(preview[0, -1], inferno(0))  # 10 m: the farthest, black
    assert int(preview[:, 0].sum()) > int(preview[:, -1].sum())


def test_a_float_photo_in_unit_range_is_scaled_not_black():
    """A mode 'F' photo holding 0..1 became 0 and 1 of 255: a black image."""
    arr = np.tile(np.array([0.0, 0.25, 0.5, 1.0], np.float32), (16, 4))
    rgb = np.asarray(io.to_rgb(Image.fromarray(arr, "F")))
    assert rgb.shape == (16, 16, 3) and list(rgb[0, :4, 0]) == [0, 64, 128, 255]


# ---------------------------------------------------------------------------------------------- metrics, stereo


def test_a_relative_sources_far_end_is_twenty_times_its_near_end():
    """AbsRel of a flat output against a relative two-level source: 19/21 with a 20:1 scene, 2/3 with 5:1."""
    from depth2img.metrics import geometry_scores

    src = np.zeros((16, 16))
    src[:, 8:] = 1.0  # left half far (normalised 0), right half near (1)
    flat = DepthMap(np.full((16, 16), 2.0), "metric_depth")
    scores = geometry_scores(DepthMap(src, "relative_inverse_depth"), flat)
    # disparities 1/20 and 1 against their mean 0.525: |0.05/0.525 - 1| = |1/0.525 - 1| = 19/21
    assert scores["absrel"] == pytest.approx(19 / 21, abs=1e-9)
    assert scores["delta1"] == 0.0


@pytest.mark.parametrize("shift, f1", [(0, 1.0), (2, 1.0), (3, 0.5), (4, 0.0)])
def test_depth_edges_match_within_two_pixels(shift, f1):
    """An edge moved 3-4 px (a changed outline) still counted as kept with a wider tolerance."""
    from depth2img.metrics import geometry_scores

    def step(col):
        v = np.zeros((24, 32))
        v[:, col:] = 1.0
        return DepthMap(v, "relative_inverse_depth")

    # edges at columns 11-12 against 11+shift..12+shift; matched within sqrt(2**2 + 1) px
    assert geometry_scores(step(12), step(12 + shift))["edge_f1"] == pytest.approx(f1)


def test_passing_exactly_at_the_threshold_is_accepted():
    """A score equal to the job's threshold was rejected (and retried) as if it fell under it."""
    from depth2img.metrics import passes

    assert passes({"delta1": 0.9}, "delta1", 0.9) and not passes({"delta1": 0.8999}, "delta1", 0.9)
    assert passes({"absrel": 0.1}, "absrel", 0.1) and not passes({"absrel": 0.1001}, "absrel", 0.1)


def test_stereo_rows_with_no_match_take_the_farthest_disparity(monkeypatch):
    """An unmatched row (or hole) was filled with the nearest disparity: a wall of foreground over the background."""
    from depth2img import stereo

    disparity = np.array([[5.0, 0.0, 2.0, 9.0], [0.0, 0.0, 0.0, 0.0], [4.0, 7.0, 0.0, 0.0]], np.float32)
    monkeypatch.setattr(stereo, "sgbm_disparity", lambda *a, **k: (disparity, disparity > 0, 16))
    left = Image.new("RGB", (4, 3))
    depth = stereo.stereo_depth(left, left)
    assert depth.kind == "disparity" and depth.valid.all()
    assert depth.values.tolist() == [[5, 2, 2, 9], [2, 2, 2, 2], [4, 7, 7, 7]]
    assert depth.meta["matched"] == pytest.approx(5 / 12)
