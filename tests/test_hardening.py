"""Hardening: hostile inputs on every entry point, property tests of depth conversions, safe loading, OOM."""

import functools
import json
import re
import shutil
import struct
import zlib
from functools import partial
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from depth2img import conditioning
from depth2img.cli import main
from depth2img.depthmap import DepthMap
from depth2img.errors import Depth2ImgError, OutOfMemory

# ------------------------------------------------------------------------------------------ property tests

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
depth_arrays = arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=finite)


@settings(max_examples=200, deadline=None)
@given(values=depth_arrays, kind=st.sampled_from(sorted(conditioning.KINDS)), data=st.data())
def test_any_finite_depth_gives_finite_output_in_range(values, kind, data):
    valid = data.draw(arrays(bool, values.shape))
    d = DepthMap(values, kind, valid)
    n = d.normalized()
    assert n.shape == values.shape and np.isfinite(n).all() and n.min() >= 0 and n.max() <= 1
    assert np.isfinite(d.inverse()).all()
    c = d.control_image()
    assert c.shape == (*values.shape, 3) and 0 <= c.min() and c.max() <= 1
    assert d.to_uint16().dtype == np.uint16
    s = d.sd2_depth(16, 16, 8)
    assert torch.isfinite(s).all() and s.min() >= -1 and s.max() <= 1


@settings(max_examples=50, deadline=None)
@given(
    value=finite,
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    kind=st.sampled_from(sorted(conditioning.KINDS)),
)
def test_constant_and_all_invalid_maps_do_not_divide_by_zero(value, shape, kind):
    for valid in (np.ones(shape, bool), np.zeros(shape, bool)):
        d = DepthMap(np.full(shape, value, np.float32), kind, valid)
        assert np.array_equal(d.normalized(), np.zeros(shape, np.float32))
        assert torch.equal(d.sd2_depth(16, 16, 8), torch.zeros(1, 1, 2, 2))


