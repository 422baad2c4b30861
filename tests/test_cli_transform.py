"""`depth2img transform` and `depth2img presets`: outputs, manifest, and one line per error with exit 2."""

import contextlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from depth2img.cli import main
from depth2img.outputs import read_png_metadata


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_transform_happy_path(tmp_path, photos_dir, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", out, "--model", "tiny", "--preset",
                       "rain+night", "--prompt", "a cat", "--seed", 4, "--num-images", 2, "--steps", 2, "-q")  # fmt: skip
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["chelsea_control.png", "chelsea_depth16.png", "chelsea_depth_preview.png",
                     "chelsea_rain+night_s4.png", "chelsea_rain+night_s5.png", "manifest.jsonl"]  # fmt: skip
    for seed in (4, 5):
        img = Image.open(out / f"chelsea_rain+night_s{seed}.png")
        assert img.size == (451, 300)
        meta = read_png_metadata(out / f"chelsea_rain+night_s{seed}.png")
        assert (
            meta["seed"] == seed and meta["preset"] == "rain+night" and meta["source"].endswith("chelsea.png")
        )
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [x["seed"] for x in lines] == [4, 5] and all(x["steps"] == 2 for x in lines)


@pytest.mark.parametrize(
    ("model", "problem"),
    [("foo/bar", "model foo/bar is not in the local Hugging Face cache and the hub is offline (local_"),
     # (a folder by its absolute path, as recorded)
     ("folder", "{tmp_path}/folder is not a diffusers pipeline folder (no model_index.json)"),
     # an ill-formed hub id was an internal error (HFValidationError), or advice to `hf download me/sd15@main`
     ("me/sd15@main", "model 'me/sd15@main' is not a registry name (sd15-depth, sd2-depth, sdxl-depth, flux-depth"),
     # a mistyped folder of one '/' reads as a hub id: that no such folder is there either was unsaid
     ("folder/sd15-deptth", "model folder/sd15-deptth is not in the local Hugging Face cache and the hub is offline "
      "(local_files_only / HF_HUB_OFFLINE) (nor is there a folder folder/sd15-deptth: folder holds no sd15-deptth)")],
)  # fmt: skip
def test_a_backbone_that_cannot_load_is_named_before_the_estimator_loads(tmp_path, photos_dir, capsys, monkeypatch,
                                                                          model, problem):  # fmt: skip
    """The default estimator (not cached here) loaded first, so its problem was reported for a bad --model."""
    from depth2img import estimators

    (tmp_path / "folder").mkdir()
    monkeypatch.chdir(tmp_path)
    loaded = []
    monkeypatch.setattr(estimators.DepthEstimator, "from_pretrained", lambda *a, **k: loaded.append(a))
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", tmp_path / "o", "--model", model,
                       "--prompt", "x", "-q")  # fmt: skip
    problem = problem.replace("{tmp_path}", str(tmp_path))
    assert code == 2 and err.splitlines()[-1].startswith("depth2img: error: " + problem)
    assert loaded == [] and not (tmp_path / "o").exists()


def test_an_ill_formed_hub_id_is_refused_as_one():
    """'owner/name@rev' and a space: HFValidationError (an internal error), or advice to `hf download` the id typed."""
    from depth2img.errors import InputError
    from depth2img.registry import resolve_backbone, resolve_companions

    valid = r"a valid hub id \(owner/name, of letters, digits, '-', '_' and '\.'; no revision in it\) or an "
    for name in ("me/sd15@main", "me/a b"):
        with pytest.raises(InputError, match=rf"^model '{name}' is not a registry name .*, {valid}"):
            resolve_backbone(name)
    with pytest.raises(InputError, match=r"^lora 'me/l@main' is not .*a valid hub id"):
        resolve_companions("me/l@main", None)


def test_a_relative_folder_is_recorded_as_the_folder_it_is(
    tmp_path, photos_dir, capsys, monkeypatch, tiny_dir
):
    """'--model m/sd15-depth' given from m's parent was recorded as typed, as a hub id 'm/sd15-depth' would be."""
    monkeypatch.chdir(tiny_dir.parent)
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", tmp_path / "o", "--prompt", "x",
                       "--model", f"{tiny_dir.name}/sd15-depth", "--estimator", f"{tiny_dir.name}/depth-anything",
                       "--steps", 2, "-q")  # fmt: skip
    meta = json.loads((tmp_path / "o" / "manifest.jsonl").read_text().splitlines()[0])
    assert code == 0, err
    assert (meta["backbone"]["id"], meta["backbone"]["controlnet"], meta["depth"]["id"]) == (
        str(tiny_dir / "sd15-depth"),
        str(tiny_dir / "sd15-depth-controlnet"),
        str(tiny_dir / "depth-anything"),
    )


def test_transform_with_own_depth_file(tmp_path, photos_dir, capsys):
    np.save(tmp_path / "d.npy", np.linspace(1, 50, 300 * 451).reshape(300, 451))
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", tmp_path / "o", "--model", "tiny",
                       "--prompt", "x", "--depth", tmp_path / "d.npy", "--depth-polarity", "metric", "--steps", 2,
                       "--seed", 0, "-q")  # fmt: skip
    assert code == 0, err
    meta = read_png_metadata(tmp_path / "o" / "chelsea_s0.png")
    assert meta["depth"] == {"kind": "metric_depth", "source": str(tmp_path / "d.npy"), "polarity": "metric"}
    # a missing input: the message says why there are more depth files than inputs
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", tmp_path / "gone.png", "-o", tmp_path / "p",
                       "--model", "tiny", "--prompt", "x", "--depth", tmp_path / "d.npy", "--depth", tmp_path / "d.npy",
                       "--depth-polarity", "metric", "-q")  # fmt: skip
    assert code == 2 and err.splitlines()[-1].endswith(
        "--depth: 2 depth files for 1 inputs; give one per input (1 input not found, above: the pairs are unknown)"
    )
    # one depth file for the input found, the other missing: it was taken as the found input's (a review of stereo
    # pairs, 2026-11-28, whose right images paired so)
    inputs, out = [tmp_path / "gone.png", photos_dir / "chelsea.png"], tmp_path / "q"
    code, _, err = run(capsys, "transform", *inputs, "-o", out, "--model", "tiny", "--prompt", "x", "--depth",
                       tmp_path / "d.npy", "--depth-polarity", "metric", "-q")  # fmt: skip
    assert code == 2 and err.splitlines()[-1].endswith(
        "--depth: 1 depth files for 1 inputs; give one per input (1 input not found, above: the pairs are unknown)"
    )
    from depth2img.errors import InputError
    from depth2img.transform_run import run_transform

    # (the API, which the CLI's own early read of the --depth files does not cover)
    with pytest.raises(
        InputError, match=r"^depth: 1 depth files for 1 inputs; give one per input \(1 input not"
    ):
        run_transform(inputs, out, model="tiny", prompt="x", depth=[tmp_path / "d.npy"], depth_polarity="metric",
                      progress=False)  # fmt: skip
    assert not out.exists()


def test_native_size_is_a_flag_and_recorded(tmp_path, photos_dir, capsys):
    """A review of reproducibility (2026-11-28): native_size (the API's) sets the generation size but had no flag,
    so an output made at another could not be made again from the command line."""
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", tmp_path / "o", "--model", "tiny",
                       "--prompt", "x", "--steps", 2, "--seed", 0, "--native-size", 128, "-q")  # fmt: skip
    assert code == 0, err
    meta = read_png_metadata(tmp_path / "o" / "chelsea_s0.png")
    assert meta["native_size"] == 128 and meta["generation_size"] == [156, 104]  # 451x300 at ~128x128 pixels
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", tmp_path / "p", "--model", "tiny",
                       "--prompt", "x", "--native-size", 8, "-q")  # fmt: skip
    assert code == 2 and err.endswith("--native-size must be an integer in 16..4096 (pixels a side), got 8\n")
    assert not (tmp_path / "p").exists()


def test_a_depth_file_given_by_a_relative_path_is_recorded_by_its_absolute_one(tmp_path, photos_dir, capsys,
                                                                               monkeypatch):  # fmt: skip
    """A review of reproducibility (2026-11-28): the depth file was recorded as typed, so a record could be followed
    only from the folder the run had started in."""
    np.save(tmp_path / "d.npy", np.linspace(1, 50, 300 * 451).reshape(300, 451))
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", "o", "--model", "tiny", "--prompt", "x",
                       "--depth", "d.npy", "--depth-polarity", "metric", "--steps", 2, "--seed", 0, "-q")  # fmt: skip
    assert code == 0, err
    assert read_png_metadata(tmp_path / "o" / "chelsea_s0.png")["depth"]["source"] == str(tmp_path / "d.npy")


