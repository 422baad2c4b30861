"""Estimators through the project's own loader, against transformers' own depth pipeline."""

import json
import re
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from depth2img.errors import InputError, ModelLoadError
from depth2img.estimators import DepthEstimator


@pytest.fixture(scope="module")
def images(chelsea):
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)) for h, w in [(45, 67), (100, 40)]]
    return [chelsea, noise[0], chelsea.resize((67, 45)), noise[1]]


@pytest.mark.parametrize("name", ["tiny", "tiny/dpt-hybrid"])
def test_equals_transformers_pipeline(name, images):
    from transformers import pipeline

    est = DepthEstimator.from_pretrained(name)
    ours = est(images, batch_size=3)
    reference = pipeline("depth-estimation", model=est.ref.location, device="cpu")
    for img, depth in zip(images, ours):
        theirs = reference(img)["predicted_depth"].numpy()
        assert depth.values.shape == theirs.shape == (img.height, img.width)
        scale = np.abs(theirs).max()
        assert np.abs(depth.values - theirs).max() <= 1e-5 * scale
        assert depth.kind == "relative_inverse_depth"


def test_batched_equals_one_by_one(images):
    est = DepthEstimator.from_pretrained("tiny")
    batched = est(images, batch_size=4)
    for img, depth in zip(images, batched):
        single = est(img)
        assert np.abs(single.values - depth.values).max() <= 1e-5 * np.abs(single.values).max()
    for bad in (0, "4", 2.5):
        with pytest.raises(
            InputError, match=f"^batch_size must be an integer >= 1, got {re.escape(repr(bad))}$"
        ):
            est(images, batch_size=bad)


def test_images_of_any_mode_are_estimated_as_load_image_would_convert_them(chelsea):
    """An L or RGBA image given to the API went to the processor as it was and failed, the error blaming its size."""
    from depth2img.io import to_rgb

    est = DepthEstimator.from_pretrained("tiny")
    small = chelsea.resize((64, 48))
    clear = small.convert("RGBA")
    clear.putalpha(0)
    for image in (small.convert("L"), clear, small.convert("I;16")):
        np.testing.assert_array_equal(est(image).values, est(to_rgb(image)).values)


def test_isolated_puts_a_refused_images_error_in_its_place(images):
    est = DepthEstimator.from_pretrained("tiny")
    strip = Image.new("RGB", (256, 16))  # the tiny model's 56 px input would give it a side of 0 px
    with pytest.raises(InputError, match=r"^images\[1\]: 256x16 cannot be resized for estimator 'tiny'"):
        est([images[0], strip, images[1]], batch_size=3)
    counted = []
    got = est.isolated([images[0], strip, images[1]], batch_size=3, progress=counted.append)
    assert isinstance(got[1], InputError) and str(got[1]).startswith("image: 256x16 cannot be resized")
    # transformers' reason whole (cut at 80 characters it stopped mid-sentence, before the side of 0 px)
    assert str(got[1]).endswith(")") and "height=0" in str(got[1]) and "\n" not in str(got[1])
    for img, depth in zip(images[:2], (got[0], got[2])):
        assert np.array_equal(depth.values, est(img).values)
    assert sum(counted) == 3  # the progress bar counts each image once
    assert [d.values.shape for d in est.isolated(images[:2])] == [
        (300, 451),
        (45, 67),
    ]  # batched when it can be


def test_a_non_finite_estimate_is_its_images_error_counted_once(images, monkeypatch):
    """NaN from the estimator (a float16 overflow) read "depth has N NaN or infinite values at pixels marked
    valid", naming neither the estimator nor the image; isolated() then counted the batch's images twice."""

    from depth2img.errors import GenerationError

    est = DepthEstimator.from_pretrained("tiny")
    real = est._post_process

    def nan_for_the_small_one(outputs, sizes):
        return [
            d.fill_(float("nan")) if size == (45, 67) else d for d, size in zip(real(outputs, sizes), sizes)
        ]

    monkeypatch.setattr(est, "_post_process", nan_for_the_small_one)
    with pytest.raises(
        GenerationError, match=r"^images\[1\]: estimator 'tiny' gave 3015 NaN or infinite depth values$"
    ):
        est([images[0], images[1]])
    counted = []
    got = est.isolated(
        [images[0], images[1]], progress=counted.append
    )  # batches of one on CPU: 0 ran, 1 failed
    assert isinstance(got[1], GenerationError) and got[0].values.shape == (300, 451)
    assert sum(counted) == 2
    est.model.half()  # the estimator in float16: the likely cause is named
    with pytest.raises(
        GenerationError,
        match=r"float16 overflows where bfloat16 and float32 do not \(--dtype, the API's dtype=\)$",
    ):
        est(images[1])