# ------------------------------------------------------------------------------------------ hostile inputs


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height but carries almost no data (a decompression-bomb shape)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _hostile_images(d: Path, chelsea) -> dict[str, str | None]:
    """name -> the error expected (None: accepted, converted)."""
    rng = np.random.default_rng(0)
    (d / "noise.png").write_bytes(rng.bytes(4096))
    (d / "noise.jpg").write_bytes(rng.bytes(4096))
    (d / "zero.png").write_bytes(b"")
    chelsea.save(d / "full.jpg")
    (d / "cut.jpg").write_bytes((d / "full.jpg").read_bytes()[:2000])
    (d / "full.jpg").unlink()
    chelsea.save(d / "full.png")
    (d / "cut.png").write_bytes((d / "full.png").read_bytes()[:5000])
    (d / "full.png").unlink()
    Image.new("RGB", (1, 1)).save(d / "one.png")
    _png_header_only(d / "huge.png", 30000, 30000)
    chelsea.convert("CMYK").save(d / "cmyk.jpg")
    chelsea.convert("P").save(d / "palette.png")
    chelsea.convert("RGBA").save(d / "rgba.png")
    Image.fromarray(np.asarray(chelsea.convert("L")).astype(np.uint16) * 257).save(d / "grey16.png")
    frames = [chelsea.resize((64, 48)), chelsea.resize((64, 48)).rotate(90)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 8
    chelsea.save(d / "exif.jpg", exif=exif)
    (d / "text.png").write_text("<html>not an image</html>")
    return {
        "noise.png": "not a readable image", "noise.jpg": "not a readable image", "zero.png": "empty file",
        "cut.jpg": "truncated or corrupt", "cut.png": "truncated or corrupt", "one.png": "too small",
        "huge.png": "pixel limit", "text.png": "not a readable image",
        "cmyk.jpg": None, "palette.png": None, "rgba.png": None, "grey16.png": None, "anim.gif": None, "exif.jpg": None,
    }  # fmt: skip


def test_unreadable_inputs_alone_load_no_model(tmp_path, chelsea, capsys, monkeypatch):
    from depth2img.estimators import DepthEstimator
    from depth2img.transformer import SceneTransformer

    loaded = []
    monkeypatch.setattr(DepthEstimator, "from_pretrained", lambda *a, **k: loaded.append("estimator"))
    monkeypatch.setattr(SceneTransformer, "from_pretrained", lambda *a, **k: loaded.append("model"))
    src = tmp_path / "in"
    src.mkdir()
    # unreadable, and one readable header of a 1x1 image (too small: a header check alone would have loaded them)
    expected = {
        n: p
        for n, p in _hostile_images(src, chelsea).items()
        if p and ("not a readable" in p or n == "one.png")
    }
    for other in {p.name for p in src.iterdir()} - set(expected):
        (src / other).unlink()
    for command in (["depth", "--estimator", "tiny"], ["transform", "--model", "tiny", "--prompt", "x"]):
        code = main([command[0], str(src), "-o", str(tmp_path / command[0]), "-q", *command[1:]])
        err = capsys.readouterr().err
        assert code != 0 and "Traceback" not in err, err
        lines = err.splitlines()
        assert all(
            any(f"{name}: " in ln and problem in ln for ln in lines) for name, problem in expected.items()
        ), err
    assert loaded == [] and len(expected) == 4
    # a bad estimator name is still refused
    for command in (["depth"], ["transform", "--model", "tiny", "--prompt", "x"]):
        code = main(
            [command[0], str(src), "-o", str(tmp_path / "bad"), "-q", "--estimator", "nope", *command[1:]]
        )
        assert code == 2 and "'nope'" in capsys.readouterr().err, command


def test_hostile_images_on_depth_and_transform_cli(tmp_path, chelsea, capsys):
    src = tmp_path / "in"
    src.mkdir()
    expected = _hostile_images(src, chelsea)
    tried = 0
    for command in (
        ["depth", "--estimator", "tiny"],
        ["transform", "--model", "tiny", "--prompt", "x", "--steps", "2"],
    ):
        for name, problem in expected.items():
            out = tmp_path / f"out-{command[0]}-{name}"
            code = main([command[0], str(src / name), "-o", str(out), "-q", *command[1:]])
            err = capsys.readouterr().err
            tried += 1
            assert "Traceback" not in err
            if problem is None:
                assert code == 0, (name, err)
            else:
                lines = [ln for ln in err.splitlines() if ln.startswith("depth2img: error:")]
                assert code == 2 and len(lines) == 1 and name in lines[0] and problem in lines[0], (name, err)
                assert not out.exists() or not any(out.iterdir()), name  # nothing written for it
    assert tried == 28


def test_hostile_images_on_ui_handlers(tmp_path, chelsea, monkeypatch):
    import gradio as gr

    from depth2img import ui
    from depth2img.service import Service
    from depth2img.ui import _friendly, handle_depth

    monkeypatch.setattr(ui, "APP_DIR", tmp_path / "requests")
    src = tmp_path / "in"
    src.mkdir()
    svc = Service(model="tiny")
    for name, problem in _hostile_images(src, chelsea).items():
        if problem is None:
            preview, _ = _friendly(handle_depth)(svc, str(src / name), "tiny", None, "")
            assert Path(preview).is_file()
        else:
            with pytest.raises(gr.Error, match=problem):
                _friendly(handle_depth)(svc, str(src / name), "tiny", None, "")


@pytest.mark.parametrize(
    "make, polarity, problem",
    [
        (lambda p: np.save(p, np.array([[1.0, np.nan]] * 4)), "metric", "NaN or infinite"),
        (lambda p: np.save(p, np.array([[1.0, np.inf]] * 4)), "metric", "NaN or infinite"),
        (lambda p: np.save(p, -np.ones((4, 4))), "metric", "negative"),
        (lambda p: np.save(p, np.ones((2, 3, 4))), "metric", "2-D array"),
        (lambda p: np.save(p, np.ones((0, 5))), "metric", "empty"),
        (lambda p: np.save(p, np.array([["a", "b"], ["c", "d"]])), "metric", "real numbers"),
        (lambda p: p.write_bytes(b"\x93NUMPY garbage"), "metric", "not a readable NumPy file"),
        (lambda p: np.save(p, np.ones((4, 4))), None, "does not say which way"),
    ],
)
def test_hostile_depth_files_on_transform_cli(tmp_path, photos_dir, capsys, make, polarity, problem):
    make(tmp_path / "d.npy")
    extra = ["--depth-polarity", polarity] if polarity else []
    code = main(["transform", str(photos_dir / "chelsea.png"), "-o", str(tmp_path / "o"), "--model", "tiny", "--prompt",
                 "x", "--depth", str(tmp_path / "d.npy"), "-q", *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and problem in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--prompt", ""], "give a --prompt or a --preset"),
        (["--prompt", "   \t "], "give a --prompt or a --preset"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--prompt", "x", "--steps", "0"], "--steps must be an integer in 1..1000, got 0"),
        (["--prompt", "x", "--steps", "1000000"], "got 1000000"),
        (["--prompt", "x", "--strength", "2"], "--strength must be in (0, 1], got 2.0"),
        (["--prompt", "x", "--guidance", "-1"], "--guidance must be in [0, 50], got -1.0"),
        (["--prompt", "x", "--guidance", "nan"], "--guidance must be in [0, 50], got nan"),
        (["--prompt", "x", "--seed", "-1"], "--seed must be an integer in 0..2**63-1, got -1"),
        (["--prompt", "x", "--seed", str(2**70)], "got 1180591620717411303424"),
        (["--prompt", "x", "--control-scale", "99"], "--control-scale must be in [0, 5], got 99.0"),
        (["--prompt", "x", "--num-images", "0"], "--num-images must be an integer in 1..64, got 0"),
        (["--prompt", "x", "--num-images", "100"], "--num-images must be an integer in 1..64, got 100"),
    ],
)
def test_absurd_knobs(tmp_path, photos_dir, capsys, args, problem):
    code = main(
        ["transform", str(photos_dir / "chelsea.png"), "-o", str(tmp_path / "o"), "--model", "tiny", *args]
    )
    err = capsys.readouterr().err
    assert code == 2 and problem in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_500_token_prompt_is_reported_not_failed(tmp_path, photos_dir, capsys):
    prompt = " ".join(["tree"] * 500)
    code = main(["transform", str(photos_dir / "chelsea.png"), "-o", str(tmp_path / "o"), "--model", "tiny",
                 "--prompt", prompt, "--steps", "2", "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and "depth2img: warning:" in err and "truncated" in err


@pytest.mark.parametrize(
    "text, problem",
    [
        ("inputs: a\noutput: b\nprompt: x\nextra_thing: 1\n", "unknown key 'extra_thing'"),
        (
            "inputs: a\noutput: b\nprompt: x\nlabels: {coco: c.json, evil: ../../x}\n",
            "labels.evil is unknown",
        ),
        ("- just\n- a list\n", "must be a mapping"),
        ("inputs: a\noutput: b\nprompt: x\nseeds: 0\n", "seeds must be a count in 1..1000, got 0"),
        ("inputs: a\noutput: b\nprompt: x\nseeds: 99999999\n", "seeds must be a count in 1..1000"),
        ("inputs: [a\n", "line"),
        ("", "must be a mapping"),
    ],
)
def test_hostile_job_files(tmp_path, capsys, text, problem):
    (tmp_path / "job.yaml").write_text(text)
    code = main(["batch", str(tmp_path / "job.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and problem in err and err.count("\n") == 1


def test_job_with_path_traversal_stays_inside_output(tmp_path, chelsea):
    from depth2img.batch import run_job

    chelsea.resize((64, 48)).save(tmp_path / "a.png")
    (tmp_path / "list.txt").write_text("../../../../etc/passwd\na.png\n")
    job = tmp_path / "job.yaml"
    job.write_text(
        "inputs: list.txt\noutput: out\nmodel: tiny\npresets: [fog]\nknobs: {steps: 2, strength: 0.5}\n"
    )
    report = run_job(job, progress=False)
    assert report.done == 1 and any("passwd" in f for f in report.failed)
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert all(tmp_path / "out" in p.parents for p in written)


# ------------------------------------------------------------------------------------------ loading


def test_pickle_weights_only_with_explicit_permission(tmp_path, tiny_dir, monkeypatch):
    import shutil

    from safetensors.torch import load_file

    from depth2img.errors import ModelLoadError
    from depth2img.estimators import DepthEstimator

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_dir / "dpt", folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(
        ModelLoadError, match="only pickle weights .*safetensors weights only.*DEPTH2IMG_ALLOW_PICKLE=1"
    ):
        DepthEstimator.from_pretrained(str(folder))
    monkeypatch.setenv("DEPTH2IMG_ALLOW_PICKLE", "1")
    assert DepthEstimator.from_pretrained(str(folder)).kind == "relative_inverse_depth"


def _photo_and_depth():
    from depth2img import DepthMap

    yy, xx = np.mgrid[0:48, 0:64]
    photo = Image.fromarray(((np.stack([xx, yy, xx + yy], -1) * 2) % 256).astype(np.uint8))
    return photo, DepthMap(1.0 + yy + 0.5 * xx, "metric_depth")


def test_full_size_download_layouts_load_as_the_hub_gives_them(tmp_path, tiny_dir, monkeypatch, capsys):
    """Three layouts a user's download has (a full-size review, 2026-11-27): a folder of fp16-variant files only
    (diffusers looked for the plain names: "no file named diffusion_pytorch_model.safetensors", beside them); a
    pipeline folder whose vae/ holds pickles while other parts hold safetensors (passed our check, failed in
    diffusers, its message printed twice, no word of pickles); a base folder alone, with no ControlNet beside it
    (refused: it now takes the registry's depth ControlNet of its kind, from the cache here)."""
    import shutil

    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from safetensors.torch import load_file

    from depth2img import SceneTransformer
    from depth2img.errors import ModelLoadError
    from depth2img.registry import backbones

    photo, depth = _photo_and_depth()
    expected = (
        SceneTransformer.from_pretrained("tiny").transform(photo, "x", depth=depth, seed=1, steps=2).raw
    )
    base, controlnet = tiny_dir / "sd15-depth", tiny_dir / "sd15-depth-controlnet"
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        base, controlnet=ControlNetModel.from_pretrained(controlnet)
    )
    pipe.save_pretrained(tmp_path / "fp16", variant="fp16")
    files = sorted(p.name for p in (tmp_path / "fp16").rglob("*.safetensors"))
    assert files and all(".fp16." in f for f in files), files
    capsys.readouterr()
    ours = SceneTransformer.from_pretrained(str(tmp_path / "fp16")).transform(
        photo, "x", depth=depth, seed=1, steps=2
    )
    np.testing.assert_array_equal(ours.raw, expected)  # the same weights, under their variant's names

    pickled = tmp_path / "pickled"
    shutil.copytree(tmp_path / "fp16", pickled)
    vae = pickled / "vae" / "diffusion_pytorch_model.fp16.safetensors"
    torch.save(load_file(vae), pickled / "vae" / "diffusion_pytorch_model.bin")
    vae.unlink()
    capsys.readouterr()
    with pytest.raises(ModelLoadError, match=f"^model '{pickled}' at {pickled}, whose vae/ has only pickle weights "
                       r"\(diffusion_pytorch_model.bin\); depth2img loads .safetensors weights only .*"
                       "DEPTH2IMG_ALLOW_PICKLE=1"):  # fmt: skip
        SceneTransformer.from_pretrained(str(pickled))
    # a model's folder with no weights at all, or a link to a file gone from the hub cache's blobs (diffusers said
    # "no file named diffusion_pytorch_model.safetensors")
    (pickled / "vae" / "diffusion_pytorch_model.bin").unlink()
    incomplete = (f"^model '{pickled}' at {pickled}, whose vae/ has no weights \\(no .safetensors file\\): an "
                  "incomplete download or copy\\? fetch or copy it again$")  # fmt: skip
    with pytest.raises(ModelLoadError, match=incomplete):
        SceneTransformer.from_pretrained(str(pickled))
    vae.symlink_to(tmp_path / "blobs" / "gone")
    with pytest.raises(ModelLoadError, match=incomplete):
        SceneTransformer.from_pretrained(str(pickled))
    # diffusers' own failure (a component's weights missing, its log dropped): our one line says it
    vae.unlink()
    with monkeypatch.context() as m:
        m.setattr("depth2img.backends.require_safetensors", lambda *args: None)
        with pytest.raises(ModelLoadError, match=f"^model '{pickled}' at {pickled} could not be loaded: "):
            SceneTransformer.from_pretrained(str(pickled))
    assert "An error occurred while trying to fetch" not in capsys.readouterr().err

    # a truncated file: the library's wrapper ("Unable to load weights") and the cause it hid
    truncated = tmp_path / "truncated"
    shutil.copytree(tmp_path / "fp16", truncated)
    weights = truncated / "controlnet" / "diffusion_pytorch_model.fp16.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=r"^ControlNet .*: diffusion_pytorch_model.fp16.safetensors cannot be "
                       r"read \(.*incomplete metadata.*\): an incomplete download or copy\?"):  # fmt: skip
        SceneTransformer.from_pretrained(str(truncated))

    # the base alone: the registry's SD1.5 depth ControlNet, at its pinned revision, from the cache
    alone = tmp_path / "alone" / "my-sd15-finetune"
    shutil.copytree(base, alone)
    entry = next(e for e in backbones().values() if e.pipeline == "sd15-controlnet")
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=f"{entry.controlnet}.*the depth ControlNet for a local sd15-controlnet "
                       f"folder that holds none; put one in {alone}/controlnet/ or a folder beside it named "
                       "my-sd15-finetune-controlnet"):  # fmt: skip
        SceneTransformer.from_pretrained(str(alone))
    repo = cache / ("models--" + entry.controlnet.replace("/", "--"))
    shutil.copytree(controlnet, repo / "snapshots" / entry.companion_revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(entry.companion_revision)
    st = SceneTransformer.from_pretrained(str(alone))
    np.testing.assert_array_equal(st.transform(photo, "x", depth=depth, seed=1, steps=2).raw, expected)
    assert st.backend.companion_ref.name == entry.controlnet


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache at tmp_path / "hub", offline (filled with ``_cached``)."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any depth estimator or backbone that starts to load fails the test (what must be found before loading)."""
    from depth2img import backends
    from depth2img.estimators import DepthEstimator

    def no_loading(*args, **kwargs):
        raise AssertionError("a model started loading")

    monkeypatch.setattr(DepthEstimator, "from_pretrained", no_loading)
    monkeypatch.setattr(backends, "load_backend", no_loading)


def _cached(
    cache: Path, repo_id: str, src: Path, revision: str, *, ref: str | None = "main", tree=()
) -> Path:
    """``src`` as the hub cache holds a download of ``repo_id`` at ``revision`` (``ref`` pointing at it); ``tree``:
    the repository's file list as huggingface_hub caches it on a download (it judges a snapshot complete by it)."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    shutil.copytree(src, snapshot)
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(revision)
    if tree:
        (repo / "trees").mkdir(exist_ok=True)
        files = {name: {"size": 1, "blob_id": "x"} for name in tree}
        (repo / "trees" / f"{revision}.json").write_text(json.dumps({"format_version": 1, "files": files}))
    return snapshot


def test_a_damaged_controlnet_is_blamed_on_its_own_folder(tmp_path, tiny_dir):
    """A review of hub caches (2026-11-28): a ControlNet file lacking weights was said to be the base's ("model
    'sd15-depth' at .../snapshots/451f...: its controlnet file lacks 2 of its 120 weights"), though it lay in the
    ControlNet's own folder."""
    from safetensors.torch import load_file, save_file

    from depth2img import SceneTransformer
    from depth2img.errors import ModelLoadError

    base = tmp_path / "sd15"
    shutil.copytree(tiny_dir / "sd15-depth", base)
    controlnet = tmp_path / "sd15-controlnet"
    shutil.copytree(tiny_dir / "sd15-depth-controlnet", controlnet)
    weights = controlnet / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    dropped = sorted(state)[:2]
    save_file({k: v for k, v in state.items() if k not in dropped}, weights, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=rf"^ControlNet '.*' at {controlnet}: its weights file lacks 2 of its "
                       rf"{len(state)} weights \({re.escape(dropped[0])}, ...\)"):  # fmt: skip
        SceneTransformer.from_pretrained(str(base))


def test_a_component_holding_damaged_or_foreign_weights_is_one_line(tmp_path, tiny_dir):
    """safetensors' own error for a zero-byte text encoder or estimator file (transformers does not wrap it), and a UNet
    file holding the VAE's weights (its own left unloaded, "meta", failing when moved to the device), were internal
    errors. A review of loading (2026-11-28): the line then named no file for a zero-byte text encoder or estimator
    ("could not be loaded: Error while deserializing header: header too small"), and diffusers' UNet file twice in
    full; in a hub cache, the blob a new download would take as fetched went unsaid."""
    from depth2img import SceneTransformer
    from depth2img.errors import ModelLoadError
    from depth2img.estimators import DepthEstimator

    for part, damage in (
        ("text_encoder/model.safetensors", b""),
        ("unet/diffusion_pytorch_model.safetensors", b""),
        ("unet/diffusion_pytorch_model.safetensors", None),
    ):
        folder = tmp_path / f"{part.split('/')[0]}-{damage is None}" / "sd15"
        shutil.copytree(tiny_dir / "sd15-depth", folder)
        shutil.copytree(tiny_dir / "sd15-depth-controlnet", folder.with_name("sd15-controlnet"))
        vae = (folder / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
        (folder / part).write_bytes(vae if damage is None else damage)
        said = (
            r"its unet file lacks 208 of its 208 weights \(conv_in.bias, ...\): another model's file, or a "
            r"damaged one\?$"
            if damage is None
            else f"{part} is empty \\(0 bytes\\): an incomplete download or copy\\? fetch or copy it again$"
        )
        with pytest.raises(ModelLoadError, match=f"^model '{folder}' at {folder}: {said}"):
            SceneTransformer.from_pretrained(str(folder))
    estimator = tmp_path / "estimator"
    shutil.copytree(tiny_dir / "depth-anything", estimator)
    (estimator / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=f"^depth estimator '{estimator}' at {estimator}: model.safetensors is "
                                             "empty \\(0 bytes\\)"):  # fmt: skip
        DepthEstimator.from_pretrained(str(estimator))
    # a hub cache's layout: the snapshot's file a link to an empty blob
    blob = tmp_path / "blobs" / "0123abcd"
    blob.parent.mkdir()
    blob.write_bytes(b"")
    (estimator / "model.safetensors").unlink()
    (estimator / "model.safetensors").symlink_to(blob)
    said = ": model.safetensors is empty \\(0 bytes\\): an incomplete download\\? delete it and the blob it links to "
    with pytest.raises(ModelLoadError, match=f"{said}\\({blob}\\), then fetch it again$"):
        DepthEstimator.from_pretrained(str(estimator))


def test_a_zero_byte_lora_is_named_not_said_not_to_fit(tmp_path, tiny_dir):
    """A review of loading (2026-11-28): a few-step LoRA's zero-byte file was said not to fit the backbone ("LoRA
    '...' does not fit 'tiny': Unable to load weights from checkpoint file for ..."), and the Flux depth LoRA's
    "could not be loaded into" it."""
    from depth2img import SceneTransformer, tiny
    from depth2img.errors import ModelLoadError

    said = "pytorch_lora_weights.safetensors is empty \\(0 bytes\\): an incomplete download or copy\\?"
    lora = tmp_path / "lcm"
    shutil.copytree(tiny_dir / "lcm-sd15", lora)
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=f"^LoRA '{lora}' at {lora}: {said}"):
        SceneTransformer.from_pretrained("tiny", estimator="tiny", lora=str(lora))
    tiny.ensure("flux-depth-lora", tiny_dir / "flux-depth-lora")
    flux = tmp_path / "flux-dev"
    shutil.copytree(tiny_dir / "flux-depth-lora", flux)
    shutil.copytree(tiny_dir / "flux-depth-lora-lora", tmp_path / "flux-dev-lora")
    (tmp_path / "flux-dev-lora" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=f"^LoRA '{flux}-lora' at {flux}-lora: {said}"):
        SceneTransformer.from_pretrained(str(flux), estimator="tiny")


def test_a_text_encoder_without_its_config_is_named_missing(tmp_path, tiny_dir, photos_dir, capsys):
    """A review of loading (2026-11-28): an SD1.5 folder whose text_encoder/config.json was missing was refused as a
    file of other weights ("its text_encoder file holds 36 weights of other shapes than the model's"): transformers
    built its default text encoder; with text_encoder/ gone, it said the pipeline folder held no model.safetensors."""
    from depth2img import SceneTransformer
    from depth2img.errors import ModelLoadError

    for gone in ("text_encoder/config.json", "text_encoder"):
        folder = tmp_path / gone.replace("/", "-") / "sd15"
        shutil.copytree(tiny_dir / "sd15-depth", folder)
        shutil.copytree(tiny_dir / "sd15-depth-controlnet", folder.with_name("sd15-controlnet"))
        (shutil.rmtree if gone == "text_encoder" else Path.unlink)(folder / gone)
        said = f"^model '{folder}' at {folder}: text_encoder/config.json is missing \\(an incomplete download"
        with pytest.raises(ModelLoadError, match=said):
            SceneTransformer.from_pretrained(str(folder))
    code = main(["transform", str(photos_dir / "chelsea.png"), "-o", str(tmp_path / "o"), "--model", str(folder),
                 "--estimator", "tiny", "--prompt", "x", "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "text_encoder/config.json is missing" in err, err


def test_an_estimator_without_its_config_is_named_missing_as_a_pipelines_component_is(
    tmp_path, tiny_dir, photos_dir, monkeypatch, capsys, hub_cache
):
    """A review of loading (2026-11-28): an estimator folder without config.json was refused in transformers' words
    ("Unrecognized model in ... Should have a `model_type` key in its config.json"), as was a backbone's folder given
    as the estimator; one without preprocessor_config.json as "Can't load image processor ... make sure you don't
    have a local directory with the same name". A cached snapshot's said the same; a pipeline's text_encoder/ in a
    hub cache was advised to be fetched or copied again, not the `hf download` that fetches it."""
    from depth2img import backends
    from depth2img.errors import ModelLoadError
    from depth2img.estimators import DepthEstimator
    from depth2img.registry import backbones, estimators, resolve_backbone

    advice = " is missing \\(an incomplete download or copy\\? fetch or copy it again\\)$"
    for gone in ("config.json", "preprocessor_config.json"):
        folder = tmp_path / gone / "estimator"
        shutil.copytree(tiny_dir / "depth-anything", folder)
        (folder / gone).unlink()
        with pytest.raises(ModelLoadError, match=f"^depth estimator '{folder}' at {folder}: {gone}{advice}"):
            DepthEstimator.from_pretrained(str(folder))
    code = main(["depth", str(photos_dir / "chelsea.png"), "-o", str(tmp_path / "d.png"), "--estimator", str(folder),
                 "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "preprocessor_config.json is missing" in err, err
    backbone = tiny_dir / "sd15-depth"
    with pytest.raises(ModelLoadError, match=f"^depth estimator '{backbone}' at {backbone} holds a diffusers "
                       "pipeline \\(model_index.json\\), not a depth estimator; give it as the backbone"):  # fmt: skip
        DepthEstimator.from_pretrained(str(backbone))
    # in a hub cache: the download that fetches it
    cache = hub_cache
    entry = estimators()["depth-anything-v2-small"]
    snapshot = _cached(cache, entry.id, tiny_dir / "depth-anything", entry.revision)
    (snapshot / "config.json").unlink()
    hub_advice = "is missing \\(an incomplete download\\?\\); on a connected machine run `hf download"
    with pytest.raises(ModelLoadError, match=f"^depth estimator 'depth-anything-v2-small' at {snapshot}: config.json "
                       f"{hub_advice} {entry.id} --revision {entry.revision} --include"):  # fmt: skip
        DepthEstimator.from_pretrained("depth-anything-v2-small")
    entry = backbones()["sd15-depth"]
    snapshot = _cached(cache, entry.id, tiny_dir / "sd15-depth", entry.revision)
    _cached(cache, entry.controlnet, tiny_dir / "sd15-depth-controlnet", entry.companion_revision)
    (snapshot / "text_encoder" / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=f"^model 'sd15-depth' at {snapshot}: text_encoder/config.json "
                       f"{hub_advice} {entry.id}"):  # fmt: skip
        backends.load_backend(resolve_backbone("sd15-depth"), dtype=None, local_files_only=True)


def test_a_transformers_model_whose_file_holds_other_weights_is_refused_not_filled_at_random(
    tmp_path, tiny_dir
):
    """A review of loading (2026-11-28): a Depth Anything folder holding DPT's weights, and a text encoder whose file's
    names were not its own, loaded: transformers filled what the file lacked at random, with a warning the CLI keeps
    quiet, and every depth or image came from random weights. A file lacking a few weights, as DPT-hybrid's lacks its
    unused residual block, still loads."""
    from safetensors.torch import load_file, save_file

    from depth2img import SceneTransformer
    from depth2img.errors import Depth2ImgWarning, ModelLoadError
    from depth2img.estimators import DepthEstimator

    estimator = tmp_path / "estimator"
    shutil.copytree(tiny_dir / "depth-anything", estimator)
    shutil.copy(tiny_dir / "dpt" / "model.safetensors", estimator / "model.safetensors")
    said = (
        r"its weights file lacks \d+ of its \d+ weights \(backbone\.\S+, ...\): another model's file, or a damaged "
        r"one\?$"
    )
    with pytest.raises(ModelLoadError, match=f"^depth estimator '{estimator}' at {estimator}: {said}"):
        DepthEstimator.from_pretrained(str(estimator))
    weights = load_file(tiny_dir / "depth-anything" / "model.safetensors")
    # a file of another architecture's shapes: transformers raised, pointing at a report the CLI keeps quiet
    zoe = tmp_path / "zoe"
    shutil.copytree(tiny_dir / "zoedepth", zoe)
    shutil.copy(tiny_dir / "depth-anything" / "model.safetensors", zoe / "model.safetensors")
    with pytest.raises(ModelLoadError, match=rf"^depth estimator '{zoe}' at {zoe}: its weights file holds \d+ weights "
                                             r"of other shapes than the model's \(backbone\.\S+: \(.*\) for \(.*\), "
                                             r"...\): another model's file"):  # fmt: skip
        DepthEstimator.from_pretrained(str(zoe))
    dropped = min(weights, key=lambda name: weights[name].numel())
    save_file({k: v for k, v in weights.items() if k != dropped}, estimator / "model.safetensors")
    DepthEstimator.from_pretrained(str(estimator))

    folder = tmp_path / "sd15"
    shutil.copytree(tiny_dir / "sd15-depth", folder)
    shutil.copytree(tiny_dir / "sd15-depth-controlnet", tmp_path / "sd15-controlnet")
    encoder = folder / "text_encoder" / "model.safetensors"
    save_file({f"renamed.{k}": v for k, v in load_file(encoder).items()}, encoder)
    said = r"its text_encoder file lacks (\d+) of its \1 weights \(\S+, ...\): another model's file"
    with pytest.raises(ModelLoadError, match=f"^model '{folder}' at {folder}: {said}"):
        SceneTransformer.from_pretrained(str(folder))
    # a config of fewer layers than its file's: a cut-down model ran, without a word; now said
    shutil.copy(tiny_dir / "sd15-depth" / "text_encoder" / "model.safetensors", encoder)
    config = json.loads((folder / "text_encoder" / "config.json").read_text())
    config["num_hidden_layers"] -= 1
    (folder / "text_encoder" / "config.json").write_text(json.dumps(config))
    unused = r"its text_encoder file holds \d+ weights its model has no place for \(\S+, ...\): is its config"

    with pytest.warns(Depth2ImgWarning, match=unused):
        SceneTransformer.from_pretrained(str(folder))


def test_a_hub_cache_filled_otherwise_than_the_registry_pins_says_what_it_holds(
    tmp_path, tiny_dir, monkeypatch
):
    """A review of offline caches (2026-11-27): a download of the fp16 files alone, under the file list the hub
    caches with any download, was "not in the cache"; so was one with a file missing, with no word of which; and a
    download of main, not the pinned revision, with no word of it; a registry ControlNet missing was found once the
    backbone had loaded."""
    from diffusers import DiffusionPipeline

    from depth2img import SceneTransformer, backends
    from depth2img.errors import ModelLoadError
    from depth2img.registry import backbones

    entry = backbones()["sd15-depth"]
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    DiffusionPipeline.from_pretrained(tiny_dir / "sd15-depth").save_pretrained(
        tmp_path / "fp16", variant="fp16"
    )
    names = [
        p.relative_to(tmp_path / "fp16").as_posix() for p in (tmp_path / "fp16").rglob("*") if p.is_file()
    ]
    tree = names + [n.replace(".fp16.", ".") for n in names if ".fp16." in n]  # the repo holds both
    snapshot = _cached(cache, entry.id, tmp_path / "fp16", entry.revision, tree=tree)

    def no_loading(*args, **kwargs):
        raise AssertionError("the backbone started loading")

    with monkeypatch.context() as m:  # the registry's ControlNet: missing, before the backbone loads
        m.setattr(backends, "load_backend", no_loading)
        with pytest.raises(
            ModelLoadError, match=f"^ControlNet {entry.controlnet} is not in the local Hugging Face cache"
        ):
            SceneTransformer.from_pretrained("sd15-depth")
    _cached(cache, entry.controlnet, tiny_dir / "sd15-depth-controlnet", entry.companion_revision)
    st_ = SceneTransformer.from_pretrained("sd15-depth", native_size=64)  # the fp16 files alone
    assert st_.backend.ref.location == entry.id and st_.backend.dtype == torch.float32
    photo, depth = _photo_and_depth()
    assert st_.transform(photo, "x", depth=depth, seed=1, steps=2).images[0].size == photo.size

    (snapshot / "unet" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=f"^model sd15-depth .*: the cached download at {snapshot} is incomplete, "
                       r"1 file\(s\) are missing \(unet/diffusion_pytorch_model.fp16.safetensors\); on a connected "
                       f"machine run `hf download {entry.id} --revision {entry.revision} "
                       '--include "\\*.json" .*--include "\\*.fp16.safetensors"'):  # fmt: skip
        SceneTransformer.from_pretrained("sd15-depth")

    # main downloaded, not the pinned revision: said, with the folder that serves
    other = "c" * 40
    snapshot.rename(snapshot.with_name(other))
    (snapshot.parent.parent / "refs" / "main").write_text(other)
    shutil.copy(tmp_path / "fp16" / "unet" / "diffusion_pytorch_model.fp16.safetensors",
                snapshot.with_name(other) / "unet")  # fmt: skip
    with pytest.raises(ModelLoadError, match=f"is not in the local Hugging Face cache and the hub is offline .*; the "
                       f"cache holds it at {other[:12]} \\(main\\), not at revision {entry.revision}: pass "
                       f"{snapshot.with_name(other)} to use that one; on a connected machine"):  # fmt: skip
        SceneTransformer.from_pretrained("sd15-depth")
    SceneTransformer.from_pretrained(
        str(snapshot.with_name(other))
    )  # (its ControlNet: the registry's, cached)


# a SD1.5 repository's files on the hub (stable-diffusion-v1-5/stable-diffusion-v1-5): diffusers' folders, each
# weights file in fp32/fp16/EMA-free, as safetensors and pickles, beside whole checkpoints
SD15_REPO_FILES = [".gitattributes", "README.md", "model_index.json", "v1-inference.yaml", "v1-5-pruned.ckpt",
                   "v1-5-pruned.safetensors", "v1-5-pruned-emaonly.ckpt", "v1-5-pruned-emaonly.safetensors",
                   "feature_extractor/preprocessor_config.json", "scheduler/scheduler_config.json",
                   "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
                   "tokenizer/vocab.json", "safety_checker/config.json", "safety_checker/model.safetensors",
                   "safety_checker/pytorch_model.bin", "text_encoder/config.json", "text_encoder/model.safetensors",
                   "text_encoder/model.fp16.safetensors", "text_encoder/pytorch_model.bin", "unet/config.json",
                   "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                   "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.bin",
                   "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
                   "vae/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.bin"]  # fmt: skip


@pytest.mark.filterwarnings("ignore:.*not marked for commercial use")  # (Hyper-SD's licence)
def test_a_companions_files_missing_from_a_cache_without_its_file_list_are_found_before_any_model_loads(
    tmp_path, tiny_dir, hub_cache, no_model_loads
):
    """A review of loading (2026-11-28): in a hub cache without the repository's file list (trees/, which a download
    writes), any snapshot folder passed as complete, so a few-step LoRA's weights file, or a ControlNet's weights,
    missing from it were found once the estimator and the backbone had loaded."""
    from depth2img import SceneTransformer
    from depth2img.errors import ModelLoadError
    from depth2img.registry import backbones, loras

    cache = hub_cache
    # a repository of several LoRAs holding another one's file
    hyper = loras()["hyper-sd15-8step"]
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(
        tiny_dir / "lcm-sd15" / "pytorch_lora_weights.safetensors", other / "Hyper-SD15-12steps.safetensors"
    )
    snapshot = _cached(cache, hyper.id, other, hyper.revision)
    with pytest.raises(
        ModelLoadError,
        match=f"^LoRA 'hyper-sd15-8step' at {snapshot}: no {hyper.weight_name}: an incomplete download",
    ):
        SceneTransformer.from_pretrained(
            "tiny", estimator="tiny", lora="hyper-sd15-8step", local_files_only=True
        )
    # a ControlNet given apart, and a registry backbone's own, of a config alone
    config = tmp_path / "config-only"
    config.mkdir()
    shutil.copy(tiny_dir / "sd15-depth-controlnet" / "config.json", config)
    snapshot = _cached(cache, "someone/depth-controlnet", config, "b" * 40)
    said = "has no weights \\(no .safetensors file\\): an incomplete download or copy\\?"
    with pytest.raises(ModelLoadError, match=f"^ControlNet 'someone/depth-controlnet' at {snapshot} {said}"):
        SceneTransformer.from_pretrained("tiny", estimator="tiny", controlnet="someone/depth-controlnet")
    entry = backbones()["sd15-depth"]
    _cached(cache, entry.id, tiny_dir / "sd15-depth", entry.revision)
    snapshot = _cached(cache, entry.controlnet, config, entry.companion_revision)
    with pytest.raises(ModelLoadError, match=f"^ControlNet '{entry.controlnet}' at {snapshot} {said}"):
        SceneTransformer.from_pretrained("sd15-depth", estimator="tiny")


def test_a_registry_controlnet_without_its_config_in_a_cache_is_an_incomplete_download(
    tmp_path, tiny_dir, hub_cache, no_model_loads
):
    """A review of loading (2026-11-28): the registry's ControlNet (lllyasviel/control_v11f1p_sd15_depth) whose cached
    snapshot lacked config.json was said to hold "no config.json naming a model class, not a diffusers
    ControlNetModel", with no advice, where one given apart (--controlnet someone/cn) was an incomplete download to
    fetch with `hf download`. A config.json naming another class is still said to be no ControlNetModel."""
    from depth2img import SceneTransformer
    from depth2img.errors import ModelLoadError
    from depth2img.registry import backbones

    cache = hub_cache
    entry = backbones()["sd15-depth"]
    _cached(cache, entry.id, tiny_dir / "sd15-depth", entry.revision)
    snapshot = _cached(cache, entry.controlnet, tiny_dir / "sd15-depth-controlnet", entry.companion_revision)
    (snapshot / "config.json").unlink()
    apart = _cached(cache, "someone/cn", snapshot, "c" * 40)
    for name, held, pin in ((entry.controlnet, snapshot, f" --revision {entry.companion_revision}"),
                            ("someone/cn", apart, "")):  # fmt: skip
        said = (f"^ControlNet {name}: its cached download at {held} holds no config.json \\(a repository of "
                f"another kind, or an incomplete download\\); on a connected machine run `hf download {name}{pin} "
                "--include")  # fmt: skip
        with pytest.raises(ModelLoadError, match=said):
            SceneTransformer.from_pretrained(
                "sd15-depth", estimator="tiny", controlnet=None if held == snapshot else name
            )
    shutil.copy(tiny_dir / "sd15-depth" / "unet" / "config.json", snapshot)
    with pytest.raises(ModelLoadError, match=f"^ControlNet '{entry.controlnet}' at {snapshot} holds "
                       "UNet2DConditionModel, not a diffusers ControlNetModel$"):  # fmt: skip
        SceneTransformer.from_pretrained("sd15-depth", estimator="tiny")


@pytest.mark.filterwarnings("ignore:.*not marked for commercial use")  # (FLUX.1 [dev]'s licence)
def test_a_companions_empty_weights_in_a_cache_are_found_before_any_model_loads(
    tmp_path, tiny_dir, hub_cache, no_model_loads
):
    """A zero-byte weights file (an interrupted download's) of a few-step LoRA or a ControlNet given apart, in a hub
    cache, was named once the estimator and the backbone had loaded (session 31's re-verification)."""
    from depth2img import SceneTransformer
    from depth2img.errors import ModelLoadError
    from depth2img.registry import loras

    lora = tmp_path / "lora"
    shutil.copytree(tiny_dir / "lcm-sd15", lora)
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"")
    lcm = loras()["lcm-sd15"]
    snapshot = _cached(hub_cache, lcm.id, lora, lcm.revision)
    with pytest.raises(ModelLoadError, match=f"^LoRA 'lcm-sd15' at {snapshot}: pytorch_lora_weights.safetensors is "
                       "empty \\(0 bytes\\)"):  # fmt: skip
        SceneTransformer.from_pretrained("tiny", estimator="tiny", lora="lcm-sd15")
    controlnet = tmp_path / "controlnet"
    shutil.copytree(tiny_dir / "sd15-depth-controlnet", controlnet)
    (controlnet / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    snapshot = _cached(hub_cache, "someone/cn", controlnet, "c" * 40)
    with pytest.raises(ModelLoadError, match=f"^ControlNet 'someone/cn' at {snapshot}: diffusion_pytorch_model"
                       ".safetensors is empty \\(0 bytes\\)"):  # fmt: skip
        SceneTransformer.from_pretrained("tiny", estimator="tiny", controlnet="someone/cn")


def test_a_loras_weights_missing_from_a_cache_are_an_incomplete_download(
    tmp_path, tiny_dir, monkeypatch, hub_cache
):
    """A review of loading (2026-11-28): a few-step LoRA's (lcm-sd15) or the Flux depth LoRA's weights missing from
    a cached snapshot was said as "expected one .safetensors file, found 0", with no advice, where a ControlNet's were
    an incomplete download or copy to fetch again; the Flux loader had its own copy of the check."""
    from depth2img import SceneTransformer, backends
    from depth2img.errors import ModelLoadError
    from depth2img.estimators import DepthEstimator
    from depth2img.registry import backbones, loras, resolve_backbone

    cache = hub_cache
    monkeypatch.setattr(
        DepthEstimator, "from_pretrained", lambda *a, **k: pytest.fail("the estimator loaded")
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("a LoRA")
    said = (
        "expected one .safetensors file, found 0: an incomplete download or copy\\? fetch or copy it again$"
    )
    lcm = loras()["lcm-sd15"]
    snapshot = _cached(cache, lcm.id, empty, lcm.revision)
    with pytest.raises(ModelLoadError, match=f"^LoRA 'lcm-sd15' at {snapshot}: {said}"):
        SceneTransformer.from_pretrained("tiny", estimator="tiny", lora="lcm-sd15")
    flux = backbones()["flux-depth-lora"]
    _cached(cache, flux.id, tiny_dir / "flux-depth-lora", flux.revision)
    snapshot = _cached(cache, flux.lora, empty, flux.companion_revision)
    with pytest.raises(ModelLoadError, match=f"^LoRA '{flux.lora}' at {snapshot}: {said}"):
        SceneTransformer.from_pretrained("flux-depth-lora", estimator="tiny")
    # the loader's own check, found before the base loads
    with pytest.raises(ModelLoadError, match=f"^LoRA '{flux.lora}' at {snapshot}: {said}"):
        backends.load_backend(resolve_backbone("flux-depth-lora"), dtype=None, local_files_only=True)


def test_the_download_advised_offline_fetches_what_the_loader_loads():
    """It advised `hf download ID`, which for SD1.5 fetches its pickles and whole checkpoints too (tens of GB);
    the command now passes the loader's patterns (of the fp16 variant, where that download was incomplete)."""
    import shlex

    from huggingface_hub.utils import filter_repo_objects

    from depth2img.loading import IGNORED_FILES, PIPELINE_FILES, _fp16_patterns, download_command
    from depth2img.registry import ModelRef

    ref = ModelRef(name="sd15", location="stable-diffusion-v1-5/stable-diffusion-v1-5", revision="abc",
                   is_local=False)  # fmt: skip
    fetched = {}
    for name, (allow, ignore) in {"plain": (PIPELINE_FILES, IGNORED_FILES),
                                  "fp16": _fp16_patterns(PIPELINE_FILES)}.items():  # fmt: skip
        words = shlex.split(download_command(ref, allow, ignore))
        assert words[:5] == ["hf", "download", ref.location, "--revision", "abc"]
        options = list(zip(words[5::2], words[6::2]))
        assert len(words) % 2 == 1 and {flag for flag, _ in options} == {"--include", "--exclude"}
        include, exclude = ([v for flag, v in options if flag == f] for f in ("--include", "--exclude"))
        fetched[name] = sorted(
            filter_repo_objects(SD15_REPO_FILES, allow_patterns=include, ignore_patterns=exclude)
        )
        assert fetched[name] == sorted(filter_repo_objects(SD15_REPO_FILES, allow_patterns=allow,
                                                           ignore_patterns=ignore)), name  # fmt: skip
    config = ["feature_extractor/preprocessor_config.json", "model_index.json", "scheduler/scheduler_config.json",
              "text_encoder/config.json", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
              "tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "unet/config.json", "vae/config.json"]  # fmt: skip
    assert fetched["plain"] == sorted(config + ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model."
                                                "safetensors", "vae/diffusion_pytorch_model.safetensors"])  # fmt: skip
    assert fetched["fp16"] == sorted(config + ["text_encoder/model.fp16.safetensors", "unet/diffusion_pytorch_model."
                                               "fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"])  # fmt: skip
    # one file (a few-step LoRA's), named as such
    assert (
        download_command(ref, ["lora.safetensors"])
        == f"hf download {ref.location} --revision abc lora.safetensors"
    )
    # a name a shell would split, quoted
    assert shlex.split(download_command(ref, ["my lora.safetensors"]))[5:] == ["my lora.safetensors"]


def test_a_cached_repository_of_another_kind_is_not_called_missing(tmp_path, tiny_dir, monkeypatch):
    """Offline, a cached depth estimator's repository given as a backbone (a pipeline as a ControlNet) was "not in
    the local Hugging Face cache"."""
    from depth2img import SceneTransformer
    from depth2img.errors import ModelLoadError

    cache = tmp_path / "hub"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    estimator = _cached(cache, "someone/depth", tiny_dir / "depth-anything", "a" * 40)
    pipeline = _cached(cache, "someone/sd15", tiny_dir / "sd15-depth", "b" * 40)
    # (a review of hub caches, 2026-11-28: an estimator's repository was "of another kind, or an incomplete download",
    # with `hf download` as the fix, which cannot fix it)
    with pytest.raises(ModelLoadError, match=f"^model someone/depth: its cached download at {estimator} holds no "
                       r"model_index.json: it is a depth estimator \(a 'depth_anything' model\), not a diffusion "
                       r"backbone; give it as the estimator \(--estimator\)$"):  # fmt: skip
        SceneTransformer.from_pretrained("someone/depth")
    with pytest.raises(ModelLoadError, match=f"^{estimator} is not a diffusers pipeline folder .*: it is a depth "
                       "estimator"):  # fmt: skip
        SceneTransformer.from_pretrained(str(estimator))
    # the same of a repository of another kind
    (estimator / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match=r"holds no model_index.json \(a repository of another kind, or an "
                       '.*`hf download someone/depth --include "\\*.json"'):  # fmt: skip
        SceneTransformer.from_pretrained("someone/depth")
    with pytest.raises(ModelLoadError, match=f"^ControlNet someone/sd15: its cached download at {pipeline} holds no "
                       "config.json"):  # fmt: skip
        SceneTransformer.from_pretrained("tiny", controlnet="someone/sd15")
    with pytest.raises(ModelLoadError, match="^model someone/other is not in the local Hugging Face cache"):
        SceneTransformer.from_pretrained("someone/other")


def test_a_ref_file_written_with_a_newline_is_named(tmp_path, tiny_dir, monkeypatch):
    """A review of hub caches (2026-11-28): refs/main written with a newline ('echo SHA > refs/main') for a hub id
    outside the registry: "its cached download at .../snapshots/SHA holds no model_index.json", though it held one
    (huggingface_hub reads the file whole and found no such commit; ours stripped it)."""
    from depth2img import SceneTransformer
    from depth2img.errors import ModelLoadError

    cache = tmp_path / "hub"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sha = "b" * 40
    snapshot = _cached(cache, "someone/sd15", tiny_dir / "sd15-depth", sha)
    ref_file = snapshot.parent.parent / "refs" / "main"
    ref_file.write_text(sha + "\n")
    with pytest.raises(ModelLoadError, match=f"^model someone/sd15: the cache's {ref_file} holds commit {sha} with "
                       r"whitespace \(a newline\) around it, .*; write the commit alone \(`printf %s "
                       f"{sha} > {ref_file}`"):  # fmt: skip
        SceneTransformer.from_pretrained("someone/sd15")


def test_a_folder_with_one_component_in_the_fp16_variant_alone_loads(tmp_path, tiny_dir):
    """Only a whole folder of fp16-variant files was loaded as the variant: with one component's alone (a partial
    download of the variant), diffusers said "no file named diffusion_pytorch_model.safetensors" beside it."""
    from depth2img import SceneTransformer
    from depth2img.tiny import TINY_NATIVE_SIZE

    shutil.copytree(tiny_dir / "sd15-depth", tmp_path / "m")
    shutil.copytree(tiny_dir / "sd15-depth-controlnet", tmp_path / "m-controlnet")
    unet = tmp_path / "m" / "unet"
    (unet / "diffusion_pytorch_model.safetensors").rename(unet / "diffusion_pytorch_model.fp16.safetensors")
    # SD1.5's safety checker, named by the model index and never loaded: its folder's weights are not asked for
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (tmp_path / "m" / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "m" / "safety_checker").mkdir()
    (tmp_path / "m" / "safety_checker" / "config.json").write_text("{}")
    photo, depth = _photo_and_depth()
    ours = SceneTransformer.from_pretrained(str(tmp_path / "m"), native_size=TINY_NATIVE_SIZE)
    expected = (
        SceneTransformer.from_pretrained("tiny").transform(photo, "x", depth=depth, seed=1, steps=2).raw
    )
    np.testing.assert_array_equal(ours.transform(photo, "x", depth=depth, seed=1, steps=2).raw, expected)


def test_a_flux_depth_lora_missing_is_found_before_the_base_loads(tmp_path, tiny_dir, monkeypatch):
    """FLUX.1-dev (tens of GB) loaded before its depth Control LoRA was looked for."""
    from depth2img import SceneTransformer, backends, tiny
    from depth2img.errors import ModelLoadError

    tiny.ensure("flux-depth-lora", tiny_dir / "flux-depth-lora")
    shutil.copytree(tiny_dir / "flux-depth-lora", tmp_path / "flux-dev")  # the base alone, no LoRA beside it

    def no_loading(*args, **kwargs):
        raise AssertionError("the base started loading")

    monkeypatch.setattr(backends.Backend, "_from_pretrained", no_loading)
    with pytest.raises(ModelLoadError, match="no lora found"):
        SceneTransformer.from_pretrained(str(tmp_path / "flux-dev"))


def test_no_remote_code_anywhere():
    root = Path(__file__).resolve().parent.parent / "depth2img"
    for py in root.glob("*.py"):
        assert "trust_remote_code=True" not in py.read_text(), py


# ------------------------------------------------------------------------------------------ out of memory


@pytest.fixture
def oom_over_one(monkeypatch):
    """The backend runs out of memory whenever it is asked for more than one image at once."""
    from depth2img.backends import Backend

    original = Backend.__call__

    def limited(self, **kwargs):
        if len(kwargs["generators"]) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, **kwargs)

    monkeypatch.setattr(Backend, "__call__", limited)


def test_oom_is_one_line_naming_the_fix(oom_over_one, chelsea):
    from depth2img.transformer import SceneTransformer

    st_ = SceneTransformer.from_pretrained("tiny")
    with pytest.raises(
        OutOfMemory,
        match=r"out of GPU memory generating 2 image.* try fewer images \(--num-images, num_images=\), --offload model",
    ):
        st_.transform(chelsea, "x", steps=2, num_images=2)
    assert len(st_.transform(chelsea, "x", steps=2, num_images=1).images) == 1


def test_batch_job_halves_the_batch_on_oom_and_completes(oom_over_one, tmp_path, chelsea):
    from depth2img.batch import read_manifest, run_job

    chelsea.resize((64, 48)).save(tmp_path / "a.png")
    job = tmp_path / "job.yaml"
    job.write_text(
        "inputs: a.png\noutput: out\nmodel: tiny\npresets: [fog]\nseeds: 4\nknobs: {steps: 2, strength: 0.5}\n"
    )
    report = run_job(job, progress=False)
    assert report.done == 4 and report.oom_splits == 3 and not report.failed  # 4 -> 2+2 -> 1+1+1+1
    assert sorted(r["item_seed"] for r in read_manifest(tmp_path / "out" / "manifest.jsonl")) == [0, 1, 2, 3]


@pytest.mark.parametrize("oom", [True, False], ids=["out-of-memory", "bad-input"])
def test_batch_job_records_an_item_that_never_fits_and_goes_on(monkeypatch, tmp_path, chelsea, oom):
    """An item whose generation fails even alone (out of memory, or an input the pipeline refuses) is recorded
    as failed and the job goes on; only an out-of-memory split makes later batches smaller."""
    from depth2img.backends import Backend
    from depth2img.batch import run_job
    from depth2img.errors import InputError

    calls = []

    def first_variation_oom(self, **kwargs):
        calls.append(kwargs["prompts"])
        if any("fog" in p for p in kwargs["prompts"]):
            if oom:
                raise torch.OutOfMemoryError("CUDA out of memory")
            raise InputError("depth is constant (no structure)")
        depth = kwargs["depths"][0]
        return np.zeros((len(kwargs["generators"]), depth.height, depth.width, 3), np.float32)

    monkeypatch.setattr(Backend, "__call__", first_variation_oom)
    chelsea.resize((64, 48)).save(tmp_path / "a.png")
    job = tmp_path / "job.yaml"
    job.write_text(
        "inputs: a.png\noutput: out\nmodel: tiny\npresets: [fog, rain]\nseeds: 2\nknobs: {steps: 2, strength: 0.5}\n"
    )
    report = run_job(job, progress=False)
    # fog and rain share one batch of 4; halved until each fog image fails alone, the rain ones are made
    assert report.done == 2 and len(report.failed) == 2
    assert [f.split(": ")[0].split(" ", 1)[1] for f in report.failed] == ["[fog] seed 0", "[fog] seed 1"]
    if oom:
        assert "out of GPU memory" in report.failed[0] and report.batch_limit == 1 and report.oom_splits == 2
    else:
        assert report.failed[0].endswith("seed 0: depth is constant (no structure)")
        assert report.batch_limit is None and report.oom_splits == 0
    assert [len(c) for c in calls] == [4, 2, 1, 1, 2]
    assert isinstance(OutOfMemory("x"), Depth2ImgError)
    assert (
        json.loads((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()[0])["variation"] == "rain"
    )


# ------------------------------------------------------------------------------------------ CPU offload


def test_group_offload_gives_the_same_images(chelsea):
    """Group offloading moves where weights rest, not the result. Run here CPU->CPU (on a GPU the copies ride a
    CUDA stream), with the ControlNet window and the feature cache, whose forward swaps sit above its hooks."""
    from depth2img.backends import offload_pipeline
    from depth2img.transformer import SceneTransformer

    st_ = SceneTransformer.from_pretrained("tiny")
    photo = chelsea.resize((64, 64))
    knobs = dict(steps=4, seed=[3, 4], control_end=0.5, feature_cache=2)
    before = st_.transform(photo, "a street", **knobs).raw
    offload_pipeline(st_.backend.pipe, "group", torch.device("cpu"))
    for name in ("unet", "controlnet", "vae", "text_encoder"):
        module = getattr(st_.backend.pipe, name)
        assert any(hasattr(m, "_diffusers_hook") for m in module.modules()), name
    np.testing.assert_array_equal(before, st_.transform(photo, "a street", **knobs).raw)


def test_offload_modes_reach_diffusers_with_the_chosen_device(monkeypatch):
    """What --offload asks diffusers for on a GPU (faked: the calls are recorded, not run)."""
    from depth2img.backends import load_backend
    from depth2img.registry import resolve_backbone

    backend = load_backend(resolve_backbone("tiny"), dtype=torch.float32)
    calls = []
    for method in ("enable_model_cpu_offload", "enable_sequential_cpu_offload", "enable_group_offload"):
        monkeypatch.setattr(
            backend.pipe, method, lambda method=method, **kw: calls.append((method, kw)), raising=False
        )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for mode in ("model", "sequential", "group"):
        backend.memory(device="cuda:0", offload=mode)
    cuda = torch.device("cuda:0")
    assert calls == [
        ("enable_model_cpu_offload", {"device": cuda}),
        ("enable_sequential_cpu_offload", {"device": cuda}),
        ("enable_group_offload", {"onload_device": cuda, "offload_device": torch.device("cpu"),
                                  "offload_type": "leaf_level", "use_stream": True, "exclude_modules": None}),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "dtype", "excluded"),
    [("tiny/sdxl-depth", torch.float16, ["vae"]), ("tiny/sdxl-depth", torch.bfloat16, None),
     ("tiny", torch.float16, None)],
)  # fmt: skip
def test_group_offload_keeps_an_upcast_vae_on_the_gpu(monkeypatch, model, dtype, excluded):
    """SDXL pipelines cast an fp16 VAE with force_upcast to float32 to decode; group offloading would copy its fp16
    weights back (a dtype error on an H200). Only that VAE stays out of the offload: SD1.5's pipeline and other
    dtypes never upcast, so theirs is offloaded like every model."""
    from depth2img.backends import load_backend
    from depth2img.registry import resolve_backbone

    backend = load_backend(resolve_backbone(model), dtype=dtype)
    assert backend.pipe.vae.config.force_upcast  # the tiny VAEs, like the real SD1.5 and SDXL ones
    calls = []
    monkeypatch.setattr(backend.pipe, "enable_group_offload", lambda **kw: calls.append(kw))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    backend.memory(device="cuda", offload="group")
    assert [kw["exclude_modules"] for kw in calls] == [excluded]


@pytest.mark.parametrize("offload", ["model", "group", "sequential"])
def test_offload_without_a_gpu_is_one_line(capsys, tmp_path, chelsea, offload):
    chelsea.save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["transform", str(tmp_path / "a.png"), "-o", str(out), "--model", "tiny", "--prompt", "x",
                 "--offload", offload]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        f"offload {offload!r} moves weights between CPU and GPU; no GPU is available here"
    )
    assert not out.exists() or not any(out.iterdir())


def test_offload_on_a_cpu_device_of_a_gpu_machine_names_the_device(monkeypatch):
    import torch

    from depth2img.backends import check_memory_options

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(
        Depth2ImgError, match="^offload 'model' moves weights between CPU and GPU; device 'cpu' is not a GPU$"
    ):
        check_memory_options(device="cpu", offload="model")
    assert check_memory_options(device=None, offload="group") == ("group", torch.device("cuda"))


@pytest.mark.parametrize(
    ("device", "problem"),
    [("nope", "device 'nope' is not one of cpu, cuda, mps, xpu (cuda and xpu take an index, e.g. cuda:1)"),
     ("meta", "device 'meta' is not one of cpu, cuda, mps, xpu (cuda and xpu take an index, e.g. cuda:1)"),
     ("mps", "device 'mps' was asked for but MPS is not available here"),
     ("xpu", "device 'xpu' was asked for but XPU is not available here"),
     ("cuda:1", "device 'cuda:1' was asked for but CUDA is not available here"),
     ("cpu:1", "device 'cpu:1' was asked for but CPU devices here are numbered 0..0")],
)  # fmt: skip
def test_a_device_this_machine_lacks_is_one_line_before_any_model_loads(
    capsys, tmp_path, chelsea, device, problem
):
    """Before, mps/xpu/meta got past the check and failed inside torch as an 'internal error' (exit 1, or after a
    progress bar had started); now every entry point refuses them as bad input (exit 2), with no output folder."""
    from depth2img.transformer import SceneTransformer

    with pytest.raises(Depth2ImgError) as raised:
        SceneTransformer.from_pretrained("tiny", estimator="tiny", device=device)
    assert str(raised.value) == problem
    chelsea.save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert (
        main(["depth", str(tmp_path / "a.png"), "-o", str(out), "--estimator", "tiny", "--device", device])
        == 2
    )
    # the flag named (it said 'device': a re-verification of 2026-11-28)
    assert capsys.readouterr().err.strip().splitlines()[-1] == "depth2img: error: --" + problem
    assert not out.exists()


def test_a_gpu_index_past_the_last_gpu_is_refused(monkeypatch):
    from depth2img.loading import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1") and resolve_device("cuda") == torch.device(
        "cuda"
    )
    with pytest.raises(
        Depth2ImgError, match=r"^device 'cuda:2' was asked for but CUDA devices here are numbered 0\.\.1$"
    ):
        resolve_device("cuda:2")


def test_an_unknown_dtype_is_bad_input():
    from depth2img.errors import InputError
    from depth2img.loading import resolve_dtype

    with pytest.raises(
        InputError, match="^dtype 'int8' is not one of bf16, bfloat16, float16, float32, fp16, fp32$"
    ):
        resolve_dtype("int8", torch.device("cpu"))


def test_unknown_offload_is_refused_by_the_api():
    from depth2img.transformer import SceneTransformer

    with pytest.raises(
        Depth2ImgError, match="offload must be one of none, model, group, sequential, got 'disk'"
    ):
        SceneTransformer.from_pretrained("tiny", offload="disk")


def test_a_failed_manifest_append_leaves_no_part_of_its_lines(tmp_path, monkeypatch):
    """A full disk cut a line short: its files were removed, but the torn piece stayed, and the next input's line
    was appended onto it (one line, no JSON: that input's files had no readable line)."""
    import errno
    import os

    from depth2img import outputs

    manifest = tmp_path / "manifest.jsonl"
    outputs.append_manifest(manifest, [{"output": "a.png"}])
    kept = manifest.read_bytes()
    (tmp_path / "b.png").write_bytes(b"png")
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        outputs.append_manifest(manifest, [{"output": "b.png", "prompt": "x" * 5000}], [tmp_path / "b.png"])
    monkeypatch.setattr(os, "fsync", real)
    assert manifest.read_bytes() == kept and not (tmp_path / "b.png").exists()
    outputs.append_manifest(manifest, [{"output": "c.png"}])
    assert [r["output"] for r in outputs.read_manifest(manifest)] == ["a.png", "c.png"]


def test_one_path_as_a_string_is_one_input_not_its_letters(tmp_path, chelsea, monkeypatch):
    """run_depth("/x/a.png") walked the string: "/" and "." were folders, so the current folder's images ran."""
    from depth2img.depth_run import run_depth
    from depth2img.errors import InputError
    from depth2img.transform_run import run_transform

    (tmp_path / "here").mkdir()
    chelsea.save(tmp_path / "here" / "unrelated.png")
    chelsea.save(tmp_path / "a.png")
    # a right view: the scene 8 px to the left
    Image.fromarray(np.roll(np.asarray(chelsea), -8, axis=1)).save(tmp_path / "b.png")
    monkeypatch.chdir(tmp_path / "here")
    report = run_depth(
        str(tmp_path / "a.png"), tmp_path / "o", estimator="tiny", formats=["npy"], progress=False
    )
    assert (len(report.done), report.failed) == (1, []) and sorted(
        p.name for p in (tmp_path / "o").iterdir()
    ) == ["a_depth.npy"]
    report = run_depth(tmp_path / "a.png", tmp_path / "p", right=str(tmp_path / "b.png"), formats=["npy"],
                       progress=False)  # fmt: skip
    assert len(report.done) == 1
    for call, message in (
        (lambda: run_depth([tmp_path / "a.png", 3], tmp_path / "q"), "inputs must hold file paths (str or os.PathLike), got 3 (int)"),
        (lambda: run_depth(chelsea, tmp_path / "q"), "inputs must be a file path or a list of them, got Image"),
        (lambda: run_transform(tmp_path / "a.png", tmp_path / "q", prompt="x", depth=b"a.png"), "depth must be a file path or a list of them, got bytes"),
    ):  # fmt: skip
        with pytest.raises(InputError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
            call()
    assert not (tmp_path / "q").exists()


def test_a_read_only_manifest_is_compacted_as_its_folder_allows_and_its_torn_line_left(tmp_path, monkeypatch):
    """A manifest the user made read-only (in a folder that is not): compaction opens it for reading only, so its
    torn last line (a run killed mid-write) is not cut in place where nothing is to be compacted, and a rewrite
    (which leaves that line out) is renamed over it, as the folder allows. The tests run as root, who may write
    any file: os.access is made to say what it says to a user."""
    import os

    from depth2img import outputs

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"png")
    main = tmp_path / "manifest.jsonl"
    line = {"item": "a", "output": "images/a.png"}
    outputs.append_manifest(
        main, [line, {**line, "item": "gone", "output": "images/gone.png"}, {**line, "n": 2}]
    )
    with open(main, "ab") as fh:
        fh.write(b'{"item": "torn", "out')
    main.chmod(0o444)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: mode != os.W_OK and real_access(p, mode))
    opened = []
    real_locked = outputs.locked_manifest

    def locked(path, mode):
        opened.append(mode)
        return real_locked(path, mode)

    monkeypatch.setattr(outputs, "locked_manifest", locked)
    outputs.compact_manifest(main)
    assert opened == ["rb"]
    # the last line of the image that exists; the removed image's line, the torn line and the older one gone
    assert [json.loads(x) for x in main.read_text().splitlines()] == [{**line, "n": 2}]
    with open(main, "ab") as fh:  # another torn line (os.access still says the file is read-only)
        fh.write(b'{"item": "torn", "out')
    before = main.read_bytes()
    outputs.compact_manifest(main)  # nothing to compact: the file as it was, torn line and all
    assert opened == ["rb", "rb"] and main.read_bytes() == before


@pytest.mark.parametrize("rewrite", ["compact", "settle"])
def test_a_line_appended_while_another_run_rewrites_the_manifest_is_kept(tmp_path, monkeypatch, rewrite):
    """Two runs into one folder: one's end-of-run rewrite of the manifest (transform's compaction, batch's merge)
    read it, then renamed its rewrite over it, so the lines the other appended in between were lost (a review:
    80 images, 72 lines). Rewrites and appends now take the manifest's lock; the appender waits."""
    import threading
    import time

    from depth2img import batch, outputs

    (tmp_path / "images").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "images" / f"{name}.png").write_bytes(b"png")
    main = tmp_path / "manifest.jsonl"
    line = {"item": "a", "attempt": 0, "final": True, "output": "images/a.png", "source": "a"}
    if rewrite == "compact":  # a line for a file removed since: compaction rewrites the file
        outputs.append_manifest(main, [line, {**line, "item": "gone", "output": "images/gone.png"}])
    else:  # a multi-process run's rank file: the merge rewrites manifest.jsonl
        outputs.append_manifest(tmp_path / "manifest.rank0.jsonl", [line])
    module = outputs if rewrite == "compact" else batch
    read = module.manifest_index

    def slow(*args, **kw):  # the rewrite has read the manifest, and has not yet put its new one in place
        time.sleep(0.5)
        return read(*args, **kw)

    monkeypatch.setattr(module, "manifest_index", slow)
    work = (
        partial(outputs.compact_manifest, main)
        if rewrite == "compact"
        else partial(batch._settle_manifests, tmp_path)
    )
    other = threading.Thread(target=work)
    other.start()
    time.sleep(0.2)
    outputs.append_manifest(main, [{**line, "item": "c", "output": "images/c.png"}])  # the other run's image
    other.join()
    monkeypatch.setattr(module, "manifest_index", read)
    assert sorted(r["item"] for r in outputs.read_manifest(main)) == ["a", "c"]


def test_api_errors_name_the_python_argument_and_refuse_bad_types(tmp_path, chelsea, capsys):
    """The Python API named CLI flags (``--right``, ``--depth``) to a caller that used keywords, and bad types escaped
    as TypeError (a list as polarity: "unhashable type"), were taken as nothing (``depth=[None]`` estimated the depth
    instead), or failed every input once the models had loaded (``knobs={"steps": "2"}``). Nothing is written."""
    from depth2img import io as dio
    from depth2img.depth_run import run_depth
    from depth2img.errors import InputError
    from depth2img.outputs import write_transform_result
    from depth2img.stereo import stereo_depth
    from depth2img.transform_run import run_transform

    ok = tmp_path / "a.png"
    chelsea.save(ok)
    out = tmp_path / "out"
    calls = [
        (partial(run_depth, [ok], out, right=[ok], estimator="tiny"), r"^right matches stereo pairs .*: estimator does"),
        (partial(run_depth, [ok], out, right=[]), r"^right: 0 right images for 1 left inputs"),
        (partial(run_depth, [ok], out, right=[None]), r"^right must hold file paths .*got None"),
        (partial(run_depth, [], out), r"^inputs is empty"),
        (partial(run_depth, [ok], None), r"^output folder must be a path .*got None"),
        (partial(run_depth, [ok], out, on_error=5), r"^on_error must be a function"),
        (partial(run_transform, [ok], out, depth=[]), r"^depth: 0 depth files for 1 inputs"),
        (partial(run_transform, [ok], out, depth=[None]), r"^depth must hold file paths .*got None"),
        (partial(run_transform, [ok], out, knobs="steps"), r"^knobs must be a dict"),
        (partial(run_transform, [ok], out, knobs={"steps": "2"}), r"^steps must be an integer in 1\.\.1000, got '2'"),
        # any mapping is taken, and checked as a dict is (it was refused as no dict)
        (partial(run_transform, [ok], out, knobs=MappingProxyType({"steps": "2"})), r"^steps must be an integer in 1"),
        (partial(run_transform, [ok], out, knobs={"guidance_scale": float("nan")}), r"^guidance_scale must be in"),
        (partial(run_transform, [ok], out, seed="x"), r"^seed must be an integer"),
        (partial(run_transform, [ok], out, seed=[1, 2], num_images=3), r"^seed is a list of 2 seeds and num_images 3"),
        # two images of one name: one overwrote the other, both manifest lines kept (a job refused it already)
        (partial(run_transform, [ok], out, seed=[4, 1, 4]), r"^seed lists 4 more than once; each seed makes one"),
        (partial(run_transform, [ok], out, num_images=0), r"^num_images must be an integer in 1\.\.64, got 0"),
        (partial(run_transform, [ok], out, scheduler="eulr"), r"^scheduler 'eulr' is not one of unipc, "),
        (partial(run_transform, [ok], out, load_options=5), r"^load_options must be a dict"),
        (partial(run_transform, [ok], out, on_warning="x"), r"^on_warning must be a function"),
        (partial(dio.read_depth_file, ok, polarity=[]), r"must be one of .*got \[\]"),
        (partial(DepthMap, np.ones((4, 4)), []), r"^depth kind must be one of .*got \[\]"),
        (partial(dio.write_depth_products, DepthMap(np.ones((4, 4)), "metric_depth"), None, "x"), r"^out_dir must be"),
        (partial(dio.write_depth_products, np.ones((4, 4)), out, "x"), r"^depth must be a DepthMap, got ndarray"),
        (partial(write_transform_result, None, out, "x"), r"^result must be a TransformResult, got NoneType"),
    ]  # fmt: skip
    left = np.asarray(chelsea)
    for kw, shown in (("num_disparities", "'16'"), ("num_disparities", "16.0"), ("block_size", "'5'"),
                      ("block_size", "True")):  # fmt: skip
        calls.append(
            (partial(stereo_depth, left, left, **{kw: eval(shown)}), rf"^{kw} must be .*got {shown}$")
        )
    for call, message in calls:
        with pytest.raises(InputError, match=message):
            call()
    assert not out.exists()
    # the CLI still names its flags
    capsys.readouterr()
    assert main(["depth", str(ok), "-o", str(out), "--right", str(ok), "--estimator", "tiny"]) == 2
    assert capsys.readouterr().err.startswith("depth2img: error: --right matches stereo pairs (OpenCV SGBM, on the "
                                              "CPU): --estimator does not apply")  # fmt: skip
    assert main(["transform", str(ok), "-o", str(out), "--prompt", "x", "--scheduler", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("depth2img: error: --scheduler 'bogus' is not one of unipc, ddim")
    assert not out.exists()
    # one presets file as a str is that file (it was read letter by letter), None is none
    from depth2img.batch import load_job
    from depth2img.presets import load_presets
    from depth2img.transformer import SceneTransformer

    (tmp_path / "p.yaml").write_text("presets:\n  mine: {prompt: '{prompt}, mine'}\n")
    (tmp_path / "job.yaml").write_text("inputs: a\noutput: o\npresets: [mine]\n")
    assert load_job(tmp_path / "job.yaml", extra_presets_files=str(tmp_path / "p.yaml")).presets == ["mine"]
    assert load_presets(None) == load_presets()
    st = SceneTransformer.from_pretrained("tiny", preset_files=None)
    with pytest.raises(InputError, match=r"^scheduler \[\] is not one of unipc, "):
        st.transform(chelsea, "x", steps=2, scheduler=[])
    assert (
        st.transform(chelsea, "x", steps=2, scheduler="").metadata[0]["scheduler"] == "unipc"
    )  # the default


def test_the_device_recorded_names_a_gpu(monkeypatch):
    """The manifest's device: a GPU's model (another GPU, like another dtype, gives a close image, not the same)."""
    import torch

    from depth2img.transformer import _device_label

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert _device_label(torch.device("cuda", 0)) == "cuda (NVIDIA H100 80GB HBM3)"
    assert _device_label(torch.device("cpu")) == "cpu" and _device_label("mps") == "mps"


def test_a_service_checks_its_device_and_dtype_when_made(capsys):
    """`depth2img app --device cuda:7` served, and said so only at the first Generate; any torch.dtype was taken
    (torch.int8 failed as a ControlNet that could not be loaded, float64 ran)."""
    import torch

    from depth2img.errors import InputError
    from depth2img.loading import resolve_dtype
    from depth2img.service import Service

    for device, message in (("cuda:7", "CUDA is not available here"), ("tpu", "device 'tpu' is not one of")):
        with pytest.raises(InputError, match=message):
            Service(model="tiny", device=device)
    with pytest.raises(InputError, match=r"dtype torch.int8 is not one of"):
        Service(model="tiny", dtype=torch.int8)
    for bad in (torch.float64, torch.int8, 16):
        with pytest.raises(InputError, match="is not one of"):
            resolve_dtype(bad, torch.device("cpu"))
    assert resolve_dtype(torch.bfloat16, torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("BF16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype(np.dtype("float16"), torch.device("cpu")) == torch.float16  # as it was taken
    # from_pretrained: before the backbone's files are fetched (5 as an estimator failed at the first transform)
    from depth2img.transformer import SceneTransformer

    for kwargs, message in ((dict(dtype="int8"), "dtype 'int8' is not one of"),
                            (dict(estimator=5), "estimator must be a registry name, a folder or a DepthEstimator, got 5"),
                            (dict(presets=5), "presets must be a dict of presets")):  # fmt: skip
        with pytest.raises(InputError, match=message):
            SceneTransformer.from_pretrained("not/on-the-hub", **kwargs)
    assert main(["app", "--model", "tiny", "--device", "cuda:7"]) == 2
    assert "CUDA is not available here" in capsys.readouterr().err


def test_run_transform_refuses_what_it_would_ignore_or_fail_late(tmp_path, chelsea, monkeypatch):
    """A review of the API (2026-11-28): with a loaded SceneTransformer, ``estimator`` and ``load_options`` were ignored
    without a word (its own estimator ran, in its dtype); a load option it does not take was Python's TypeError once the
    estimator had loaded; an unknown preset, or no prompt, failed each input once the models had loaded. Each is one
    InputError before anything loads or is written."""
    from depth2img import SceneTransformer
    from depth2img.errors import InputError
    from depth2img.transform_run import run_transform

    ok, out = tmp_path / "a.png", tmp_path / "out"
    chelsea.resize((64, 48)).save(ok)
    loaded = SceneTransformer.from_pretrained("tiny")

    # (its signature: run_transform checks load_options by it)
    @functools.wraps(SceneTransformer.from_pretrained)
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(SceneTransformer, "from_pretrained", no_loading)
    for kwargs, said in (
        (dict(model=loaded, estimator="tiny"), r"^model is a loaded SceneTransformer: estimator does not apply to it"),
        (dict(model=loaded, load_options={"dtype": "bfloat16"}, estimator="tiny"),
         r"^model is a loaded SceneTransformer: estimator and load_options do not apply to it"),
        (dict(model="tiny", load_options={"bogus": 1}),
         r"^load_options: 'bogus' is not an argument it takes \(device,"),
        (dict(model="tiny", load_options={"estimator": "tiny"}), r"^load_options: 'estimator' is not an argument it "
         r"takes .*; the estimator is estimator$"),
        (dict(model="tiny", load_options={"presets": {"a": "b"}}), r"^load_options\['presets'\] must be a dict of "
         r"presets"),
        (dict(model="tiny", preset="nope"), r"^unknown preset 'nope'; known: "),
        (dict(model=loaded, preset="nope"), r"^unknown preset 'nope'; known: "),
        (dict(model="tiny", prompt="  "), r"^give a prompt or a preset \(see `depth2img presets`\); both are empty$"),
        (dict(model="tiny", prompt=5), r"^prompt must be a string, got int 5$"),
    ):  # fmt: skip
        with pytest.raises(InputError, match=said):
            run_transform([ok], out, **{"prompt": "x", **kwargs}, knobs={"steps": 2}, progress=False)
    assert not out.exists()
    # the words and presets of a loaded one pass, and it runs
    ran = run_transform([ok], out, model=loaded, preset="fog", knobs={"steps": 2}, progress=False)
    assert len(ran.done) == 1


def test_api_arguments_that_were_ignored_or_failed_late_are_one_line(tmp_path, chelsea):
    """A review of the API (2026-11-28): each of these was ignored, a raw TypeError / AttributeError / OSError, or
    failed only at the first transform."""
    import warnings
    from pathlib import Path

    from PIL import Image

    from depth2img import DepthEstimator, DepthMap, SceneTransformer
    from depth2img.depth_run import run_depth
    from depth2img.errors import Depth2ImgWarning, InputError
    from depth2img.outputs import write_transform_result
    from depth2img.presets import Preset

    photo = chelsea.resize((64, 48))
    ok = tmp_path / "a.png"
    photo.save(ok)
    # presets of the wrong contents, an estimator folder that is not there: refused by from_pretrained
    with pytest.raises(
        InputError, match=r"^presets must be a dict of presets \(presets.load_presets\), got \{'foo'"
    ):
        SceneTransformer.from_pretrained("tiny", presets={"foo": "{prompt}, foo"})
    with pytest.raises(InputError, match=r"^estimator '.*no-such-estimator' is not a registry name"):
        SceneTransformer.from_pretrained("tiny", estimator=Path(tmp_path / "no-such-estimator"))
    slow = {"slow": Preset("slow", "{prompt}, slow", knobs={"strength": 0.2})}
    st = SceneTransformer.from_pretrained("tiny", presets=slow)
    # a preset's knob that makes the arguments fail is named (the CLI named it; the API did not)
    with pytest.raises(InputError, match=r"leave 0; raise either \(with the knobs of preset slow\)$"):
        st.transform(photo, "x", preset="slow", steps=2)
    with pytest.raises(InputError, match=r"^transform: 'stepz' is not an argument it takes \(with the image and "
                                         r"prompt: preset, negative_prompt, depth,"):  # fmt: skip
        st.transform(photo, "x", stepz=2)
    with pytest.raises(InputError, match=r"^variations: 'stepz' is not an argument it takes"):
        st.variations(photo, presets=["slow"], stepz=2)
    # a DepthMap's own kind is kept over a polarity given against it: said, not silent
    depth = DepthMap(np.linspace(1, 2, 48 * 64).reshape(48, 64), "metric_depth")
    with pytest.warns(Depth2ImgWarning, match=r"^depth: the DepthMap is metric_depth \(metric\), which it keeps; the "
                                              r"polarity given \(far-bright\) is for arrays and files"):  # fmt: skip
        result = st.transform(photo, "x", depth=depth, depth_polarity="far-bright", steps=2, seed=0)
    assert result.depth.kind == "metric_depth" and any(
        "the DepthMap is metric_depth" in w for w in result.warnings
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", Depth2ImgWarning)
        st.transform(photo, "x", depth=depth, depth_polarity="metric", steps=2, seed=0)
    # write_transform_result: a tuple for files (a TypeError once every file was written, no manifest line) and a
    # thread count that is none, refused before anything is written
    for kwargs, said in ((dict(files=()), r"^files must be a list \(it gets the paths written\), got tuple \(\)$"),
                         (dict(threads=None), r"^threads must be an integer >= 1, got None$"),
                         (dict(threads=0), r"^threads must be an integer >= 1, got 0$")):  # fmt: skip
        with pytest.raises(InputError, match=said):
            write_transform_result(result, tmp_path / "w", "a", **kwargs)
    assert not (tmp_path / "w").exists()
    # a loaded estimator runs where and as it was loaded: device and dtype beside it were ignored
    estimator = DepthEstimator.from_pretrained("tiny")
    with pytest.raises(
        InputError, match=r"^estimator is a loaded DepthEstimator: device and dtype do not apply"
    ):
        run_depth([ok], tmp_path / "d", estimator=estimator, device="cuda", dtype="bfloat16", progress=False)
    assert not (tmp_path / "d").exists()
    # a truncated file opened by the caller (Pillow's OSError at first use), a float image holding NaN (black)
    (tmp_path / "cut.png").write_bytes(ok.read_bytes()[:-200])
    with pytest.raises(InputError, match=r"^image: the image cannot be decoded \(image file is truncated"):
        st.transform(Image.open(tmp_path / "cut.png"), "x", steps=2)
    nan = Image.fromarray(np.full((48, 64), np.nan, np.float32), "F")
    with pytest.raises(InputError, match=r"^image: a float \(mode F\) image holding NaN or infinite values$"):
        st.transform(nan, "x", steps=2)