def test_a_depth_files_warning_is_said_once_and_a_prompts_without_on_warning(tmp_path, photos_dir, capsys):
    """A review of depth/eval (2026-11-28): a depth file's warning (its recorded polarity kept, a flat depth) came
    twice, as read and again from the result; a prompt's (truncated) came through the API only to an on_warning."""
    from depth2img.transform_run import run_transform

    np.save(tmp_path / "flat.npy", np.full((300, 451), 5.0))
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", tmp_path / "o", "--model", "tiny",
                       "--prompt", "x", "--depth", tmp_path / "flat.npy", "--depth-polarity", "metric", "--steps", 2,
                       "-q")  # fmt: skip
    assert code == 0 and err.count("every depth value is 5") == 1, err
    said = []  # an on_warning gets it too (the first mend of this left it out)
    run_transform([photos_dir / "chelsea.png"], tmp_path / "q", model="tiny", prompt="x", knobs={"steps": 2},
                  depth=[tmp_path / "flat.npy"], depth_polarity="metric", progress=False,
                  on_warning=said.append)  # fmt: skip
    assert [s.split(": ", 1)[1] for s in said] == [f"{tmp_path / 'flat.npy'}: every depth value is 5, so it carries no "
                                                   "structure and the outputs keep none of its geometry"]  # fmt: skip
    with pytest.warns(Warning, match=r"chelsea.png: prompt is \d+ tokens; the text encoder takes"):
        run_transform([photos_dir / "chelsea.png"], tmp_path / "p", model="tiny", prompt="a red car " * 40,
                      knobs={"steps": 2}, progress=False)  # fmt: skip


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "give a --prompt or a --preset"),
        (["--preset", "summer+snwo"], "unknown preset 'snwo'"),
        (["--prompt", "x", "--scheduler", "fast"], "scheduler 'fast' is not one of"),
        # the errors name the flags (they named the API's arguments: guidance_scale for --guidance)
        (["--prompt", "x", "--strength", "2"], r": --strength must be in (0, 1], got 2.0"),
        (["--prompt", "x", "--steps", "0"], ": --steps must be an integer in 1..1000, got 0"),
        (["--prompt", "x", "--guidance", "nan"], ": --guidance must be in [0, 50], got nan"),
        (
            ["--prompt", "x", "--feature-cache", "0"],
            ": --feature-cache must be an integer in 1..10 (1 = off), got 0",
        ),
        (["--prompt", "x", "--num-images", "0"], ": --num-images must be an integer in 1..64, got 0"),
        (["--prompt", "x", "--seed", "-1"], ": --seed must be an integer in 0..2**63-1, got -1"),
        (
            ["--prompt", "x", "--seed", str(2**63 - 1), "--num-images", "2"],
            f": --seed {2**63 - 1} with --num-images 2: image i uses seed + i, which passes 2**63-1; give a smaller seed",
        ),
        (
            ["--prompt", "x", "--control-start", "0.9", "--control-end", "0.1"],
            ": --control-start and --control-end must satisfy 0 <= start < end <= 1",
        ),
        (["--prompt", "x", "--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        # with the default strength 0.8 (each input refused it alone, after the model had loaded)
        (["--prompt", "x", "--steps", "1"], ": --steps=1 and --strength=0.8 leave 0; raise either\n"),
        # a preset whose knobs play no part is not named (it was, for any knob it had)
        (["--preset", "pencil-sketch", "--steps", "1"], "--strength=0.8 leave 0; raise either\n"),
        (
            ["--prompt", "x", "--lora", "tiny/lcm-sd15", "--strength", "0.2"],
            ": --steps x --strength must leave at least one denoising step: --steps=4 and --strength=0.2 leave 0;"
            " raise either (with the knobs of --lora tiny/lcm-sd15)",
        ),
        (
            ["--prompt", "x", "--lora", "tiny/lcm-sd15", "--lora-scale", "5"],
            "--lora-scale must be in (0, 2], got 5.0",
        ),
        (["--prompt", "x", "--lora-scale", "0.5"], "--lora-scale 0.5 is given without a LoRA to scale"),
        (
            # the flag named (a re-verification of 2026-11-28: it said 'offload')
            ["--prompt", "x", "--device", "cpu", "--offload", "model"],
            ": --offload 'model' moves weights between CPU and GPU; no GPU",
        ),
        (["--prompt", "x", "--device", "nope"], ": --device 'nope' is not one of cpu, cuda"),
        (["--prompt", "x", "--estimator", "not a model"], "estimator 'not a model' is not a registry name"),
        (
            ["--prompt", "x", "--steps", "1", "--strength", "0.8"],
            "--steps x --strength must leave at least one denoising step: --steps=1 and --strength=0.8 leave 0",
        ),
        (
            ["--prompt", "x", "--compile", "default", "--offload", "group"],
            "--compile default does not combine with --offload group; use one or the other",
        ),
        (
            ["--prompt", "x", "--compile", "reduce-overhead", "--feature-cache", "3"],
            "--compile reduce-overhead does not combine with --feature-cache 3",
        ),
    ],
)
def test_transform_argument_errors_write_nothing(tmp_path, photos_dir, capsys, extra, message):
    out = tmp_path / "out"
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", out, "--model", "tiny", *extra)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_the_estimator_loads_before_the_backbone(tmp_path, photos_dir, capsys, monkeypatch):
    """A bad estimator (a name, or weights missing offline) failed only once the backbone, gigabytes, had loaded."""
    from depth2img import backends

    def no_load(*args, **kw):
        raise AssertionError("the backbone started loading")

    monkeypatch.setattr(backends, "load_backend", no_load)
    out = tmp_path / "o"
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", out, "--model", "tiny", "--prompt", "x",
                       "--estimator", str(tmp_path / "no-such-folder"))  # fmt: skip
    assert code == 2 and "no-such-folder" in err and "backbone started" not in err
    assert not out.exists()  # the output folder made for the run is removed again while empty


def test_a_malformed_presets_file_is_one_line(tmp_path, photos_dir, capsys):
    f = tmp_path / "p.yaml"
    for body, message in [
        ("prompt: 5", "preset 'bad': prompt must be a string, got 5"),
        ("knobs: [steps]", r"preset 'bad': knobs must be a mapping of knob names to values, got ['steps']"),
        ("negative: [a, b]", "preset 'bad': negative must be a string, got ['a', 'b']"),
        ("knobs: {strength: 0.0}", "preset 'bad': strength must be in (0, 1], got 0.0"),
    ]:
        f.write_text(f"presets:\n  bad:\n    {body}\n")
        code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", tmp_path / "o", "--model", "tiny",
                           "--preset", "bad", "--presets-file", f)  # fmt: skip
        assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "knobs, flags, message",
    [
        (
            "{control_end: 0.5}",
            ["--control-start", "0.6"],
            "--control-start and --control-end must satisfy 0 <= start < end <= 1, got 0.6 and 0.5",
        ),
        # a preset's feature cache under --compile failed for each input, once compiled (a review's case)
        (
            "{feature_cache: 3}",
            ["--compile", "default"],
            "--compile default does not combine with --feature-cache 3; use one or the other",
        ),
    ],
)
def test_flags_that_pass_alone_but_not_with_a_presets_knobs_say_so(tmp_path, photos_dir, capsys, knobs, flags,
                                                                   message):  # fmt: skip
    f = tmp_path / "p.yaml"
    f.write_text(f"presets:\n  late:\n    prompt: '{{prompt}}, late'\n    knobs: {knobs}\n")
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", tmp_path / "o", "--model", "tiny",
                       "--prompt", "x", "--preset", "late", "--presets-file", f, *flags)  # fmt: skip
    assert code == 2 and err == f"depth2img: error: {message} (with the knobs of --preset late)\n"
    assert not (tmp_path / "o").exists()


def test_a_presets_feature_cache_on_a_backbone_without_a_unet_is_not_used(tmp_path, photos_dir, capsys):
    """The API leaves a preset's feature cache unused on Flux (no UNet); the CLI and job files refused it with
    --compile, naming --feature-cache, a flag never given. Here the next check speaks: the compile check passed."""
    from depth2img.batch import Job
    from depth2img.errors import InputError

    f = tmp_path / "p.yaml"
    f.write_text("presets:\n  fast:\n    prompt: '{prompt}, quick'\n    knobs: {feature_cache: 3}\n")
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", tmp_path / "o", "--model",
                       "tiny/flux-depth", "--preset", "fast", "--presets-file", f, "--compile", "default",
                       "--scheduler", "ddim")  # fmt: skip
    assert (
        code == 2
        and err == "depth2img: error: --scheduler 'ddim' is not one of flow-euler for flux-control\n"
    )
    Job(inputs="a", output=str(tmp_path / "j"), model="tiny/flux-depth", presets=["fast"], presets_files=[str(f)],
        compile="default")  # fmt: skip
    with pytest.raises(InputError, match="does not combine with feature_cache 3"):  # where a UNet takes it
        Job(inputs="a", output=str(tmp_path / "j"), model="tiny", presets=["fast"], presets_files=[str(f)],
            compile="default")  # fmt: skip


def test_transform_per_input_errors(tmp_path, photos_dir):
    """The API's run goes on past an input whose depth does not fit (the CLI refuses it up front, below)."""
    from depth2img.transform_run import run_transform

    np.save(tmp_path / "wide.npy", np.ones((10, 40)))
    np.save(tmp_path / "cup.npy", np.linspace(1, 9, 400 * 600).reshape(400, 600))
    out = tmp_path / "out"
    report = run_transform([photos_dir / "chelsea.png", photos_dir / "coffee.jpg"], out, model="tiny", prompt="x",
                           depth=[tmp_path / "wide.npy", tmp_path / "cup.npy"], depth_polarity="metric",
                           knobs={"steps": 2}, progress=False)  # fmt: skip
    (failed,) = report.failed
    assert (
        f"chelsea.png: {tmp_path / 'wide.npy'}: depth is 40x10 but the image is 451x300: aspect ratios differ"
        in failed
    )
    assert (
        len(report.done) == 1 and len(list(out.glob("coffee_s*.png"))) == 1 and not list(out.glob("chelsea*"))
    )