def test_zoedepth_is_metric_at_input_size(images):
    est = DepthEstimator.from_pretrained("tiny/zoedepth")
    depths = est(images)
    assert est.kind == "metric_depth"
    assert [d.values.shape for d in depths] == [(im.height, im.width) for im in images]
    assert all(np.isfinite(d.values).all() and (d.values > 0).all() for d in depths)


def test_loads_from_a_plain_folder_and_dtype(tiny_dir):
    est = DepthEstimator.from_pretrained(str(tiny_dir / "depth-anything"), dtype="bfloat16")
    assert est.dtype == torch.bfloat16 and est.kind == "relative_inverse_depth"
    assert est(Image.new("RGB", (33, 21))).values.shape == (21, 33)


def test_offline_hub_id_fails_fast_with_how_to(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        DepthEstimator.from_pretrained("depth-anything-v2-small")
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "depth-anything/Depth-Anything-V2-Small-hf" in msg and "hf download" in msg and "\n" not in msg


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        DepthEstimator.from_pretrained("Intel/dpt-hybrid-midas")
    assert time.monotonic() - start < 10


def test_not_a_depth_model_refused(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                         vocab_size=10)).save_pretrained(tmp_path / "bert")  # fmt: skip
    with pytest.raises(
        ModelLoadError, match="^depth estimator '.*' is a 'bert' model, not a known depth estimator"
    ):
        DepthEstimator.from_pretrained(str(tmp_path / "bert"))


@pytest.mark.parametrize("name, message", [("nope", "not a registry name"), ("./missing/dir", "not a registry name"),
                                           ("tiny/sd9", "no tiny model for 'sd9'")])  # fmt: skip
def test_unknown_names(name, message):
    with pytest.raises(InputError, match=message):
        DepthEstimator.from_pretrained(name)


def test_tiny_lora_names_the_tiny_loras():
    """'--lora tiny' said "no tiny model for None" (LoRAs have no default)."""
    from depth2img.registry import resolve_lora

    with pytest.raises(
        InputError, match="^lora 'tiny': there is no default tiny lora; name one: tiny/lcm-sd15, "
    ):
        resolve_lora("tiny")


def test_a_metric_depth_anything_checkpoint_is_metric(tmp_path):
    """Depth Anything's metric checkpoints (depth_estimation_type 'metric') give metres; loaded by hub id or folder
    they were read as inverse depth, with near and far swapped in every product."""
    from depth2img import tiny

    model, processor = tiny.depth_anything()
    model.config.depth_estimation_type, model.config.max_depth = "metric", 80
    model.save_pretrained(tmp_path / "metric", safe_serialization=True)
    processor.save_pretrained(tmp_path / "metric")
    assert DepthEstimator.from_pretrained(str(tmp_path / "metric")).kind == "metric_depth"
    tiny.write_estimator("depth-anything", tmp_path / "relative")
    assert DepthEstimator.from_pretrained(str(tmp_path / "relative")).kind == "relative_inverse_depth"


def test_tiny_is_built_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPTH2IMG_TINY_DIR", str(tmp_path / "fresh"))
    est = DepthEstimator.from_pretrained("tiny/dpt-hybrid")
    assert (tmp_path / "fresh" / "dpt" / "model.safetensors").is_file()
    assert est.kind == "relative_inverse_depth"