def test_a_depth_file_that_cannot_serve_is_refused_before_any_model_loads(
    tmp_path, photos_dir, capsys, monkeypatch
):
    """A missing --depth file, one with NaN, or a .npy without --depth-polarity failed each input once the models had
    loaded (minutes, on real weights), and the message named no flag."""
    from depth2img.estimators import DepthEstimator
    from depth2img.transformer import SceneTransformer

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(SceneTransformer, "from_pretrained", no_loading)
    monkeypatch.setattr(DepthEstimator, "from_pretrained", no_loading)
    np.save(tmp_path / "nan.npy", np.array([[np.nan] * 3] * 2))
    np.save(tmp_path / "d.npy", np.ones((300, 451)))
    np.save(tmp_path / "wide.npy", np.ones((10, 40)))
    for depth, extra, message in [
        # the input's header gives its size: a depth of another aspect ratio is known before loading
        (
            "wide.npy",
            ["--depth-polarity", "metric"],
            "wide.npy: depth is 40x10 but the image is 451x300: aspect ratios differ",
        ),
        ("nope.npy", ["--depth-polarity", "metric"], "nope.npy: no such file"),
        ("nan.npy", ["--depth-polarity", "metric"], "nan.npy: 6 depth values are NaN or infinite"),
        (
            "d.npy",
            [],
            "d.npy: the file does not say which way its depth runs; pass --depth-polarity (near-bright |",
        ),
    ]:
        code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", tmp_path / "o", "--model", "tiny",
                           "--prompt", "x", "--depth", tmp_path / depth, *extra, "-q")  # fmt: skip
        assert code == 2 and err.startswith(f"depth2img: error: --depth: {tmp_path / message}"), err
        assert err.count("\n") == 1


def test_batch_size_puts_photos_in_one_denoising_batch(tmp_path, photos_dir, capsys, monkeypatch):
    import torch

    from depth2img.backends import Backend

    calls, original, oom = [], Backend.__call__, {"over": None}

    def counted(self, **kwargs):
        calls.append(len(kwargs["generators"]))
        if oom["over"] is not None and len(kwargs["generators"]) > oom["over"]:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return original(self, **kwargs)

    monkeypatch.setattr(Backend, "__call__", counted)
    photos = tmp_path / "in"
    photos.mkdir()
    chelsea = Image.open(photos_dir / "chelsea.png")
    chelsea.save(photos / "a.png")
    chelsea.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / "b.png")
    chelsea.rotate(90, expand=True).save(photos / "c.png")  # 300x451: another generation size than d
    chelsea.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(photos / "d.png")
    made = {}
    for size, over in ((2, None), (1, None), ("2-oom", 2)):
        calls.clear()
        oom["over"] = over
        out = tmp_path / f"b{size}"
        code, _, err = run(capsys, "transform", photos, "-o", out, "--model", "tiny", "--prompt", "a cat", "--seed", 3,
                           "--num-images", 2, "--steps", 2, "--batch-size", str(size)[0], "-q")  # fmt: skip
        assert code == 0, err
        made[size] = list(calls), {p.name: np.asarray(Image.open(p), np.int16) for p in out.glob("*_s*.png")}
    # batches [a, b] (one call of 4 images) and [c, d] (two generation sizes: two calls), against one call per photo;
    # out of memory, the batch [a, b] runs photo by photo and every output is still made
    assert made[2][0] == [4, 2, 2] and made[1][0] == [2, 2, 2, 2] and made["2-oom"][0] == [4, 2, 2, 2, 2]
    assert len(made[1][1]) == 8 and made[2][1].keys() == made[1][1].keys() == made["2-oom"][1].keys()
    for name, image in made[1][1].items():
        assert np.abs(image - made[2][1][name]).max() <= 1 and np.array_equal(image, made["2-oom"][1][name])


def test_transform_missing_weights_offline_is_one_line(tmp_path, photos_dir, capsys):
    # the backbone's presence in the cache is checked first (cheaply), then the estimator loads, then the backbone
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", tmp_path, "--model", "sdxl-depth",
                       "--prompt", "x", "--local-files-only")  # fmt: skip
    assert code == 2 and err.count("\n") == 1
    assert "stabilityai/stable-diffusion-xl-base-1.0" in err and "hf download" in err
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", tmp_path, "--model", "tiny",
                       "--prompt", "x", "--local-files-only", "--estimator", "depth-anything-v2-small")  # fmt: skip
    said, error = err.splitlines()  # what it was doing, and why that failed
    assert code == 2 and said == "depth2img: loading depth estimator depth-anything-v2-small"
    assert "depth-anything/Depth-Anything-V2-Small-hf" in error and "hf download" in error


def test_long_prompt_warning_on_cli(tmp_path, photos_dir, capsys):
    long = "a street " + " ".join(f"w{i}" for i in range(60))
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", tmp_path, "--model", "tiny",
                       "--prompt", long, "--steps", 2, "-q")  # fmt: skip
    assert code == 0 and "depth2img: warning:" in err and "the text encoder takes 75: truncated" in err


def test_presets_command(tmp_path, capsys):
    f = tmp_path / "p.yaml"
    f.write_text("presets:\n  sandstorm:\n    group: weather\n    prompt: '{prompt}, sandstorm'\n"
                 "    negative: blue sky\n    knobs: {steps: 12}\n")  # fmt: skip
    code, out, _ = run(capsys, "presets", "--presets-file", f)
    assert code == 0
    for name in ("winter", "golden-hour", "cyberpunk", "pencil-sketch", "sandstorm", "fog"):
        assert name in out
    # the negative prompt a preset adds was not shown
    assert "  sandstorm      {prompt}, sandstorm  (negative: blue sky)  {'steps': 12}\n" in out
    assert (
        "  summer         {prompt}, in summer, lush green foliage, bright sun, clear sky  (negative: snow, "
        in out
    )


def test_transform_with_few_step_lora(tmp_path, photos_dir, capsys):
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", tmp_path, "--model", "tiny", "--prompt",
                       "a cat", "--lora", "tiny/lcm-sd15", "--seed", 1, "--strength", 1.0, "-q")  # fmt: skip
    assert code == 0, err
    meta = read_png_metadata(tmp_path / "chelsea_s1.png")
    assert (
        meta["scheduler"] == "lcm" and meta["steps"] == 4 and meta["backbone"]["speed_lora"]["scale"] == 1.0
    )
    code, out, _ = run(capsys, "models")
    assert "lcm-sd15" in out and "scheduler lcm" in out


def test_a_controlnet_or_lora_not_at_hand_is_named_before_the_estimator_loads(tmp_path, photos_dir, capsys,
                                                                              monkeypatch, tiny_dir):  # fmt: skip
    from depth2img.estimators import DepthEstimator

    def no_load(*args, **kw):
        raise AssertionError("a model started loading")

    monkeypatch.setattr(DepthEstimator, "from_pretrained", no_load)
    unet = tiny_dir / "sd15-depth" / "unet"
    pickled = tmp_path / "my-lora"
    pickled.mkdir()
    (pickled / "pytorch_lora_weights.bin").write_bytes(b"x")
    for given, message in (
        # a LoRA folder of one's own without its weights: found once the estimator and the backbone had loaded
        (["--lora", pickled], f"LoRA '{pickled}' at {pickled}: expected one .safetensors file, found 0 (pickled .bin "
         "weights are never loaded: loading runs code)"),
        (["--controlnet", "someone/depth-controlnet"], "ControlNet someone/depth-controlnet is not in the local "
         "Hugging Face cache and the hub is offline (local_files_only / HF_HUB_OFFLINE); on a connected machine run `hf "
         'download someone/depth-controlnet --include "*.json" --include "*.safetensors" --exclude "*fp16*" '),
        (["--controlnet", unet], f"ControlNet '{unet}' at {unet} holds UNet2DConditionModel, not a diffusers "
         "ControlNetModel"),
        # (found once the backbone had loaded)
        (["--lora", "lcm-sd15"], "LoRA lcm-sd15 (latent-consistency/lcm-lora-sdv1-5) is not in the local Hugging "
         "Face cache"),
    ):  # fmt: skip
        code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", tmp_path / "o", "--model", "tiny",
                           "--prompt", "x", *given, "--local-files-only")  # fmt: skip
        assert code == 2 and err.startswith(f"depth2img: error: {message}") and err.count("\n") == 1


def test_transform_with_a_controlnet_of_ones_own(tmp_path, photos_dir, capsys, tiny_dir):
    from safetensors.torch import load_file, save_file

    mine = tmp_path / "my-controlnet"
    shutil.copytree(tiny_dir / "sd15-depth-controlnet", mine)
    weights = load_file(mine / "diffusion_pytorch_model.safetensors")
    save_file({k: v * 1.1 for k, v in weights.items()}, mine / "diffusion_pytorch_model.safetensors")
    outputs = {}
    for name, argv in (("own", []), ("mine", ["--controlnet", mine])):
        code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", tmp_path / name, "--model", "tiny",
                           "--prompt", "a cat", "--seed", 1, "--steps", 2, "-q", *argv)  # fmt: skip
        assert code == 0, err
        outputs[name] = read_png_metadata(tmp_path / name / "chelsea_s1.png")["backbone"]["controlnet"]
        outputs[name + " image"] = np.asarray(Image.open(tmp_path / name / "chelsea_s1.png"))
    assert outputs["mine"] == str(mine) and outputs["own"] == str(tiny_dir / "sd15-depth-controlnet")
    assert not np.array_equal(outputs["own image"], outputs["mine image"])


def test_transform_and_batch_take_the_compiled_fast_path(tmp_path, photos_dir, capsys, eager_compile):
    """--compile (transform) and the job key compile (batch) load the model with the fast path: each output's
    metadata records what was applied, and the images stay those of the plain pipeline within float tolerance."""
    import yaml

    base = ["transform", photos_dir / "chelsea.png", "--model", "tiny", "--prompt", "a cat", "--seed", 2,
            "--steps", 2, "-q"]  # fmt: skip
    assert run(capsys, *base, "-o", tmp_path / "plain")[0] == 0
    code, _, err = run(capsys, *base, "-o", tmp_path / "fast", "--compile", "default")
    assert code == 0, err
    compiled = ["unet:fused_qkv", "unet:compile(default)", "controlnet:fused_qkv", "controlnet:compile(default)",
                "vae:fused_qkv", "vae:compile(default)"]  # fmt: skip
    assert read_png_metadata(tmp_path / "fast" / "chelsea_s2.png")["backbone"]["fast_path"] == compiled
    assert read_png_metadata(tmp_path / "plain" / "chelsea_s2.png")["backbone"]["fast_path"] is None
    plain, fast = (
        np.asarray(Image.open(tmp_path / d / "chelsea_s2.png"), dtype=int) for d in ("plain", "fast")
    )
    assert np.abs(plain - fast).max() <= 1  # fused QKV sums in another order: at most one 8-bit level
    assert eager_compile == ["default"] * 3

    (tmp_path / "job.yaml").write_text(yaml.safe_dump(
        {"inputs": [str(photos_dir / "chelsea.png")], "output": "job", "model": "tiny", "prompt": "a cat",
         "seeds": [2], "knobs": {"steps": 2}, "compile": "max-autotune-no-cudagraphs"}))  # fmt: skip
    code, _, err = run(capsys, "batch", tmp_path / "job.yaml", "-q")
    assert code == 0, err
    (image,) = (tmp_path / "job" / "images").glob("*.png")
    assert read_png_metadata(image)["backbone"]["fast_path"][-1] == "vae:compile(max-autotune-no-cudagraphs)"