def test_a_tiny_model_an_older_build_wrote_is_rebuilt(tmp_path, monkeypatch):
    import json

    from depth2img import tiny

    monkeypatch.setenv("DEPTH2IMG_TINY_DIR", str(tmp_path))
    DepthEstimator.from_pretrained("tiny/dpt-hybrid")
    folder = tmp_path / "dpt"
    assert tiny.is_current(folder, "dpt")
    (folder / "left-over").write_text("")
    DepthEstimator.from_pretrained("tiny/dpt-hybrid")  # this build's folder: loaded as it is
    assert (folder / "left-over").exists()
    (folder / "left-over").write_text("")
    (folder / tiny.STAMP).write_text(json.dumps({"build": tiny.BUILD - 1, "kind": "dpt"}))  # an older build's
    DepthEstimator.from_pretrained("tiny/dpt-hybrid")
    assert not (folder / "left-over").exists() and tiny.is_current(folder, "dpt")


def test_a_folder_without_the_tiny_stamp_is_not_removed_to_write_a_tiny_model(tmp_path, monkeypatch):
    """A review of tiny-model (2026-11-28): a folder in $DEPTH2IMG_TINY_DIR named like a tiny model but without its
    stamp (not written by depth2img) was removed, its files with it, and a tiny model written in its place."""
    from depth2img import tiny
    from depth2img.errors import ModelLoadError

    monkeypatch.setenv("DEPTH2IMG_TINY_DIR", str(tmp_path))
    (tmp_path / "dpt").mkdir()
    (tmp_path / "dpt" / "precious.txt").write_text("precious")
    with pytest.raises(ModelLoadError) as err:
        DepthEstimator.from_pretrained("tiny/dpt-hybrid")
    assert str(err.value) == (
        f"tiny model 'dpt': {tmp_path / 'dpt'} exists and is not a tiny model depth2img wrote (no {tiny.STAMP}); "
        "remove it or set DEPTH2IMG_TINY_DIR to another folder"
    )
    assert [p.name for p in (tmp_path / "dpt").iterdir()] == ["precious.txt"]