def test_the_real_compiler_builds_the_fast_path(tmp_path, photos_dir, capsys):
    """Once with inductor itself (about a minute on this CPU), in a process of its own whose TMPDIR and cache
    folder keep inductor's files out of /tmp: in reduce-overhead mode, whose CUDA graphs CPU tensors skip but whose output
    copies still run, the images are the plain pipeline's within one 8-bit level, and nothing fell back."""
    import os
    import subprocess
    import sys

    (tmp_path / "tmp").mkdir()
    base = ["transform", photos_dir / "chelsea.png", "--model", "tiny", "--prompt", "a cat", "--seed", 5,
            "--steps", 2, "-q"]  # fmt: skip
    assert run(capsys, *base, "-o", tmp_path / "plain")[0] == 0
    done = subprocess.run([sys.executable, "-m", "depth2img", *map(str, base), "-o", str(tmp_path / "fast"),
                           "--compile", "reduce-overhead"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": str(tmp_path / "tmp"),
                               "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "tmp" / "inductor")})  # fmt: skip
    assert done.returncode == 0 and "torch.compile" not in done.stderr, done.stderr
    plain, fast = (
        np.asarray(Image.open(tmp_path / d / "chelsea_s5.png"), dtype=int) for d in ("plain", "fast")
    )
    assert np.abs(plain - fast).max() <= 1


def test_a_compiler_failure_falls_back_to_eager_with_one_warning_per_model(tmp_path, photos_dir, capsys,
                                                                           monkeypatch):  # fmt: skip
    """Compiling happens at the first call; where the compiler fails there (no C compiler, a GPU too old for
    Triton), each model runs uncompiled, once warned, and the run completes with the plain pipeline's images."""
    import torch
    from torch._dynamo.exc import BackendCompilerFailed

    def broken(fn, *a, **k):
        def call(*args, **kwargs):
            raise BackendCompilerFailed(fn, RuntimeError("CppCompileError: no C compiler\ntrace"), None)

        return call

    monkeypatch.setattr(torch, "compile", broken)
    base = ["transform", photos_dir / "chelsea.png", "--model", "tiny", "--prompt", "a cat", "--seed", 2,
            "--num-images", 2, "--steps", 2, "-q"]  # fmt: skip
    assert run(capsys, *base, "-o", tmp_path / "plain")[0] == 0
    code, _, err = run(capsys, *base, "-o", tmp_path / "fast", "--compile", "default")
    assert code == 0, err
    warned = [line for line in err.splitlines() if "torch.compile" in line]
    assert warned == [f"depth2img: warning: torch.compile (default) failed for the {m}, which runs uncompiled: "
                      "RuntimeError: CppCompileError: no C compiler" for m in ("controlnet", "unet", "vae")]  # fmt: skip
    for seed in (2, 3):
        plain, fast = (
            np.asarray(Image.open(tmp_path / d / f"chelsea_s{seed}.png"), dtype=int)
            for d in ("plain", "fast")
        )
        assert np.abs(plain - fast).max() <= 1  # fused QKV still applies


def test_outputs_are_written_while_the_next_photo_is_denoised(tmp_path, photos_dir, capsys, monkeypatch):
    import threading

    from depth2img import outputs
    from depth2img.backends import Backend

    second_call, calls, waited = threading.Event(), [], []
    original_call, original_write = Backend.__call__, outputs.write_depth_products

    def denoise(self, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            second_call.set()
        return original_call(self, **kwargs)

    def write_depth(depth, out_dir, stem, formats):
        # the first photo's products wait for the second photo's denoising: they would time out if written in between
        waited.append((threading.current_thread().name, stem, second_call.wait(timeout=20)))
        return original_write(depth, out_dir, stem, formats)

    monkeypatch.setattr(Backend, "__call__", denoise)
    monkeypatch.setattr(outputs, "write_depth_products", write_depth)
    code, _, err = run(capsys, "transform", photos_dir, "-o", tmp_path / "o", "--model", "tiny", "--prompt", "x",
                       "--steps", 2, "--seed", 0, "-q")  # fmt: skip
    assert code == 0, err
    assert [(name.split("_")[0], stem, ok) for name, stem, ok in waited] == [
        ("depth2img-writer", "chelsea", True),
        ("depth2img-writer", "coffee", True),
    ]
    assert len(list((tmp_path / "o").glob("*_s0.png"))) == 2 and "2 done, 0 failed" in err


def test_the_next_photos_depth_is_estimated_while_this_one_is_denoised(
    tmp_path, photos_dir, capsys, monkeypatch
):
    import threading

    from depth2img.backends import Backend
    from depth2img.estimators import DepthEstimator

    second_estimate, estimates, waited = threading.Event(), [], []
    original_call, original_estimate = Backend.__call__, DepthEstimator.__call__

    def estimate(self, images, *args, **kwargs):
        estimates.append(threading.current_thread().name)
        if len(estimates) == 2:
            second_estimate.set()
        return original_estimate(self, images, *args, **kwargs)

    def denoise(self, **kwargs):
        # the first photo's denoising waits for the second photo's depth: it would time out if estimated after it
        waited.append(second_estimate.wait(timeout=20))
        return original_call(self, **kwargs)

    monkeypatch.setattr(DepthEstimator, "__call__", estimate)
    monkeypatch.setattr(Backend, "__call__", denoise)
    bad = tmp_path / "in" / "bad.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not a png")
    inputs = [bad, photos_dir / "chelsea.png", photos_dir / "coffee.jpg"]
    code, _, err = run(capsys, "transform", *inputs, "-o", tmp_path / "o", "--model", "tiny", "--prompt", "x",
                       "--steps", 2, "--seed", 0, "-q")  # fmt: skip
    assert code == 2 and "bad.png: " in err and "2 done, 1 failed" in err  # an unreadable photo fails alone
    assert [name.split("_")[0] for name in estimates] == ["depth2img-depth"] * 2 and waited == [True, True]
    assert len(list((tmp_path / "o").glob("*_s0.png"))) == 2


def test_a_batch_of_photos_is_estimated_in_one_estimator_call(tmp_path, photos_dir, capsys, monkeypatch):
    from depth2img.estimators import DepthEstimator

    calls, original = [], DepthEstimator.__call__

    def estimate(self, images, *args, **kwargs):
        calls.append([im.size for im in images])
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(DepthEstimator, "__call__", estimate)
    bad = tmp_path / "in" / "bad.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not a png")
    inputs = [photos_dir / "chelsea.png", bad, photos_dir / "coffee.jpg"]
    out = tmp_path / "o"
    code, _, err = run(capsys, "transform", *inputs, "-o", out, "--model", "tiny", "--prompt", "x", "--steps", 2,
                       "--seed", 0, "--batch-size", 3, "-q")  # fmt: skip
    assert code == 2 and "bad.png: " in err and "2 done, 1 failed" in err
    assert calls == [[(451, 300), (600, 400)]]  # the readable photos, in input order, in one call
    # each photo's depth is its own: the same as estimated alone
    code, _, err = run(capsys, "transform", inputs[2], "-o", tmp_path / "alone", "--model", "tiny", "--prompt", "x",
                       "--steps", 2, "--seed", 0, "-q")  # fmt: skip
    assert code == 0, err
    for name in ("coffee_depth16.png", "coffee_control.png"):
        assert (out / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()


@pytest.mark.parametrize(
    "model, argv, message",
    [
        ("tiny/flux-depth", ["--negative-prompt", "blurry"],
         "--negative-prompt: backbone 'tiny/flux-depth' (flux-control) takes no negative prompt"),
        ("tiny/flux-depth", ["--control-scale", "0.5"], "--control-scale: backbone 'tiny/flux-depth' (flux-control) "
         "has no such knob; flux-depth-lora has control_scale (its LoRA scale)"),
        ("tiny/sd2-depth", ["--control-start", "0.2", "--control-end", "0.8"],
         "--control-start, --control-end: backbone 'tiny/sd2-depth' (sd2-depth) has no such knob"),
        ("tiny/flux-depth", ["--feature-cache", "2"], "--feature-cache: backbone 'tiny/flux-depth' (flux-control) has "
         "no UNet to cache; it works with sd15-depth, sd2-depth and sdxl-depth"),
        ("tiny/flux-depth", ["--scheduler", "ddim"], "--scheduler 'ddim' is not one of flow-euler for flux-control"),
        ("tiny", ["--lora", "tiny/lcm-sdxl"], "--lora: 'tiny/lcm-sdxl' is made for sdxl-controlnet, not sd15-controlnet"),
        ("tiny/flux-depth", ["--controlnet", "."], "--controlnet: backbone 'tiny/flux-depth' (flux-control) takes no "
         "ControlNet; a depth ControlNet goes with sd15-depth, sdxl-depth or a folder or hub id of their kind"),
        ("tiny", ["--controlnet", "no/such/folder"],
         "controlnet 'no/such/folder' is not a hub id (owner/name) or an existing local directory"),
    ],
)  # fmt: skip
def test_what_a_registry_backbone_cannot_take_is_refused_before_any_model_loads(tmp_path, photos_dir, capsys,
                                                                                monkeypatch, model, argv, message):  # fmt: skip
    """Each input failed with it, one line apiece, after both models had loaded."""
    from depth2img.estimators import DepthEstimator
    from depth2img.transformer import SceneTransformer

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(SceneTransformer, "from_pretrained", no_loading)
    monkeypatch.setattr(DepthEstimator, "from_pretrained", no_loading)
    code, _, err = run(capsys, "transform", photos_dir, "-o", tmp_path / "o", "--model", model, "--prompt", "x",
                       *argv, "-q")  # fmt: skip
    assert code == 2 and err == f"depth2img: error: {message}\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["transform", "depth"])
def test_an_unusable_output_folder_is_one_line_before_any_model_loads(tmp_path, photos_dir, capsys, monkeypatch,
                                                                       command):  # fmt: skip
    from depth2img.estimators import DepthEstimator
    from depth2img.transformer import SceneTransformer

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(SceneTransformer, "from_pretrained", no_loading)
    monkeypatch.setattr(DepthEstimator, "from_pretrained", no_loading)
    argv = ["--model", "tiny", "--prompt", "x"] if command == "transform" else ["--estimator", "tiny"]
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    before = sorted(p.name for p in photos_dir.iterdir())
    for out, message in [
        # (a review of file-system errors, 2026-11-28: a link to a folder not there was "is a file")
        (tmp_path / "dangling", f"output folder {tmp_path / 'dangling'} is a link to {tmp_path / 'gone'}, which is "
                                "not there"),
        (photos_dir, f"output folder {photos_dir} is also an input folder: a later run would read its outputs as "
                     "inputs; choose another output folder"),
        (tmp_path / "a-file", f"output folder {tmp_path / 'a-file'} is a file"),
        (tmp_path / "a-file" / "sub", f"output folder {tmp_path / 'a-file' / 'sub'} cannot be created (Not a directory)"),
    ]:  # fmt: skip
        code, _, err = run(capsys, command, photos_dir, "-o", out, *argv, "-q")
        assert code == 2 and err == f"depth2img: error: {message}\n"
    assert sorted(p.name for p in photos_dir.iterdir()) == before  # nothing was written


@pytest.mark.parametrize("command", ["transform", "depth"])
def test_a_photo_the_estimator_refuses_fails_alone_in_its_batch(tmp_path, photos_dir, capsys, command):
    """256x16 passes the input checks (16:1) but the tiny estimator's 56 px input would give it a side of 0 px: the
    batch it shares is then estimated one photo at a time, so only that photo fails."""
    from PIL import Image

    strip = tmp_path / "in" / "strip.png"
    strip.parent.mkdir()
    Image.new("RGB", (256, 16), (90, 100, 110)).save(strip)
    inputs = [photos_dir / "chelsea.png", strip, photos_dir / "coffee.jpg"]
    argv = (["--model", "tiny", "--prompt", "x", "--steps", 2, "--batch-size", 3] if command == "transform"
            else ["--estimator", "tiny"])  # fmt: skip
    code, _, err = run(capsys, command, *inputs, "-o", tmp_path / "o", *argv, "-q")
    assert code == 2 and "2 done, 1 failed" in err
    line = next(x for x in err.splitlines() if "strip.png" in x)
    assert f"{strip}: image: 256x16 cannot be resized for estimator 'tiny', whose input is 56x56" in line
    assert {p.name.split("_")[0] for p in (tmp_path / "o").glob("*.png")} == {"chelsea", "coffee"}


@pytest.mark.parametrize("command", ["transform", "depth"])
def test_a_failed_write_names_its_input_and_the_others_are_written(tmp_path, photos_dir, capsys, monkeypatch,
                                                                    command):  # fmt: skip
    import errno

    from depth2img import io

    original = io.atomic_path

    failure = {}

    @contextlib.contextmanager
    def failing_for_chelsea(path):
        with original(path) as tmp:
            if "chelsea" in str(path) and str(path).endswith(
                "_preview.png"
            ):  # after its other files were written
                # as a write into the temporary file fails: no file name (atomic_path names the file asked for)
                raise OSError(failure["errno"], os.strerror(failure["errno"]))
            yield tmp

    monkeypatch.setattr(io, "atomic_path", failing_for_chelsea)
    out = tmp_path / "o"
    argv = (
        ["--model", "tiny", "--prompt", "x", "--steps", 2]
        if command == "transform"
        else ["--estimator", "tiny"]
    )
    failure["errno"] = errno.ENOSPC  # a full disk: no later input's files would fit either, so the run stops
    code, _, err = run(capsys, command, photos_dir, "-o", out / "full", *argv, "-q")
    assert code == 2 and err.splitlines()[-1] == (
        f"depth2img: error: chelsea.png: cannot write {out / 'full' / 'chelsea_depth_preview.png'} (No space left "
        "on device); stopped, no partial file left"
    ).replace("chelsea.png", str(photos_dir / "chelsea.png"), 1)
    assert not list((out / "full").glob("chelsea*"))
    failure["errno"] = (
        errno.EACCES
    )  # one file's problem: the input fails, named with the file, and the rest run
    code, _, err = run(capsys, command, photos_dir, "-o", out, *argv, "-q")
    assert code == 2
    assert (
        f"chelsea.png: cannot write {out / 'chelsea_depth_preview.png'} (Permission denied)" in err
        and "1 done, 1 failed" in err
    )
    assert not list(out.glob("chelsea*")) and list(out.glob("coffee*"))  # none of its files is left
    if command == "transform":
        assert [json.loads(x)["source"].rsplit("/", 1)[1] for x in (out / "manifest.jsonl").read_text().splitlines()
                ] == ["coffee.jpg"]  # fmt: skip


def test_an_input_whose_manifest_lines_fail_leaves_none_of_its_files(
    tmp_path, photos_dir, capsys, monkeypatch
):
    """Its files were written, then the append failed: every file was left behind. A full disk now stops the run
    (it went on: "0 done, 2 failed"), and the input's files go."""
    import builtins
    import errno

    from depth2img import outputs

    def full(path, mode="r", *args, **kwargs):  # the disk fills up at the manifest append
        if str(path).endswith("manifest.jsonl") and mode.startswith("a"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(outputs, "open", full, raising=False)
    out = tmp_path / "o"
    code, _, err = run(capsys, "transform", photos_dir, "-o", out, "--model", "tiny", "--prompt", "x", "--steps", 2,
                       "-q")  # fmt: skip
    assert code == 2 and err.splitlines()[-1].endswith(
        "(No space left on device); stopped, no partial file left"
    )
    assert not out.exists()  # nothing left in it, so the folder the run made is gone too


def test_a_rerun_into_the_same_folder_replaces_the_lines_of_the_files_it_replaces(
    tmp_path, photos_dir, capsys
):
    """A second run with another prompt replaced chelsea_s0.png, but the manifest kept the first run's line for it
    (which named the other prompt) as well as the new one."""
    out = tmp_path / "o"
    for prompt in ("a castle", "a forest"):
        code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", out, "--model", "tiny", "--prompt",
                           prompt, "--seed", 0, "--steps", 2, "-q")  # fmt: skip
        assert code == 0, err
    run(capsys, "transform", photos_dir / "coffee.jpg", "-o", out, "--model", "tiny", "--prompt", "a cup", "--seed",
        5, "--steps", 2, "-q")  # fmt: skip
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["output"], r["user_prompt"]) for r in lines] == [
        ("chelsea_s0.png", "a forest"),
        ("coffee_s5.png", "a cup"),
    ]
    assert read_png_metadata(out / "chelsea_s0.png")["user_prompt"] == "a forest"


def test_a_manifest_line_that_is_no_json_does_not_stop_a_later_run(tmp_path, photos_dir, capsys):
    """A torn line that later runs appended after (a killed run) made every later transform into the folder an
    internal error, once the models had loaded."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "manifest.jsonl").write_text('{"output": "old.png", "se\n')
    code, _, err = run(capsys, "transform", photos_dir / "chelsea.png", "-o", out, "--model", "tiny", "--prompt", "x",
                       "--seed", 0, "--steps", 2, "-q")  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])["output"] == "chelsea_s0.png"


def test_parallel_writer_threads_give_the_same_files_and_manifest(tmp_path, photos_dir, capsys, monkeypatch):
    from depth2img import outputs

    made = {}
    for threads in (1, 3):
        monkeypatch.setattr(outputs, "WRITER_THREADS", threads)
        out = tmp_path / f"t{threads}"
        code, _, err = run(capsys, "transform", photos_dir, "-o", out, "--model", "tiny", "--prompt", "x", "--steps", 2,
                           "--seed", 1, "--num-images", 2, "-q")  # fmt: skip
        assert code == 0, err
        made[threads] = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(made[1]) == 2 * 5 + 1 and made[1].keys() == made[3].keys()  # 2 images, depth, preview, control
    for name, data in made[1].items():  # byte-identical, the manifest's line order included
        assert made[3][name] == data, name


def test_a_local_or_cached_backbones_knobs_are_checked_before_any_model_loads(tmp_path, photos_dir, capsys,
                                                                               monkeypatch, tiny_dir):  # fmt: skip
    """Only registry names were checked before loading: a folder or hub id loaded both models, then each input
    failed with the same line."""
    from depth2img.backends import known_traits
    from depth2img.estimators import DepthEstimator
    from depth2img.registry import resolve_backbone
    from depth2img.transformer import SceneTransformer

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(SceneTransformer, "from_pretrained", no_loading)
    monkeypatch.setattr(DepthEstimator, "from_pretrained", no_loading)
    folder = tiny_dir / "sd2-depth"
    code, _, err = run(capsys, "transform", photos_dir, "-o", tmp_path / "o", "--model", folder, "--prompt", "x",
                       "--control-scale", "0.5", "-q")  # fmt: skip
    assert (
        code == 2
        and err == f"depth2img: error: --control-scale: backbone '{folder}' (sd2-depth) has no such knob\n"
    )
    # a hub id already in the local Hugging Face cache: its model_index.json says what it is
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--flux-depth" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text((tiny_dir / "flux-depth" / "model_index.json").read_text())
    (cache / "models--someone--flux-depth" / "refs").mkdir()
    (cache / "models--someone--flux-depth" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    code, _, err = run(capsys, "transform", photos_dir, "-o", tmp_path / "o", "--model", "someone/flux-depth",
                       "--prompt", "x", "--negative-prompt", "blurry", "-q")  # fmt: skip
    assert code == 2 and "backbone 'someone/flux-depth' (flux-control) takes no negative prompt" in err
    # a cached pipeline of a kind no backend takes: refused before the estimator loads (it was loaded first)
    other = cache / "models--someone--plain-sd" / "snapshots" / ("b" * 40)
    other.mkdir(parents=True)
    (other / "model_index.json").write_text('{"_class_name": "KandinskyPipeline"}')
    (cache / "models--someone--plain-sd" / "refs").mkdir()
    (cache / "models--someone--plain-sd" / "refs" / "main").write_text("b" * 40)
    code, _, err = run(capsys, "transform", photos_dir, "-o", tmp_path / "o", "--model", "someone/plain-sd",
                       "--prompt", "x", "-q")  # fmt: skip
    assert code == 2 and err.startswith(
        f"depth2img: error: {other}: pipeline class 'KandinskyPipeline' is not a supported backbone ("
    )
    # a FluxPipeline folder comes with the depth LoRA (control_scale is its scale); unknown stays unknown
    assert known_traits(resolve_backbone(str(tiny_dir / "flux-depth-lora"))).control_knobs == (
        "control_scale",
    )
    assert known_traits(resolve_backbone("someone/not-cached")) is None
    from depth2img.errors import InputError

    with pytest.raises(InputError, match="^model 'a b/c' is not a registry name .*, a valid hub id"):
        resolve_backbone("a b/c")  # no valid hub id: refused where it is named (huggingface_hub raised later)
    assert known_traits(resolve_backbone(str(tmp_path))) is None  # no model_index.json: the loader says why


def test_transform_estimates_depth_in_the_dtype_asked_for_as_depth_does_and_records_it(tmp_path, photos_dir,
                                                                                       capsys):  # fmt: skip
    """transform loaded the estimator in its default dtype whatever --dtype said, while depth, eval and the app
    used --dtype: one photo, two depths; and no output said which weights or dtype made its depth."""
    photo = photos_dir / "chelsea.png"
    code, _, err = run(capsys, "transform", photo, "-o", tmp_path / "t", "--model", "tiny", "--prompt", "x",
                       "--steps", 2, "--seed", 0, "--dtype", "bfloat16", "-q")  # fmt: skip
    assert code == 0, err
    code, _, err = run(capsys, "depth", photo, "-o", tmp_path / "d", "--estimator", "tiny", "--dtype", "bfloat16",
                       "-q")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "t" / "chelsea_depth16.png").read_bytes() == (
        tmp_path / "d" / "chelsea_depth16.png"
    ).read_bytes()
    meta = read_png_metadata(tmp_path / "t" / "chelsea_s0.png")
    assert meta["depth"]["dtype"] == "bfloat16" and meta["depth"]["source"] == "tiny"
    assert meta["depth"]["id"].endswith("depth-anything") and "revision" in meta["depth"]
    assert meta["backbone"]["memory"] == {"offload": "none", "vae_tiling": False, "vae_slicing": False,
                                          "attention": "sdpa"}  # fmt: skip
    code, _, err = run(capsys, "transform", photo, "-o", tmp_path / "v", "--model", "tiny", "--prompt", "x",
                       "--steps", 2, "--seed", 0, "--vae-tiling", "-q")  # fmt: skip
    assert code == 0, err
    assert read_png_metadata(tmp_path / "v" / "chelsea_s0.png")["backbone"]["memory"]["vae_tiling"] is True


@pytest.mark.parametrize("command", ["transform", "depth"])
def test_a_pattern_from_above_the_output_folder_leaves_the_runs_outputs_out(
    tmp_path, chelsea, capsys, command
):
    """'photos/**/*.png' -o photos/out: a second run was refused ('output folder is also an input folder'). The files
    an earlier run wrote there (its manifest's, its depth products) are left out with a warning, counted once however
    many patterns reach them; a photo of the user's there is still refused, and a pattern that matches only earlier
    outputs fails."""
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    chelsea.resize((64, 48)).save(tmp_path / "photos" / "sub" / "cat.png")
    argv = (["--model", "tiny", "--prompt", "x", "--steps", 2, "--seed", 0] if command == "transform"
            else ["--estimator", "tiny", "--depth-format", "png16,preview"])  # fmt: skip
    pattern, out = tmp_path / "photos" / "**" / "*.png", tmp_path / "photos" / "out"
    code, _, err = run(capsys, command, pattern, "-o", out, *argv, "-q")
    assert code == 0 and "warning" not in err, err
    first = sorted(p.name for p in out.iterdir())
    code, _, err = run(
        capsys, command, pattern, tmp_path / "photos" / "**" / "*_depth16.png", "-o", out, *argv, "-q"
    )
    ours = len([name for name in first if name.endswith(".png")])  # its images (and not manifest.jsonl)
    depth16 = tmp_path / "photos" / "**" / "*_depth16.png"  # (all earlier outputs: the pattern fails)
    assert code == 2 and ours >= 2, err
    assert err.split("\n")[:3] == [
        f"depth2img: warning: {ours} file(s) that an earlier run wrote in {out} left out: a run's outputs are not its "
        "inputs",
        f"depth2img: error: {depth16}: pattern matches only files an earlier run wrote in the output folder",
        f"depth2img {command}: 1 done, 1 failed; outputs in {out}",
    ], err
    assert sorted(p.name for p in out.iterdir()) == first  # the same files: none made from an output
    chelsea.resize((64, 48)).save(out / "mine.png")
    code, _, err = run(capsys, command, pattern, "-o", out, *argv, "-q")
    assert code == 2 and f"\ndepth2img: error: output folder {out} is also an input folder" in err, err


@pytest.mark.parametrize("command", ["transform", "depth"])
def test_an_output_folder_that_a_pattern_reads_or_that_cannot_be_written_is_refused_up_front(
    tmp_path, photos_dir, capsys, monkeypatch, command
):
    """ "out/*.png" -o out took the first run's outputs in as inputs on the next; a read-only folder failed every
    input only after the whole run."""
    import shutil
    import tempfile

    from depth2img import depth_run
    from depth2img.estimators import DepthEstimator
    from depth2img.transformer import SceneTransformer

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(SceneTransformer, "from_pretrained", no_loading)
    monkeypatch.setattr(DepthEstimator, "from_pretrained", no_loading)
    argv = ["--model", "tiny", "--prompt", "x"] if command == "transform" else ["--estimator", "tiny"]
    own = tmp_path / "own"
    shutil.copytree(photos_dir, own)
    for pattern in (own / "*.png", own / "**" / "*.jpg"):  # (from above it, a pattern leaves it out: below)
        code, _, err = run(capsys, command, pattern, "-o", own, *argv, "-q")
        assert code == 2 and err.startswith(
            f"depth2img: error: output folder {own} is also an input folder"
        ), err

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code, _, err = run(capsys, command, photos_dir, "-o", tmp_path / "ro", *argv, "-q")
    assert (
        code == 2
        and err
        == f"depth2img: error: output folder {tmp_path / 'ro'} cannot be written (Permission denied)\n"
    )
    monkeypatch.undo()
    # a killed run's temporary files are swept from the output folder: an old one; a young one may be another run's
    out = tmp_path / "o"
    out.mkdir()
    old, young = out / ".chelsea_depth16.png.1a2b3c4d.part.png", out / ".coffee_depth16.png.5e6f7a8b.part.png"
    (out / "sub").mkdir()
    other = out / "sub" / ".x.png.9c9c9c9c.part.png"  # not this run's folder: its subfolders are not walked
    for f in (old, young, other):
        f.write_bytes(b"half")
    os_time = depth_run.time.time()
    import os

    for f in (old, other):
        os.utime(f, (os_time - depth_run.STALE_TEMP_S - 60,) * 2)
    code, _, err = run(capsys, "depth", photos_dir, "-o", out, "--estimator", "tiny", "-q")
    assert code == 0, err
    assert not old.exists() and young.exists() and other.exists()


def test_sigterm_is_taken_as_ctrl_c_and_leaves_no_temporary_file(tmp_path, photos_dir, tiny_dir):
    """SIGTERM (timeout, docker stop, a scheduler's preemption) killed the run mid-write: truncated temporary PNGs
    stayed, and the exit said nothing."""
    import os
    import signal
    import subprocess
    import sys

    script = (
        "import contextlib, sys, time\n"
        "from depth2img import io\n"
        "real = io.atomic_path\n"
        "@contextlib.contextmanager\n"
        "def slow(path):\n"
        "    with real(path) as tmp:\n"
        "        print('writing', flush=True); time.sleep(30); yield tmp\n"
        "io.atomic_path = slow\n"
        "from depth2img.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "DEPTH2IMG_TINY_DIR": str(tiny_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-c", script, "depth", str(photos_dir), "-o", str(out), "--estimator",
                             "tiny", "--depth-format", "png16", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().startswith("writing")  # (two writer threads may print at once)
        assert any(p.name.endswith(".part.png") for p in out.iterdir())  # mid-write
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and err.strip().endswith("depth2img: error: terminated"), err
    assert not [p.name for p in out.iterdir() if ".part" in p.name]


def test_an_interrupted_rerun_leaves_one_line_per_file(tmp_path, photos_dir, capsys, monkeypatch):
    """The lines of the files a rerun replaced were dropped only at a run's normal end: after Ctrl-C the manifest
    listed the first run's line too, for an image that no longer exists."""
    from depth2img.transformer import SceneTransformer

    out = tmp_path / "o"
    argv = ["-o", out, "--model", "tiny", "--seed", 0, "--steps", 2, "--batch-size", 1, "-q"]
    code, _, err = run(capsys, "transform", photos_dir, "--prompt", "first", *argv)
    assert code == 0, err
    real, calls = SceneTransformer.run_isolated, []

    def stopped_at_the_second(self, requests, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, requests, **kwargs)

    monkeypatch.setattr(SceneTransformer, "run_isolated", stopped_at_the_second)
    code, _, err = run(capsys, "transform", photos_dir, "--prompt", "second", *argv)
    assert code == 130 and err.endswith("depth2img: error: interrupted\n")
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted((r["output"], r["user_prompt"]) for r in lines) == [
        ("chelsea_s0.png", "second"),
        ("coffee_s0.png", "first"),
    ]


def test_a_bad_pixel_limit_or_an_empty_output_folder_is_one_line_before_any_model_loads(tmp_path, photos_dir, capsys,
                                                                                       monkeypatch):  # fmt: skip
    """DEPTH2IMG_MAX_PIXELS=abc was found only after both models had loaded, once per input; -o '' wrote into the
    current folder."""
    from depth2img.estimators import DepthEstimator
    from depth2img.transformer import SceneTransformer

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(SceneTransformer, "from_pretrained", no_loading)
    monkeypatch.setattr(DepthEstimator, "from_pretrained", no_loading)
    monkeypatch.setenv("DEPTH2IMG_MAX_PIXELS", "abc")
    code, _, err = run(
        capsys, "transform", photos_dir, "-o", tmp_path / "o", "--model", "tiny", "--prompt", "x", "-q"
    )
    assert (code, err) == (2, "depth2img: error: DEPTH2IMG_MAX_PIXELS must be an integer >= 1, got 'abc'\n")
    monkeypatch.delenv("DEPTH2IMG_MAX_PIXELS")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["depth", str(photos_dir), "-o", "", "--estimator", "tiny"])
    assert (
        exited.value.code == 2
        and "argument -o/--output: an output folder is needed, got an empty value"
        in (capsys.readouterr().err)
    )
    assert list(tmp_path.iterdir()) == []


def test_a_rerun_that_writes_another_depth_over_earlier_images_depth_files_says_so(
    tmp_path, photos_dir, capsys, monkeypatch
):
    """A rerun with another estimator wrote NAME_depth16.png and NAME_control.png over the files that the earlier
    run's images of another preset were made from, silently (their metadata still named the old estimator)."""
    out = tmp_path / "o"
    argv = [photos_dir / "chelsea.png", "-o", out, "--model", "tiny", "--seed", 0, "--steps", 2]
    code, _, err = run(capsys, "transform", *argv, "--preset", "rain", "--estimator", "tiny")
    assert code == 0, err
    code, _, err = run(capsys, "transform", *argv, "--preset", "fog", "--estimator", "tiny")  # the same depth
    assert code == 0 and "warning" not in err, err
    monkeypatch.chdir(photos_dir)  # the same photo, by a relative path
    code, _, err = run(capsys, "transform", "chelsea.png", *argv[1:], "--preset", "fog", "--seed", 1)
    assert code == 0 and "warning" not in err, err
    code, _, err = run(capsys, "transform", *argv, "--preset", "snow", "--estimator", "tiny/dpt-hybrid")
    assert code == 0, err
    assert (
        f"depth2img: warning: {out}: this run wrote its depth and control files over those that 3 earlier "
        "image(s) were made from (chelsea_fog_s0.png, chelsea_fog_s1.png, chelsea_rain_s0.png), with another "
        "depth or source"
    ) in err
    assert read_png_metadata(out / "chelsea_snow_s0.png")["depth_files"] == [
        "chelsea_depth16.png", "chelsea_depth_preview.png", "chelsea_control.png"]  # fmt: skip


def test_a_rerun_that_writes_over_another_photos_image_says_so(tmp_path, chelsea, capsys):
    """x_fog.png with a prompt and x.png with preset fog are both x_fog_s0.png: the second run wrote over the first's
    image and its manifest line went at compaction, silently. The same photo and preset again is a plain rerun; an
    earlier image deleted before the run is not written over (the warning said it was)."""
    chelsea.save(tmp_path / "x_fog.png")
    chelsea.save(tmp_path / "x.png")
    out = tmp_path / "o"
    argv = ["-o", out, "--model", "tiny", "--estimator", "tiny", "--seed", 0, "--steps", 2]
    code, _, err = run(capsys, "transform", tmp_path / "x_fog.png", *argv, "--prompt", "a cat")
    assert code == 0, err
    code, _, err = run(capsys, "transform", tmp_path / "x_fog.png", *argv, "--prompt", "a cat")
    assert code == 0 and "warning" not in err, err
    code, _, err = run(capsys, "transform", tmp_path / "x.png", *argv, "--preset", "fog")
    assert (
        code == 0
        and (
            f"depth2img: warning: {out}: this run wrote 1 image(s) over an earlier run's of another photo or preset "
            "(x_fog_s0.png); write one of them to another folder to keep both"
        )
        in err
    ), err
    (out / "x_fog_s0.png").unlink()  # x.png's, deleted: x_fog.png's run writes over nothing
    code, _, err = run(capsys, "transform", tmp_path / "x_fog.png", *argv, "--prompt", "a cat")
    assert code == 0 and "warning" not in err, err
    code, _, err = run(capsys, "transform", tmp_path / "x.png", *argv, "--preset", "fog")
    assert code == 0 and "this run wrote 1 image(s) over an earlier run's" in err, err


def test_a_rerun_keeps_each_photos_name(tmp_path, chelsea, capsys, monkeypatch):
    """Names came from the sorted inputs alone: a rerun with a.PNG beside a.png gave a.png's name to a.PNG (it sorts
    first) and wrote over a.png's images (a review of file names, 2026-11-27). An earlier run's photo keeps its name,
    whatever the spelling of its path, and a new one takes none of the names given."""
    from pathlib import Path

    from depth2img.batch import read_manifest

    photos = tmp_path / "photos"
    photos.mkdir()
    chelsea.resize((64, 48)).save(photos / "a.png")
    chelsea.resize((64, 48)).rotate(180).save(photos / "a.PNG")
    out = tmp_path / "o"
    argv = [
        "-o",
        out,
        "--model",
        "tiny",
        "--estimator",
        "tiny",
        "--seed",
        0,
        "--steps",
        2,
        "--prompt",
        "x",
        "-q",
    ]
    assert run(capsys, "transform", photos / "a.png", *argv)[0] == 0
    first = (out / "a_s0.png").read_bytes()
    code, _, err = run(capsys, "transform", photos, *argv)
    assert code == 0 and "over an earlier run's" not in err, err
    # (alone, a.PNG would be a: sorting first)
    assert "1 photo(s) named otherwise than their files (a.PNG as a-2)" in err, err
    assert (out / "a_s0.png").read_bytes() == first  # a.png's, again
    sources = {r["output"]: Path(r["source"]).name for r in read_manifest(out / "manifest.jsonl")}
    assert sources == {"a_s0.png": "a.png", "a-2_s0.png": "a.PNG"}
    monkeypatch.chdir(photos)  # by a relative path, alone: the same names
    code, _, err = run(capsys, "transform", "a.PNG", *argv)
    assert code == 0 and "warning" not in err and (out / "a_s0.png").read_bytes() == first, err
    (tmp_path / "other").mkdir()  # another photo of that name
    chelsea.resize((64, 48)).save(tmp_path / "other" / "a.png")
    code, _, err = run(capsys, "transform", tmp_path / "other" / "a.png", *argv)
    assert code == 0 and (out / "a-3_s0.png").is_file() and (out / "a_s0.png").read_bytes() == first
    assert err == (f"depth2img: warning: {out}: 1 photo(s) named otherwise than their files (a.png as a-3): an earlier "
                   "run here gave those names to other photos (known by their paths: moved photos are new ones)\n"
                   f"depth2img transform: 1 done, 0 failed; outputs in {out}\n")  # fmt: skip


def test_the_names_an_earlier_run_gave_are_read_from_every_line(tmp_path):
    """A review of 964cbc6: a photo's second recorded name and the names of lines with no source were not reserved (a
    new photo could take them, and write over their depth files), a hand-edited line's name could hold a path, and
    each line's source was resolved (1M lines: ~25 s before the first image)."""
    from depth2img.transform_run import _earlier_stems

    b = str(tmp_path / "b.png")
    before = [{"source": b, "depth_files": ["b_depth16.png", "b_control.png"]},
              {"source": b, "depth_files": ["x_control.png"]},
              {"source": "", "depth_files": ["q_control.png"]}, {"source": None, "depth_files": ["c_control.png"]},
              {"source": str(tmp_path / "e.png"), "depth_files": ["../../evil_control.png"]},
              {"source": str(tmp_path / "f.png"), "depth_files": [5, ".f_control.png"]}, {"output": "o.png"}]  # fmt: skip
    paths = [tmp_path / "b.png", tmp_path / "e.png", tmp_path / "x.png"]
    assert _earlier_stems(before, paths) == ({paths[0]: "b"}, {"b", "x", "q", "c"})


def test_the_app_keeps_sigterms_default_and_presets_need_no_pixel_limit(monkeypatch, capsys):
    """gradio's server loop takes a KeyboardInterrupt as a normal stop, so SIGTERM as one made `app` exit 0; and a bad
    DEPTH2IMG_MAX_PIXELS refused `presets`, which reads no image."""
    import signal

    from depth2img import cli

    seen = {}
    monkeypatch.setitem(
        cli.COMMANDS, "app", lambda args: seen.setdefault("app", signal.getsignal(signal.SIGTERM)) and 0
    )
    monkeypatch.setitem(
        cli.COMMANDS, "depth", lambda args: seen.setdefault("depth", signal.getsignal(signal.SIGTERM)) and 0
    )
    assert cli.main(["app"]) == 0 and cli.main(["depth", "x.png", "-o", "o"]) == 0
    assert seen == {"app": signal.SIG_DFL, "depth": cli._on_sigterm}
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored
    monkeypatch.setenv("DEPTH2IMG_MAX_PIXELS", "abc")
    assert cli.main(["presets"]) == 0


def test_a_sigterm_that_lands_in_a_finalizer_still_stops_the_run(monkeypatch, capsys):
    """A review of depth/eval (2026-11-28): SIGTERM raised its exception in whatever Python code ran; in a finalizer
    (a ``__del__``, as regex's) Python ignores it: a traceback was printed, the run went on and exited 0. It is sent
    again and stops the run, one line."""
    import signal
    import sys
    import time

    from depth2img import cli

    class Dropped:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)  # (its handler runs here, inside the finalizer)

    def command(args):
        Dropped()
        for _ in range(500):  # the run's own code, where the signal sent again lands
            time.sleep(0.001)
        return 0

    hook = sys.unraisablehook
    monkeypatch.setitem(cli.COMMANDS, "depth", command)
    assert cli.main(["depth", "x.png", "-o", "o"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "depth2img: error: terminated\n"
    assert sys.unraisablehook is hook and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored


def test_a_compaction_that_fails_is_a_warning_not_in_place_of_the_runs_outcome(tmp_path, photos_dir, capsys,
                                                                              monkeypatch):  # fmt: skip
    """The compaction runs in finally: a full disk there replaced the run's own end (or Ctrl-C) with an internal error."""
    import errno

    from depth2img import transform_run

    out = tmp_path / "o"
    argv = [
        photos_dir / "chelsea.png",
        "-o",
        out,
        "--model",
        "tiny",
        "--prompt",
        "x",
        "--seed",
        0,
        "--steps",
        2,
        "-q",
    ]
    assert run(capsys, "transform", *argv)[0] == 0

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transform_run, "compact_manifest", full)
    code, _, err = run(capsys, "transform", *argv)
    assert (
        code == 0
        and f"depth2img: warning: {out / 'manifest.jsonl'}: not compacted (No space left on device)" in err
    )


def test_the_rerun_warning_knows_a_photo_by_its_place_not_its_spelling(
    tmp_path, photos_dir, capsys, monkeypatch
):
    """Sources were recorded as typed: photos/a.png from x/ and from y/ (two photos) passed as one, and the same photo
    spelt from two folders warned."""
    import shutil

    from depth2img.batch import read_manifest

    for folder, name in (("x", "chelsea.png"), ("y", "coffee.jpg")):
        (tmp_path / folder / "photos").mkdir(parents=True)
        shutil.copy(photos_dir / name, tmp_path / folder / "photos" / "a.png")
    out = tmp_path / "o"
    argv = ["-o", out, "--model", "tiny", "--prompt", "x", "--steps", 2]
    monkeypatch.chdir(tmp_path / "x")
    assert run(capsys, "transform", "photos/a.png", *argv, "--seed", 0)[0] == 0
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "transform", "x/photos/a.png", *argv, "--seed", 1)  # the same photo
    assert code == 0 and "depth2img: warning" not in err, err
    monkeypatch.chdir(tmp_path / "y")
    # another photo, spelt the same: a name of its own, said (it wrote over the first's depth files, with a warning,
    # before a photo kept its name)
    code, _, err = run(capsys, "transform", "photos/a.png", *argv, "--seed", 2)
    assert code == 0 and (out / "a-2_s2.png").is_file() and "with another depth or source" not in err, err
    assert (
        "depth2img: warning: " in err and "1 photo(s) named otherwise than their files (a.png as a-2)" in err
    ), err
    sources = {r["output"]: r["source"] for r in read_manifest(out / "manifest.jsonl")}
    assert sources["a_s0.png"] == sources["a_s1.png"] == str(tmp_path / "x" / "photos" / "a.png")
    assert sources["a-2_s2.png"] == str(tmp_path / "y" / "photos" / "a.png")