def test_processes_that_start_together_write_a_tiny_model_once(tmp_path, monkeypatch):
    import json
    import threading
    import time

    from depth2img import tiny

    writes = []

    def slow_write(kind, folder):  # long enough that, unlocked, both would see no folder and both write
        writes.append(kind)
        time.sleep(0.3)
        folder.mkdir()
        (folder / tiny.STAMP).write_text(json.dumps({"build": tiny.BUILD, "kind": kind}))

    monkeypatch.setattr(tiny, "write", slow_write)
    threads = [threading.Thread(target=tiny.ensure, args=("dpt", tmp_path / "dpt")) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert writes == ["dpt"]


def test_a_current_tiny_model_is_loaded_from_a_folder_that_cannot_be_written(tmp_path, monkeypatch):
    import json

    import filelock

    from depth2img import tiny
    from depth2img.errors import ModelLoadError

    def unwritable(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setenv("DEPTH2IMG_TINY_DIR", str(tmp_path))
    DepthEstimator.from_pretrained("tiny/dpt-hybrid")
    monkeypatch.setattr(filelock, "FileLock", unwritable)
    DepthEstimator.from_pretrained("tiny/dpt-hybrid")  # current: no lock taken, nothing written
    (tmp_path / "dpt" / tiny.STAMP).write_text(json.dumps({"build": tiny.BUILD - 1, "kind": "dpt"}))
    with pytest.raises(ModelLoadError, match=r"^tiny model 'dpt' cannot be written to .*dpt \(.*Permission denied.*"
                                             r"set DEPTH2IMG_TINY_DIR to a folder you can write$"):  # fmt: skip
        DepthEstimator.from_pretrained("tiny/dpt-hybrid")


def _pins():
    from depth2img import registry

    entries = {**registry.estimators(), **registry.backbones(), **registry.loras()}
    for name, entry in entries.items():
        yield name, entry.id, entry.revision
        companion = entry.controlnet or entry.lora
        if companion:
            yield name, companion, entry.companion_revision


def test_every_registry_revision_is_a_pinned_commit():
    pins = list(_pins())
    assert len(pins) == 16  # 5 estimators, 5 backbones (+3 companion repos), 3 few-step LoRAs
    for name, repo, revision in pins:
        assert re.fullmatch(r"[0-9a-f]{40}", revision), (name, repo, revision)


def test_pinned_revision_loads_from_the_hub_cache_offline(tmp_path, tiny_dir, monkeypatch):
    """The real path: registry name -> hub id at its pinned SHA -> the local HF cache -> loaded (offline)."""
    from huggingface_hub import constants

    from depth2img import registry

    sha = registry.estimators()["depth-anything-v2-small"].revision
    repo = tmp_path / "hub" / "models--depth-anything--Depth-Anything-V2-Small-hf"
    shutil.copytree(tiny_dir / "depth-anything", repo / "snapshots" / sha)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    est = DepthEstimator.from_pretrained("depth-anything-v2-small")
    assert est(Image.new("RGB", (40, 30))).values.shape == (30, 40)
    # another commit in the cache (say main moved on) is not the pinned one: refused, with the command that fixes it
    (repo / "snapshots" / sha).rename(repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    with pytest.raises(ModelLoadError, match=r"^depth estimator depth-anything-v2-small \(depth-anything/Depth-"
                       f".* not in the local Hugging Face cache.*hf download depth-anything/Depth-Anything-V2-Small-hf "
                       f"--revision {sha}"):  # fmt: skip
        DepthEstimator.from_pretrained("depth-anything-v2-small")


def test_a_hub_id_outside_the_registry_records_the_commit_it_was_loaded_from(tmp_path, tiny_dir, monkeypatch):
    """A review of hub loading (2026-11-28): a hub id outside the registry (its branch's files) recorded revision
    null, though the cache's snapshot names the commit: once the branch moved, nobody could tell which weights had
    made a dataset's depths."""
    from huggingface_hub import constants

    commit = "e" * 40
    repo = tmp_path / "hub" / "models--me--depth"
    shutil.copytree(tiny_dir / "depth-anything", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    est = DepthEstimator.from_pretrained("me/depth", local_files_only=True)
    assert est.provenance["id"] == "me/depth" and est.provenance["revision"] == commit
    # a folder records none (it names no commit)
    assert DepthEstimator.from_pretrained(str(tiny_dir / "depth-anything")).provenance["revision"] is None


def test_registry_entries_are_complete_and_revisions_travel(tmp_path, monkeypatch):
    from depth2img import loading, registry
    from depth2img.backends import _companion_ref

    for entry in list(registry.estimators().values()) + list(registry.backbones().values()):
        assert entry.id.count("/") == 1 and entry.revision and entry.licence != "unknown" and entry.tiny
    assert not registry.estimators()["depth-anything-v2-large"].commercial
    assert registry.estimators()["zoedepth"].output == "metric_depth"
    seen = {}

    def fake_snapshot(**kwargs):
        seen.update(kwargs)
        raise FileNotFoundError

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    ref = registry.resolve_backbone("sdxl-depth")
    with pytest.raises(ModelLoadError):
        loading.snapshot_dir(ref, local_files_only=True)
    assert (
        seen["repo_id"] == "stabilityai/stable-diffusion-xl-base-1.0"
        and seen["revision"] == ref.entry.revision
    )
    assert "*.bin" in seen["ignore_patterns"]
    cn = _companion_ref(ref, tmp_path, "controlnet")
    assert (
        cn.location == "diffusers/controlnet-depth-sdxl-1.0" and cn.revision == ref.entry.companion_revision
    )


def test_a_pipeline_download_takes_only_what_loads(tiny_dir, tmp_path):
    """A hub pipeline's snapshot took SD1.5's safety checker (1.2 GB), SD2-depth's DPT and SDXL's spare VAE, which
    no backend loads (each passes None for them); the pipeline loads without them."""
    import shutil

    from huggingface_hub.utils import filter_repo_objects

    from depth2img.loading import IGNORED_FILES, PIPELINE_FILES
    from depth2img.transformer import SceneTransformer

    repo = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors", "text_encoder/model.safetensors", "v1-5-pruned.safetensors",
            "safety_checker/model.safetensors", "safety_checker/config.json", "depth_estimator/model.safetensors",
            "vae_1_0/diffusion_pytorch_model.safetensors", "feature_extractor/preprocessor_config.json"]  # fmt: skip
    kept = list(filter_repo_objects(repo, allow_patterns=PIPELINE_FILES, ignore_patterns=IGNORED_FILES))
    assert kept == ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                    "text_encoder/model.safetensors", "feature_extractor/preprocessor_config.json"]  # fmt: skip
    folder = tmp_path / "sd2-depth"
    shutil.copytree(tiny_dir / "sd2-depth", folder, ignore=shutil.ignore_patterns("depth_estimator"))
    st = SceneTransformer.from_pretrained(str(folder), estimator="tiny")
    assert st.backend.kind == "sd2-depth" and st.backend.pipe.depth_estimator is None


def test_a_non_commercial_model_is_said_once_before_it_is_fetched(monkeypatch):
    """A dataset made with Depth Anything V2 Base or FLUX.1 [dev] carried no word of their non-commercial licences:
    `depth2img models` and the app's list said it, a run did not."""
    import warnings

    from depth2img import loading
    from depth2img.errors import Depth2ImgWarning, ModelLoadError
    from depth2img.registry import resolve_estimator

    monkeypatch.setattr(loading, "_LICENCES_SAID", set())
    ref = resolve_estimator("depth-anything-v2-base")
    with pytest.warns(Depth2ImgWarning, match=r"^depth-anything-v2-base \(depth-anything/Depth-Anything-V2-Base-hf\) "
                      r"is licensed cc-by-nc-4.0: not marked for commercial use"):  # fmt: skip
        with pytest.raises(ModelLoadError):  # offline, not in the cache
            loading.snapshot_dir(ref, local_files_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once a process
        with pytest.raises(ModelLoadError):
            loading.snapshot_dir(ref, local_files_only=True)
        with pytest.raises(ModelLoadError):  # a commercial one says nothing
            loading.snapshot_dir(resolve_estimator("depth-anything-v2-small"), local_files_only=True)
        # nor does a multi-process run's other processes (8 GPUs said it 8 times)
        monkeypatch.setattr(loading, "_LICENCES_SAID", set())
        monkeypatch.setenv("RANK", "3")
        with pytest.raises(ModelLoadError):
            loading.snapshot_dir(ref, local_files_only=True)


@pytest.mark.parametrize("model", ["zoedepth", "dpt", "metric depth-anything"])
def test_a_registry_estimator_whose_cache_holds_another_model_is_refused(
    tmp_path, tiny_dir, monkeypatch, model
):
    """A review of hub caches (2026-11-28): the registry's output kind was taken for whatever its cache held: a
    ZoeDepth (metres) in Depth Anything V2's place was read as inverse depth, near and far swapped, exit 0, and a DPT
    ran silently. Folders were checked against their model type; registry entries were not."""
    from huggingface_hub import constants

    from depth2img import registry

    sha = registry.estimators()["depth-anything-v2-small"].revision
    snapshot = tmp_path / "hub" / "models--depth-anything--Depth-Anything-V2-Small-hf" / "snapshots" / sha
    shutil.copytree(tiny_dir / model.split()[-1], snapshot)
    found = f"'{model.split()[-1].replace('-', '_')}' model"
    if model.startswith("metric"):
        config = json.loads((snapshot / "config.json").read_text())
        (snapshot / "config.json").write_text(json.dumps({**config, "depth_estimation_type": "metric"}))
        found += " giving metric_depth"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("depth-anything-v2-small", "depth-anything/Depth-Anything-V2-Small-hf"):
        with pytest.raises(ModelLoadError, match=rf"^depth estimator .* at {snapshot} holds a {found}, not the "
                           r"'depth_anything' model giving relative_inverse_depth that 'depth-anything-v2-small' "
                           "names$"):  # fmt: skip
            DepthEstimator.from_pretrained(name)