@pytest.mark.parametrize("name", ["yes", "null", "1", "'a+b'", "' p '", "''"])
def test_a_preset_name_no_preset_flag_could_give_is_refused_in_one_line(tmp_path, name):
    """'yes:' was read as True ("unknown preset 'yes'; known: ..., True"), 'a+b' could not be named (+ joins
    presets: "unknown preset 'a'"), ' p ' was stripped where used (a review's cases)."""
    from depth2img.errors import InputError
    from depth2img.presets import load_presets

    f = tmp_path / "p.yaml"
    f.write_text(f"presets:\n  {name}:\n    prompt: '{{prompt}}, x'\n")
    with pytest.raises(
        InputError, match=r"^presets file .*p.yaml: preset .*: a preset's name is text without '\+'"
    ):
        load_presets(f)
    f.write_text("presets:\n  'yes':\n    prompt: '{prompt}, x'\n")  # quoted, it is a name
    assert "yes" in load_presets(f)


@pytest.mark.parametrize("quiet", [False, True])
def test_what_loads_is_said_unless_quiet(tmp_path, photos_dir, capsys, quiet):
    """A model loads for a minute (a first download for longer) with no bar of ours: each command says so."""
    from huggingface_hub.utils import are_progress_bars_disabled

    photo, q = photos_dir / "chelsea.png", ["-q"] if quiet else []
    (tmp_path / "job.yaml").write_text(
        f"inputs: [{photo}]\noutput: {tmp_path / 'b'}\nmodel: tiny\nprompt: x\nknobs: {{steps: 2}}\n"
    )
    for argv, expected in (
        (["transform", photo, "-o", tmp_path / "t", "--model", "tiny", "--prompt", "x", "--steps", 2],
         ["depth estimator tiny", "model tiny"]),
        (["depth", photo, "-o", tmp_path / "d", "--estimator", "tiny"], ["depth estimator tiny"]),
        (["batch", tmp_path / "job.yaml"], ["depth estimator tiny", "model tiny"]),
    ):  # fmt: skip
        code, _, err = run(capsys, *argv, *q)
        assert code == 0, err
        said = [line for line in err.splitlines() if line.startswith("depth2img: loading ")]
        assert said == ([] if quiet else [f"depth2img: loading {what}" for what in expected]), argv[0]
        if said and argv[0] == "batch":  # before its bar (no terminal here: a 0 % line came first)
            assert err.index(said[-1]) < err.index("batch:"), err
        # the hub's download bars (transformers switched them off with its own bars)
        assert are_progress_bars_disabled() == quiet, argv[0]
