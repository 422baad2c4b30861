"""The web app: handlers on the tiny model, the HTTP API through gradio_client, load, and a real browser."""

import concurrent.futures
import json
import os
import re
import shutil
import socket
import time
import weakref
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from depth2img.errors import Depth2ImgError, InputError
from depth2img.outputs import read_png_metadata
from depth2img.service import Service
from depth2img.ui import create_demo, handle_depth, handle_generate, handle_variations, launch, make_sample

KNOBS = dict(
    steps=2, strength=0.5, guidance=7.5, control_scale=1.0, control_start=0.0, control_end=1.0, scheduler=""
)


@pytest.fixture(scope="module", autouse=True)
def _no_leftovers(tmp_path_factory):
    """The app's request folders go to a pytest folder, not the system's temp directory; and gradio_client
    downloads each output through an empty folder it leaves in the temp directory (``<40 hex>``, client.py):
    the ones this module's clients made are removed."""
    import re
    import tempfile

    from depth2img import ui

    temp = Path(tempfile.gettempdir())

    def hex_dirs():
        return {p for p in temp.iterdir() if re.fullmatch(r"[0-9a-f]{40}", p.name) and p.is_dir()}

    before = hex_dirs()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ui, "APP_DIR", tmp_path_factory.mktemp("requests"))
        yield
    for p in hex_dirs() - before:
        if not any(p.iterdir()):
            p.rmdir()


@pytest.fixture(scope="module")
def service():
    return Service(model="tiny")


@pytest.fixture(scope="module")
def photo(tmp_path_factory, chelsea):
    path = tmp_path_factory.mktemp("app") / "cat.png"
    chelsea.save(path)
    return str(path)


def _generate(service, photo, prompt="a cat", presets=("winter",), seed=3, num_images=1, depth_file=None):
    k = KNOBS
    return handle_generate(service, photo, "tiny", "tiny", depth_file, "", prompt, list(presets), "", k["steps"],
                           k["strength"], k["guidance"], k["control_scale"], k["control_start"], k["control_end"],
                           k["scheduler"], seed, num_images)  # fmt: skip


def test_building_the_page_loads_no_model_and_every_event_has_an_api_name():
    svc = Service(model="tiny")
    demo = create_demo(svc)
    assert svc._transformer is None and svc._estimators == {}
    names = [d.get("api_name") for d in demo.config["dependencies"]]
    assert all(names) and {"depth", "transform", "variations", "sample", "random_seed"} <= set(names)


def test_an_uploaded_photo_reaches_load_image_as_its_file_and_drops_the_last_depth_file(tmp_path, chelsea):
    """Gradio converted uploads to RGB before load_image saw them (alpha came out black, not white; a 16-bit grey
    photo almost white), and a new photo kept the depth file given with the last one (the sample's)."""
    import gradio as gr
    from gradio.data_classes import ImageData

    demo = create_demo(Service(model="tiny"))
    photo = next(b for b in demo.blocks.values() if isinstance(b, gr.Image) and b.elem_id == "photo")
    chelsea.convert("RGBA").save(tmp_path / "a.png")
    assert photo.preprocess(ImageData(path=str(tmp_path / "a.png"), orig_name="a.png")) == str(
        tmp_path / "a.png"
    )
    deps = demo.config["dependencies"]
    new_photo = next(d for d in deps if d["api_name"] == "new_photo")
    depth_file = next(
        b for b in demo.blocks.values() if isinstance(b, gr.File) and "depth file" in (b.label or "")
    )
    assert depth_file._id in new_photo["outputs"] and new_photo["targets"][0][1] == "upload"
    follow = next(d for d in deps if d["api_name"] == "depth_on_upload")
    assert follow["trigger_after"] == new_photo["id"]


def test_the_depth_preview_follows_the_sample_the_depth_file_the_estimator_and_the_polarity(service, photo):
    """The preview kept the last photo's depth after the sample, another depth file, estimator or polarity (and
    after the photo was removed): it showed a depth that Generate would not use."""
    from depth2img.ui import handle_depth_if_photo

    demo = create_demo(service)
    deps = {d["api_name"]: d for d in demo.config["dependencies"]}
    preview = deps["depth"]["outputs"]
    assert deps["depth_on_sample"]["trigger_after"] == deps["sample_depth_paired"]["id"]
    assert deps["sample_depth_paired"]["trigger_after"] == deps["sample"]["id"]
    for name, event in (("depth_on_depth_file", "upload"), ("depth_on_no_depth_file", "clear"),
                        ("depth_on_estimator", "input"), ("depth_on_polarity", "input"), ("no_photo", "clear")):  # fmt: skip
        assert deps[name]["outputs"] == preview and deps[name]["targets"][0][1] == event, name
    # a refused depth (a depth file of another shape) clears it: the last depth stayed, with its 16-bit PNG
    for name in ("depth_on_sample", "depth_on_depth_file", "depth_on_estimator", "depth_on_polarity"):
        refused = deps[f"{name}_refused"]
        assert refused["trigger_after"] == deps[name]["id"] and refused["trigger_only_on_failure"], name
        assert refused["outputs"] == preview and demo.fns[refused["id"]].fn() == (None, None)
    # with no photo yet (an estimator picked first) the preview stays empty, without an error
    assert handle_depth_if_photo(service, None, "tiny", None, "") == (None, None)
    assert all(handle_depth_if_photo(service, photo, "tiny", None, ""))


def test_licence_shown_for_every_backbone():
    from depth2img.ui import _licence_text

    assert "non-commercial only" in _licence_text("flux-depth") and "gated" in _licence_text("flux-depth")
    assert "creativeml-openrail-m" in _licence_text("tiny") and "commercial use allowed" in _licence_text(
        "sd15-depth"
    )
    assert "not in the registry" in _licence_text("someone/else")


def test_app_cli_errors(capsys, monkeypatch):
    from depth2img import service
    from depth2img.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("the model was set up before the arguments were checked")

    with monkeypatch.context() as m:  # a bad --port or --auth came after the model had loaded and warmed up
        m.setattr(service.Service, "__init__", no_model)
        assert main(["app", "--auth", "nopassword", "--model", "tiny", "--port", str(_free_port())]) == 2
        assert "--auth must be USER:PASSWORD, got 'nopassword'" in capsys.readouterr().err
        assert main(["app", "--model", "tiny", "--port", "70000"]) == 2
        assert "error: --port must be in 1..65535, got 70000" in capsys.readouterr().err
        # a value from the environment: its variable is named too (only the flag was, which was not given)
        for name, value, said in (
            ("DEPTH2IMG_PORT", "99999", "error: DEPTH2IMG_PORT must be in 1..65535, got 99999"),
            ("DEPTH2IMG_QUEUE_SIZE", "0", "error: DEPTH2IMG_QUEUE_SIZE must be >= 1, got 0"),
        ):
            m.setenv(name, value)
            assert main(["app", "--model", "tiny"]) == 2 and said in capsys.readouterr().err
            m.delenv(name)
        # a name that resolves to nothing was served, failing at the first Generate
        assert main(["app", "--model", "nope", "--port", str(_free_port())]) == 2
        assert "model 'nope' is not a registry name" in capsys.readouterr().err
        assert main(["app", "--model", "tiny", "--estimator", "nope", "--port", str(_free_port())]) == 2
        assert "estimator 'nope' is not a registry name" in capsys.readouterr().err
    assert main(["app", "--queue-size", "0"]) == 2
    capsys.readouterr()
    import os

    os.environ["DEPTH2IMG_PORT"] = "eighty"
    try:
        assert main(["app", "--model", "tiny"]) == 2
    finally:
        del os.environ["DEPTH2IMG_PORT"]
    assert "environment variable DEPTH2IMG_PORT must be an integer, got 'eighty'" in capsys.readouterr().err
    os.environ["DEPTH2IMG_COMPILE"] = "fast"
    try:
        assert main(["app", "--model", "tiny"]) == 2
    finally:
        del os.environ["DEPTH2IMG_COMPILE"]
    assert (
        "--compile (or DEPTH2IMG_COMPILE) must be one of default, reduce-overhead" in capsys.readouterr().err
    )


def test_app_hands_its_compile_mode_to_the_service(monkeypatch):
    """--compile beats DEPTH2IMG_COMPILE, which beats the default (off); the service loads the model with it."""
    from depth2img import ui
    from depth2img.cli import main

    served = []
    monkeypatch.setattr(ui, "launch", lambda service, **kw: served.append(service.compile))
    monkeypatch.setattr(Service, "warm_up", lambda self, progress=None: 0.0)  # its own test is below
    monkeypatch.setenv("DEPTH2IMG_COMPILE", "max-autotune")
    assert main(["app", "--model", "tiny", "--compile", "default"]) == 0
    assert main(["app", "--model", "tiny"]) == 0
    monkeypatch.delenv("DEPTH2IMG_COMPILE")
    assert main(["app", "--model", "tiny"]) == 0
    assert served == ["default", "max-autotune", None]


def test_app_serves_its_model_with_a_lora_or_controlnet(monkeypatch, capsys, photo, tiny_dir):
    """`app --lora/--controlnet` (DEPTH2IMG_LORA/CONTROLNET): given to the service, checked before serving, and the
    page offers the one backbone they were given for; a slider left alone lets the LoRA choose."""
    from depth2img import ui
    from depth2img.cli import main

    served = []
    monkeypatch.setattr(ui, "launch", lambda service, **kw: served.append(service))
    monkeypatch.setenv("DEPTH2IMG_LORA", "tiny/lcm-sdxl")  # the flag wins
    assert (
        main(["app", "--model", "tiny", "--lora", "tiny/lcm-sd15", "--lora-scale", "0.5", "--no-warm-up"])
        == 0
    )
    monkeypatch.setenv("DEPTH2IMG_LORA", "tiny/lcm-sd15")
    controlnet = str(tiny_dir / "sd15-depth-controlnet")
    assert main(["app", "--model", "tiny", "--controlnet", controlnet, "--no-warm-up"]) == 0
    monkeypatch.setenv("DEPTH2IMG_CONTROLNET", controlnet)  # an empty flag turns it off
    assert main(["app", "--model", "tiny", "--controlnet", "", "--lora", "", "--no-warm-up"]) == 0
    assert [(s.lora, s.lora_scale, s.controlnet) for s in served] == [("tiny/lcm-sd15", 0.5, None),
                                                                     ("tiny/lcm-sd15", 1.0, controlnet),
                                                                     (None, 1.0, None)]  # fmt: skip
    monkeypatch.delenv("DEPTH2IMG_LORA")
    monkeypatch.delenv("DEPTH2IMG_CONTROLNET")
    capsys.readouterr()
    for argv, message in (
        (["--lora", "tiny/lcm-sdxl"], "--lora (or DEPTH2IMG_LORA): 'tiny/lcm-sdxl' is made for sdxl-controlnet, not "
         "sd15-controlnet"),
        (["--model", "tiny/sd2-depth", "--controlnet", controlnet], "--controlnet (or DEPTH2IMG_CONTROLNET): backbone "
         "'tiny/sd2-depth' (sd2-depth) takes no ControlNet"),
        (["--lora-scale", "0.5"], "--lora-scale 0.5 is given without a LoRA to scale"),
        (["--lora", "fast"], "lora 'fast' is not a registry name"),
        # offline, not in the cache (was: found at the first Generate)
        (["--controlnet", "someone/cn", "--local-files-only"], "ControlNet someone/cn is not in the local Hugging "
         "Face cache"),
    ):  # fmt: skip
        assert main(["app", "--model", "tiny", *argv, "--no-warm-up"]) == 2
        assert message in capsys.readouterr().err, argv
    assert len(served) == 3  # (refused before serving)

    def backbones(svc):
        page = create_demo(svc).config["components"]
        return [
            tuple(c)
            for c in next(c["props"]["choices"] for c in page if c["props"].get("label") == "Backbone")
        ]

    # a folder by its name (not the server's paths on a public page)
    assert backbones(Service(model="tiny", controlnet=controlnet)) == [("tiny + ControlNet sd15-depth-controlnet",
                                                                        "tiny")]  # fmt: skip
    svc = Service(model="tiny", lora="tiny/lcm-sd15")
    assert backbones(svc) == [("tiny + LoRA tiny/lcm-sd15", "tiny")]
    *_, records = _generate(svc, photo)  # guidance and scheduler sliders at their defaults: the LoRA's
    assert records[0]["backbone"]["speed_lora"] and records[0]["guidance_scale"] == 1.0
    assert records[0]["scheduler"] == "lcm"
    # models served from folders: by their names on the page and in the outputs' metadata (the backbone's label,
    # its licence line, the metadata panel and every file's metadata showed the server's paths), and by '' (the
    # service's default) in the values gradio publishes (the page's config, its API page)
    svc = Service(model=str(tiny_dir / "sd15-depth"), estimator=str(tiny_dir / "depth-anything"))
    demo = create_demo(svc)
    assert str(tiny_dir) not in json.dumps(demo.config, default=str) + json.dumps(
        demo.get_api_info(), default=str
    )
    assert backbones(svc)[0] == ("sd15-depth (configured)", "")
    licence = next(d for d in demo.config["dependencies"] if d["api_name"] == "licence")
    assert demo.fns[licence["id"]].fn("").startswith("**sd15-depth**: licence not in the registry")
    k = KNOBS
    _, (_, first), archive, records = handle_generate(
        svc, photo, "", "", None, "", "a cat", [], "", k["steps"], k["strength"], k["guidance"], k["control_scale"],
        k["control_start"], k["control_end"], k["scheduler"], 3, 1,
    )  # fmt: skip
    assert (records[0]["backbone"]["id"], records[0]["depth"]["id"]) == ("sd15-depth", "depth-anything")
    with zipfile.ZipFile(archive) as z:
        shown = json.dumps(records) + Image.open(first).text["depth2img"] + z.read("manifest.jsonl").decode()
    assert str(tiny_dir) not in shown, shown


def test_depth_handler(service, photo):
    preview, png16 = handle_depth(service, photo, "tiny", None, "")
    assert Image.open(preview).size == (451, 300) and Image.open(preview).mode == "RGB"
    raw = np.asarray(Image.open(png16))
    assert raw.dtype == np.uint16 and raw.shape == (300, 451)


def test_depth_handler_with_own_file_keeps_precision(service, tmp_path):
    img, depth = make_sample(96, 48)
    from depth2img.io import read_depth_file

    _, png16 = handle_depth(service, img, "tiny", depth, "")  # the sample's .npz records its polarity
    raw = np.asarray(Image.open(png16))
    assert raw.dtype == np.uint16 and raw.shape == (48, 96)
    given, back = read_depth_file(depth), read_depth_file(png16)
    np.testing.assert_array_equal(back.valid, given.valid)  # the sky's holes kept
    # no 8-bit squeeze anywhere: within half a 16-bit step
    np.testing.assert_allclose(
        back.normalized()[given.valid], given.normalized()[given.valid], atol=0.5 / 65534
    )


def test_generate_handler_outputs(service, photo):
    gallery, (before, after), archive, records = _generate(service, photo, num_images=2)
    assert [Image.open(p).size for p, _ in gallery] == [(451, 300), (451, 300)]
    assert before == photo and after == gallery[0][0]
    assert [r["seed"] for r in records] == [3, 4] and records[0]["preset"] == "winter"
    assert read_png_metadata(gallery[1][0])["seed"] == 4
    names = set(zipfile.ZipFile(archive).namelist())
    assert {"cat_winter_s3.png", "cat_winter_s4.png", "cat_depth16.png", "manifest.jsonl"} <= names
    with zipfile.ZipFile(archive) as zf:  # stored as written (PNGs are compressed already)
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        assert zf.read("cat_winter_s4.png") == Path(gallery[1][0]).read_bytes()


def test_the_slider_shows_the_photo_as_the_model_saw_it(service, tmp_path, chelsea):
    """A TIFF upload showed as a broken image in the before/after slider (the raw upload was handed back), an RGBA
    one as transparent where the model saw white."""
    rgba = chelsea.convert("RGBA")
    rgba.putalpha(Image.new("L", chelsea.size, 0))
    for name, img in (("cat.tiff", chelsea), ("clear.png", rgba)):
        img.save(tmp_path / name)
        _, (before, _), _, _ = _generate(service, str(tmp_path / name), presets=())
        assert before.endswith("_before.png") and Image.open(before).format == "PNG"
        shown = np.asarray(Image.open(before))
        assert shown.shape == (300, 451, 3) and (name == "cat.tiff" or shown.min() == 255)  # on white


def test_ticked_presets_combine_in_the_order_listed_and_a_long_name_is_cut(service, tmp_path, chelsea):
    """Ticking night then winter gave "..., at night, ..., in winter" and photo_night+winter_s0.png, the other way
    round another prompt and name, with the same boxes ticked; a 180-character upload name with presets and a large
    seed made "File name too long"."""
    long_name = tmp_path / ("a" * 180 + ".png")
    chelsea.save(long_name)
    gallery, _, archive, records = _generate(
        service, str(long_name), presets=("night", "winter"), seed=2**53 - 1
    )
    assert records[0]["preset"] == "winter+night" and "in winter" in records[0]["prompt"].split("at night")[0]
    name = Path(gallery[0][0]).name
    assert name.startswith("a" * 91 + "-") and name.endswith("_winter+night_s9007199254740991.png")
    assert len(Path(archive).name) < 255 and Path(records[0]["output"]).name == name


def test_the_page_runs_the_presets_it_lists(tmp_path, chelsea):
    """The handlers read the presets files again at each request: a file edited after launch made Generate fail (or
    combine presets in another order than the page's)."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("presets:\n  dusty:\n    prompt: '{prompt}, dust storm'\n")
    svc = Service(model="tiny", preset_files=[mine])
    create_demo(svc)
    mine.write_text("presets: [\n")  # broken after launch
    chelsea.save(tmp_path / "cat.png")
    *_, records = _generate(svc, str(tmp_path / "cat.png"), presets=("dusty", "winter"))
    assert records[0]["preset"] == "winter+dusty" and "dust storm" in records[0]["prompt"]


def test_variations_handler(service, photo, capsys):
    gallery, archive = handle_variations(
        service, photo, "tiny", "tiny", None, "", "", ["rain", "fog"], "5, 6", 2, 0.5, 7.5
    )
    assert [c for _, c in gallery] == ["rain / seed 5", "rain / seed 6", "fog / seed 5", "fog / seed 6"]
    # the page offered the images one at a time only: a zip holds them, the depth files and the manifest
    with zipfile.ZipFile(archive) as zf:
        assert set(zf.namelist()) == {"cat_rain_s5.png", "cat_rain_s6.png", "cat_fog_s5.png", "cat_fog_s6.png",
                                      "cat_depth16.png", "cat_depth_preview.png", "cat_control.png", "manifest.jsonl"}  # fmt: skip
        assert zf.read("cat_fog_s6.png") == Path(gallery[3][0]).read_bytes()
        assert len(zf.read("manifest.jsonl").splitlines()) == 4
    # one denoising bar per batch (the page shows tqdm bars): rain and fog share a batch of 4 images
    assert capsys.readouterr().err.count("denoise:   0%") == 1
    # a seed past what the Generate tab's field holds made a variation that could not be made again there
    for given, shown in ((f"5, {2**53}", 2**53), ("-5", -5)):  # (-5 was said to be out of 0..2**63-1)
        with pytest.raises(
            InputError, match=rf"^seeds must be in 0\.\.9007199254740991 here .*, got {shown}$"
        ):
            handle_variations(service, photo, "tiny", "tiny", None, "", "", ["rain"], given, 2, 0.5, 7.5)
    # the Generate tab's field: gradio's own bounds said "Value -1 is less than minimum value 0."
    with pytest.raises(InputError, match=r"^seed must be in 0\.\.9007199254740991 here .*, got -1$"):
        _generate(service, photo, seed=-1)
    # the field keeps what was typed (it rounded 2.5 to seed 2, silently); an empty one is said so, not as None
    for typed, said in ((2.5, "2.5"), (None, "an empty field")):
        with pytest.raises(
            InputError, match=rf"^seed must be a whole number in 0\.\.9007199254740991, got {said}$"
        ):
            _generate(service, photo, seed=typed)


def test_sliders_left_at_their_defaults_let_the_preset_and_model_choose(service, photo):
    """The page sent every slider: a preset's knobs, Flux's guidance 10 and a few-step LoRA's steps and guidance
    never applied there (pencil-sketch ran at guidance 7.5, not its 8)."""
    from depth2img.errors import InputError
    from depth2img.ui import _knobs

    assert _knobs(30, 0.8, 7.5, 1.0, 0.0, 1.0, "") == {"scheduler": None}
    assert _knobs(12, 0.8, 3.0, 1.0, 0.25, 1.0, "ddim") == {
        "scheduler": "ddim", "steps": 12, "guidance_scale": 3.0, "control_start": 0.25
    }  # fmt: skip
    *_, records = _generate(service, photo, presets=("pencil-sketch",))
    assert records[0]["guidance_scale"] == 8.0
    gallery, _ = handle_variations(
        service, photo, "tiny", "tiny", None, "", "", ["pencil-sketch"], "1", 2, 0.5, 7.5
    )
    assert read_png_metadata(gallery[0][0])["guidance_scale"] == 8.0
    for bad in (None, "7", True):  # an HTTP client's null, a string: one line naming the slider
        with pytest.raises(
            InputError, match=f"^guidance_scale must be a number, got {re.escape(repr(bad))}$"
        ):
            _knobs(30, 0.8, bad)
    with pytest.raises(InputError, match="^steps must be a whole number, got 2.5$"):
        _knobs(2.5, 0.8, 7.5)


def test_use_every_slider_sends_a_slider_at_its_default_too(service, photo):
    """A slider left at its default is not sent, so the page could not ask for a default on purpose (guidance 7.5
    with pencil-sketch, whose knob is 8); "use every slider as set" sends them all."""
    from depth2img.errors import InputError
    from depth2img.ui import _knobs

    assert _knobs(30, 0.8, 7.5, 1.0, 0.0, 1.0, "", True) == {
        "scheduler": None, "steps": 30, "strength": 0.8, "guidance_scale": 7.5, "control_scale": 1.0,
        "control_start": 0.0, "control_end": 1.0,
    }  # fmt: skip
    assert _knobs(30, 0.8, 7.5, exact=True) == {
        "scheduler": None,
        "steps": 30,
        "strength": 0.8,
        "guidance_scale": 7.5,
    }
    with pytest.raises(InputError, match="^exact must be true or false, got 'yes'$"):
        _knobs(30, 0.8, 7.5, exact="yes")
    k = KNOBS
    *_, records = handle_generate(service, photo, "tiny", "tiny", None, "", "a cat", ["pencil-sketch"], "", k["steps"],
                                  k["strength"], 7.5, 1.0, 0.0, 1.0, "", 3, 1, True)  # fmt: skip
    assert records[0]["guidance_scale"] == 7.5
    gallery, _ = handle_variations(
        service, photo, "tiny", "tiny", None, "", "", ["pencil-sketch"], "1", 2, 0.5, 7.5, True
    )
    assert read_png_metadata(gallery[0][0])["guidance_scale"] == 7.5


def test_errors_become_one_friendly_line(service, photo, capsys):
    import gradio as gr

    from depth2img.ui import _friendly

    with pytest.raises(gr.Error, match="give a prompt or a preset") as said:
        _friendly(_generate)(service, photo, prompt="", presets=())
    # one line in the server's log too, not gradio's 30-line traceback for each visitor's mistake; an internal
    # error's cause is traced there
    logged = capsys.readouterr().err.splitlines()  # (after the model's loading lines)
    assert not said.value.print_exception and logged[-1].startswith(
        "depth2img app: give a prompt or a preset"
    )
    assert "Traceback" not in "".join(logged)

    def broken(*args):
        raise ZeroDivisionError("boom")

    with pytest.raises(gr.Error, match="internal error: ZeroDivisionError: boom") as said:
        _friendly(broken)()
    err = capsys.readouterr().err
    assert not said.value.print_exception and err.startswith("Traceback") and "in broken" in err
    with pytest.raises(gr.Error, match="upload a photo first"):
        _friendly(handle_depth)(service, None, "tiny", None, "")
    with pytest.raises(gr.Error, match="seeds must be integers"):
        _friendly(handle_variations)(
            service, photo, "tiny", "tiny", None, "", "", ["fog"], "1, x", 2, 0.5, 7.5
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(service):
    port = _free_port()
    demo = launch(service, port=port, block=False, queue_size=64)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_http_api_depth_and_transform(server, photo):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    preview, png16 = client.predict(handle_file(photo), "tiny", None, "", api_name="/depth")
    assert Image.open(png16).size == (451, 300) and np.asarray(Image.open(png16)).dtype == np.uint16
    gallery, _, archive, records = client.predict(
        handle_file(photo),
        "tiny",
        "tiny",
        None,
        "",
        "a cat",
        ["snow"],
        "",
        *KNOBS.values(),
        11,
        1,
        api_name="/transform",
    )
    assert Image.open(gallery[0]["image"]).size == (451, 300)
    assert records[0]["seed"] == 11 and "snow" in records[0]["preset"]
    # a client's null or out-of-range slider is named (an opaque "the upstream Gradio app has raised an exception",
    # gradio's Slider comparing None with its minimum; "Value 5 is greater than maximum value 1.0.")
    from gradio_client.exceptions import AppError

    for knob, value, said in (("steps", None, "steps must be a number, got None"),
                              ("strength", 5, "strength: Value 5 is greater than maximum value 1.0")):  # fmt: skip
        knobs = {**KNOBS, knob: value}
        with pytest.raises(AppError, match=re.escape(said)):
            client.predict(handle_file(photo), "tiny", "tiny", None, "", "a cat", [], "", *knobs.values(), 11, 1,
                           api_name="/transform")  # fmt: skip


def test_the_server_serves_no_file_it_did_not_make(server, tmp_path):
    """Another program's (or user's) file in the system temp directory is not served; outputs still are (above)."""
    import tempfile
    import urllib.error
    import urllib.request

    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    assert Path(tempfile.gettempdir()).resolve() in secret.resolve().parents
    for route in ("gradio_api/file=", "file="):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{server}{route}{secret}", timeout=30)
        assert refused.value.code in (403, 404), route


def test_request_folders_are_removed_once_old(monkeypatch, tmp_path):
    import time

    from depth2img import ui

    monkeypatch.setattr(ui, "APP_DIR", tmp_path / "app")
    old, recent = ui._workdir(), ui._workdir()
    (old / "out.png").write_bytes(b"x")
    stale = time.time() - ui.APP_KEEP_S - 60
    os.utime(old, (stale, stale))
    new = ui._workdir()
    assert sorted(p.name for p in (tmp_path / "app").iterdir()) == sorted([recent.name, new.name])
    assert new.parent == tmp_path / "app" and not any(new.iterdir())


def test_request_folders_are_removed_oldest_first_past_the_size_cap(monkeypatch, tmp_path):
    """Request folders were removed by age only: one small upload of a huge one-colour image made ~160 MB, so a visitor
    repeating it filled the disk within the hour. Past APP_MAX_BYTES the oldest go first; one still being written
    (younger than APP_BUSY_S) stays."""
    import time

    from depth2img import ui

    monkeypatch.setattr(ui, "APP_DIR", tmp_path / "app")
    monkeypatch.setattr(ui, "APP_MAX_BYTES", 2500)
    monkeypatch.setattr(ui, "_PAGES", weakref.WeakSet())  # (the server's page keeps its files)
    folders = [ui._workdir() for _ in range(4)]
    for age, folder in zip((900, 600, 300, 0), folders):  # seconds; the last one is busy
        (folder / "results").mkdir()
        (folder / "results" / "out.png").write_bytes(b"x" * 1000)
        t = time.time() - age
        os.utime(folder, (t, t))
    new = ui._workdir()  # 4000 bytes: the two oldest go (2000 left), the busy one and the new one stay
    assert sorted(p.name for p in (tmp_path / "app").iterdir()) == sorted(f.name for f in (*folders[2:], new))
    monkeypatch.setattr(ui, "APP_MAX_BYTES", 0)
    ui._workdir()  # over the cap, but the rest are busy (or not older than the busy one)
    assert folders[3].is_dir() and not folders[2].is_dir()


def test_gradios_copies_are_capped_by_size_too(monkeypatch, tmp_path):
    """Gradio's cache, its copies of the uploads and of what the handlers returned, was emptied by age alone (its
    delete_cache; README: "not yet capped by size"). Past APP_MAX_BYTES its oldest files go as well; files a
    component keeps, and those younger than APP_BUSY_S, stay."""
    import time

    from depth2img import ui

    monkeypatch.setattr(ui, "APP_DIR", tmp_path / "app")
    monkeypatch.setattr(ui, "_PAGES", weakref.WeakSet())
    page = create_demo(Service(model="tiny"))
    (tmp_path / "gradio").mkdir()
    files = []
    for i in range(4):  # oldest first (Gradio ages them by ctime)
        files.append(str(tmp_path / "gradio" / f"{i}.png"))
        Path(files[-1]).write_bytes(b"x" * 1000)
        time.sleep(0.01)
    component = next(c for c in page.blocks.values() if getattr(c, "temp_files", None) is not None)
    assert component.temp_files in page.temp_file_sets
    page.upload_file_set.update(files[:3])  # uploads
    component.temp_files.add(files[3])  # a result, shown twice
    other = next(
        h for h in page.temp_file_sets if h is not page.upload_file_set and h is not component.temp_files
    )
    other.add(files[3])
    component.keep_in_cache = {files[0]}  # (an example's)
    monkeypatch.setattr(ui, "APP_MAX_BYTES", 0)
    ui._workdir()  # all of them busy
    assert all(Path(f).is_file() for f in files)
    later = time.time() + ui.APP_BUSY_S + 60
    monkeypatch.setattr(ui, "APP_MAX_BYTES", 2500)
    monkeypatch.setattr(time, "time", lambda: later)
    ui._workdir()  # 3000 bytes not kept: the oldest goes
    assert [Path(f).is_file() for f in files] == [True, False, True, True]
    assert files[1] not in page.upload_file_set and files[2] in page.upload_file_set
    monkeypatch.setattr(ui, "APP_MAX_BYTES", 0)
    ui._workdir()
    assert [Path(f).is_file() for f in files] == [
        True,
        False,
        False,
        False,
    ] and not component.temp_files | other


def test_a_linked_request_folder_is_not_cleaned_through(monkeypatch, tmp_path):
    """APP_DIR was a fixed name in the shared temp directory: made a link to another folder, the app's clean-up
    removed that folder's old subfolders (and another user's APP_DIR made every request fail)."""
    import time

    from depth2img import ui

    precious = tmp_path / "project"
    (precious / "old_work").mkdir(parents=True)
    stale = time.time() - ui.APP_KEEP_S - 60
    os.utime(precious / "old_work", (stale, stale))
    (tmp_path / "app").symlink_to(precious)
    monkeypatch.setattr(ui, "APP_DIR", tmp_path / "app")
    folder = ui._workdir()
    assert (precious / "old_work").is_dir() and not any(
        p.name.startswith("request-") for p in precious.iterdir()
    )
    assert folder.parent == ui.APP_DIR != tmp_path / "app" and (folder.parent.stat().st_mode & 0o777) == 0o700
    assert ui._workdir().parent == folder.parent  # the private folder is kept for later requests
    shutil.rmtree(folder.parent)
    for taken in ("a file", "a dangling link"):  # a name another local user can take in a shared /tmp
        (tmp_path / "app").unlink()
        if taken == "a file":
            (tmp_path / "app").write_text("x")
        else:
            (tmp_path / "app").symlink_to(tmp_path / "nowhere")
        monkeypatch.setattr(ui, "APP_DIR", tmp_path / "app")
        folder = ui._workdir()
        assert folder.is_dir() and folder.parent != tmp_path / "app", taken
        shutil.rmtree(folder.parent)


def test_twenty_concurrent_requests_all_complete_with_their_own_prompt_and_seed(server, photo):
    from gradio_client import Client, handle_file

    def one(i):
        client = Client(server, verbose=False)
        _, _, _, records = client.predict(handle_file(photo), "tiny", "tiny", None, "", f"prompt number {i}", [], "",
                                          *KNOBS.values(), 100 + i, 1, api_name="/transform")  # fmt: skip
        return i, records[0]

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert len(results) == 20
    for i, meta in results:
        assert meta["prompt"] == f"prompt number {i}" and meta["seed"] == 100 + i


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"), reason="Debian chromium not installed")
def test_real_browser_upload_preset_generate(server, photo, tmp_path):
    from playwright.sync_api import sync_playwright

    assert _chromium(), "CI installs Debian chromium (.ci/run); it is missing"
    shots = Path(os.environ.get("DEPTH2IMG_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(server, timeout=60_000)
        # a depth file given before the photo is kept for it (it was dropped)
        np.savez(
            tmp_path / "cat_depth.npz", depth=np.linspace(1, 9, 300 * 451).reshape(300, 451), kind="metric"
        )
        page.get_by_text("Depth", exact=True).first.click()
        page.locator("#depth-file input[type=file]").set_input_files(tmp_path / "cat_depth.npz")
        page.locator("#depth-file").get_by_text("cat_depth", exact=True).wait_for(timeout=30_000)
        page.locator("#photo input[type=file]").set_input_files(photo)
        # the depth preview appears before generating
        page.locator("#depth-preview img").wait_for(timeout=60_000)
        assert "cat_depth" in page.locator("#depth-file").inner_text()
        page.locator("#prompt textarea").fill("a cat in the snow")
        page.locator("#presets").get_by_label("winter").check()
        page.locator("#generate").click()
        page.locator("#gallery img").first.wait_for(timeout=120_000)
        page.screenshot(path=str(shots / "app.png"), full_page=True)
        src = page.locator("#gallery img").first.get_attribute("src")
        # an unreadable photo is one line on the page, naming it (an event taking the photo raised it unseen)
        (tmp_path / "holiday.png").write_bytes(b"not an image at all")
        page.locator("#photo input[type=file]").set_input_files(tmp_path / "holiday.png")
        notice = page.locator(".toast-body").filter(has_text="holiday.png: not a readable image")
        notice.first.wait_for(timeout=30_000)
        browser.close()
    assert src and ".png" in src
    assert (shots / "app.png").stat().st_size > 10_000


def test_auth_and_upload_limit(tmp_path, photo):
    from gradio_client import Client, handle_file

    port = _free_port()
    demo = launch(Service(model="tiny"), port=port, block=False, auth="ana:secret", max_upload_mb=1)
    url = f"http://127.0.0.1:{port}/"
    try:
        with pytest.raises(Exception):  # noqa: B017  gradio_client raises its own error types for a 401
            Client(url, verbose=False)
        client = Client(url, auth=("ana", "secret"), verbose=False)
        preview, _ = client.predict(handle_file(photo), "tiny", None, "", api_name="/depth")
        assert Image.open(preview).size == (451, 300)
        big = tmp_path / "big.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), np.uint8)).save(big)
        assert big.stat().st_size > 1_000_000
        with pytest.raises(Exception, match="(?i)exceed|too large|413|size"):
            client.predict(handle_file(str(big)), "tiny", None, "", api_name="/depth")
    finally:
        demo.close()


def test_a_model_name_that_does_not_resolve_keeps_the_loaded_one(service):
    """Picking an unknown backbone dropped the loaded one, so the next request loaded it again (minutes, real)."""
    from depth2img.errors import InputError

    loaded = service.transformer()
    with pytest.raises(InputError, match="nope"):
        service.transformer("tiny/nope")
    assert service._transformer is loaded and service.transformer() is loaded


def test_what_another_backbone_cannot_take_is_refused_before_it_replaces_the_loaded_one(service, photo):
    """A black-box review of the app (2026-11-28): a request naming Flux with a negative prompt (or SD2 with a control
    knob) loaded it in place of the backbone held, and was refused only then; the next request loaded that again
    (two full model loads, minutes with real weights, for one visitor's mistake)."""
    from depth2img.errors import InputError
    from depth2img.io import load_image

    loaded = service.transformer()
    image = load_image(photo)
    with pytest.raises(
        InputError, match=r"^negative_prompt: backbone 'tiny/flux-depth' \(flux-control\) takes no"
    ):
        service.transform(image, model="tiny/flux-depth", prompt="a cat", negative_prompt="blurry", steps=8)
    with pytest.raises(
        InputError, match=r"^control_scale: backbone 'tiny/sd2-depth' \(sd2-depth\) has no such knob"
    ):
        service.variations(
            image, model="tiny/sd2-depth", presets=["rain"], seeds=[0], control_scale=0.3, steps=2
        )
    with pytest.raises(InputError, match=r"^scheduler 'euler-a' is not one of .* for flux-control$"):
        service.transform(image, model="tiny/flux-depth", prompt="a cat", scheduler="euler-a", steps=8)
    with pytest.raises(
        InputError, match=r"^steps=2 and strength=0.8 keep nothing of the photo: a flow-matching"
    ):
        service.transform(image, model="tiny/flux-depth", prompt="a cat", steps=2)
    # nor what any backbone refuses (a re-verification of the above: each of these loaded SD2 first)
    sd2 = dict(model="tiny/sd2-depth", steps=2)
    for call, asked, problem in [
        (service.transform, dict(prompt=""), r"^give a prompt or a preset"),
        (
            service.transform,
            dict(prompt="a", num_images=0),
            r"^num_images must be an integer in 1\.\.64, got 0$",
        ),
        (
            service.transform,
            dict(prompt="a", seed=-1),
            r"^seed must be an integer in 0\.\.2\*\*63-1, got -1$",
        ),
        (service.transform, dict(prompt="a", bogus=1), r"^transform: 'bogus' is not an argument it takes"),
        (service.transform, dict(prompt="a", depth_polarity="up"), r"^depth_polarity must be one of"),
        (service.transform, dict(prompt=5), r"^prompt must be a string, got int 5$"),
        (service.variations, dict(prompt="a", presets=["fog"], seeds=[-1]), r"^seed must be an integer"),
        (service.variations, dict(prompt="a", presets=["fog"], seeds=[]), r"^seeds is empty"),
        (service.variations, dict(presets=None, seeds=[1]), r"^give a prompt or a preset"),
    ]:
        with pytest.raises(InputError, match=problem):
            call(image, **sd2, **asked)
    assert service._transformer is loaded


def test_service_estimates_a_photos_depth_once(chelsea):
    svc = Service(model="tiny")
    est = svc.estimator("tiny")
    calls = []
    svc._estimators["tiny"] = lambda img, **k: calls.append(1) or est(img, **k)
    a = svc.depth(chelsea, estimator="tiny")
    b = svc.depth(chelsea.copy(), estimator="tiny")  # same pixels, another object
    assert len(calls) == 1 and a is b
    svc.depth(chelsea.transpose(0), estimator="tiny")  # other pixels
    assert len(calls) == 2
    # an L and a P image can hold the same bytes: the second got the first's depth
    grey = chelsea.convert("L")
    pal = Image.frombytes("P", grey.size, grey.tobytes())
    pal.putpalette([255 - (i % 256) for i in range(768)])
    assert svc.depth(grey, estimator="tiny") is not svc.depth(pal, estimator="tiny") and len(calls) == 4
    # not an image: one line (an array was an AttributeError)
    with pytest.raises(Depth2ImgError, match="^image must be a PIL image .*got ndarray$"):
        svc.depth(np.asarray(chelsea), estimator="tiny")
    # least recently used goes: a photo in use keeps its depth however many others come (it went after 8)
    for k in range(12):
        svc.depth(chelsea.rotate(k + 1), estimator="tiny")
        assert svc.depth(chelsea, estimator="tiny") is a


def test_service_keeps_two_estimators_loaded(chelsea):
    """Every estimator a visitor picked stayed loaded (~0.9B parameters for all five, beside the backbone)."""
    from depth2img.errors import InputError

    svc = Service(model="tiny")
    kept = svc.depth(chelsea, estimator="tiny")
    svc.depth(chelsea, estimator="tiny/dpt-hybrid")
    svc.estimator("tiny")  # used again: now the most recent
    svc.depth(chelsea, estimator="tiny/zoedepth")
    assert list(svc._estimators) == ["tiny", "tiny/zoedepth"]  # the least recently used went, with its depths
    assert {k[0] for k in svc._depths} == {"tiny", "tiny/zoedepth"} and svc.depth(
        chelsea, estimator="tiny"
    ) is kept
    with pytest.raises(InputError, match="estimator 'nope' is not a registry name"):
        svc.estimator("nope")
    assert list(svc._estimators) == ["tiny/zoedepth", "tiny"]  # none dropped for a bad name


def test_a_taken_or_impossible_port_is_one_line(capsys):
    from depth2img.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["app", "--model", "tiny", "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert (
            f"depth2img: error: cannot serve on 127.0.0.1:{port} (" in err and "choose another --port" in err
        )
        assert "internal error" not in err
    for bad in ("0", "99999"):
        assert main(["app", "--model", "tiny", "--port", bad]) == 2
        assert capsys.readouterr().err == f"depth2img: error: --port must be in 1..65535, got {bad}\n"


def test_app_warms_up_before_serving_when_compiled(monkeypatch):
    """With --compile the model is compiled before the server starts (--no-warm-up skips it); without, only
    --warm-up asks for it (then it just loads the model)."""
    from depth2img import ui
    from depth2img.cli import main

    events = []
    monkeypatch.setattr(ui, "launch", lambda service, **kw: events.append("launch"))
    monkeypatch.setattr(Service, "warm_up", lambda self, progress=None: events.append("warm-up") or 1.0)
    for args in (["--compile", "default"], ["--compile", "default", "--no-warm-up"], [], ["--warm-up"]):
        assert main(["app", "--model", "tiny", *args]) == 0
    assert events == ["warm-up", "launch", "launch", "launch", "warm-up", "launch"]


def test_warm_up_leaves_no_request_waiting_for_the_compiler(eager_compile):
    """After the warm-up, requests at other sizes, with more images, img2img or txt2img, add no compiled graph
    (dynamo traces the real models; its eager backend stands in for inductor)."""
    import torch._dynamo

    from depth2img import render_driving_scene

    service = Service(model="tiny", compile="default")
    messages = []
    service.warm_up(progress=messages.append)
    assert messages[0] == "loading model tiny" and messages[1].startswith("warm-up: compiling for")
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs >= 6
    for (width, height), images, strength in [
        ((300, 500), 3, 1.0),
        ((1024, 683), 4, 0.6),
        ((451, 300), 1, 0.8),
    ]:
        scene = render_driving_scene(width, height, seed=1)
        service.transform(scene.image, prompt="a road", seed=1, num_images=images, steps=2, strength=strength)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs, (width, height, images)


def test_a_backbone_switch_waits_for_the_run_on_the_loaded_one(monkeypatch):
    """Another thread's switch between choosing the backbone and running it kept two backbones alive (and the
    run used the one just dropped): the lock is held from the choice to the end of the run."""
    import threading
    import time
    import weakref

    from depth2img import transformer as tmod

    alive, events = weakref.WeakSet(), []
    chosen = threading.Event()

    class Fake:
        def __init__(self, name):
            self.name = name
            alive.add(self)

        def transform(self, image, **kwargs):
            events.append((self.name, len(alive)))

    choose = Service.transformer

    def slow_choice(self, model=None, progress=None, asked=None):
        st = choose(self, model, progress, asked)
        if model == "tiny":  # the first request: the second one asks for its backbone right after this choice
            chosen.set()
            time.sleep(0.3)
        return st

    monkeypatch.setattr(
        tmod.SceneTransformer, "from_pretrained", classmethod(lambda cls, name, **k: Fake(name))
    )
    monkeypatch.setattr(Service, "transformer", slow_choice)
    monkeypatch.setattr(Service, "depth", lambda self, image, **k: None)
    svc = Service(model="tiny")
    first = threading.Thread(
        target=svc.transform, args=(object(),), kwargs={"model": "tiny", "prompt": "a cat"}
    )
    first.start()
    assert chosen.wait(10)
    svc.transform(object(), model="tiny/sd2-depth", prompt="a cat")
    first.join()
    assert events == [("tiny", 1), ("tiny/sd2-depth", 1)]


def test_an_unreadable_upload_is_one_line_naming_it(server, tmp_path):
    """gradio opened the upload before any handler and the page showed a bare "Error"."""
    from gradio_client import Client, handle_file

    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"not an image at all")
    client = Client(server, verbose=False)
    with pytest.raises(
        Exception, match=r"holiday\.png: not a readable image \(unknown format or corrupt header\)"
    ):
        client.predict(handle_file(str(bad)), "tiny", None, "", api_name="/depth")


def test_variations_use_the_negative_prompt_control_sliders_and_scheduler_and_are_capped(service, photo):
    """Variations ran without the page's negative prompt, control sliders and scheduler, silently; and 70 seeds made
    one 70-image job on the device's single queue slot."""
    from depth2img.errors import InputError
    from depth2img.ui import VARIATIONS_MAX

    gallery, _ = handle_variations(service, photo, "tiny", "tiny", None, "", "a cat", [], "3", 2, 0.5, 7.5, False,
                                "blurry", 0.5, 0.0, 0.5, "ddim")  # fmt: skip
    meta = read_png_metadata(gallery[0][0])
    assert (meta["negative_prompt"], meta["control_scale"], meta["control_end"], meta["scheduler"]) == (
        "blurry", 0.5, 0.5, "ddim"
    )  # fmt: skip
    seeds = ", ".join(str(s) for s in range(VARIATIONS_MAX // 2 + 1))
    with pytest.raises(
        InputError,
        match=rf"^variations: {VARIATIONS_MAX + 2} images \(2 row\(s\) x 9 seed\(s\)\) is more than 16",
    ):
        handle_variations(service, photo, "tiny", "tiny", None, "", "", ["rain", "fog"], seeds, 2, 0.5, 7.5)


def test_an_uploaded_depth_file_is_named_as_the_visitor_named_it(service, photo):
    """Errors and the metadata named the server's copy (/tmp/gradio/<hash>/d.npy), not the visitor's file."""
    import secrets
    import shutil

    import gradio as gr
    from gradio.utils import get_upload_folder

    from depth2img.ui import _friendly

    folder = Path(get_upload_folder()) / secrets.token_hex(20)
    folder.mkdir(parents=True)
    try:
        np.save(folder / "d.npy", np.linspace(1, 9, 300 * 451).reshape(300, 451))
        with pytest.raises(gr.Error) as err:
            _friendly(handle_depth)(service, photo, "tiny", str(folder / "d.npy"), "")
        assert err.value.message.startswith("d.npy: the file does not say which way its depth runs")
        k = KNOBS
        *_, records = handle_generate(service, photo, "tiny", "tiny", str(folder / "d.npy"), "metric", "a cat", [],
                                      "", *k.values(), 3, 1)  # fmt: skip
        assert records[0]["depth"]["source"] == "d.npy"
    finally:
        shutil.rmtree(folder)


def test_warnings_reach_the_page(service, photo, monkeypatch):
    """A truncated prompt or an unused negative prompt was said only in the metadata, inside a closed panel."""
    import gradio as gr

    shown = []
    monkeypatch.setattr(gr, "Warning", shown.append)
    k = {**KNOBS, "guidance": 1.0}
    handle_generate(service, photo, "tiny", "tiny", None, "", "a cat", [], "blurry", *k.values(), 3, 1)
    assert shown == ["negative prompt unused: guidance_scale 1 <= 1 turns classifier-free guidance off"]
    shown.clear()
    handle_variations(service, photo, "tiny", "tiny", None, "", "a cat", ["rain", "fog"], "1", 2, 0.5, 1.0, False,
                      "blurry")  # fmt: skip
    assert shown == [
        "negative prompt unused: guidance_scale 1 <= 1 turns classifier-free guidance off"
    ]  # once


def test_a_page_serving_a_tiny_model_offers_the_other_tiny_builds():
    """With --model tiny the dropdowns offered only the hub's models (which fail offline), and the API refused
    tiny/sd2-depth as not among the choices."""
    import gradio as gr

    demo = create_demo(Service(model="tiny"))
    dropdowns = {
        b.label: [v for _, v in b.choices] for b in demo.blocks.values() if isinstance(b, gr.Dropdown)
    }
    assert {"tiny", "tiny/sd2-depth", "tiny/sdxl-depth", "tiny/flux-depth"} <= set(dropdowns["Backbone"])
    assert not [v for v in dropdowns["Backbone"] if not v.startswith("tiny")]
    assert {"tiny", "tiny/dpt-hybrid", "tiny/zoedepth"} <= set(dropdowns["Depth estimator"])
    real = create_demo(Service(model="sd15-depth", estimator="depth-anything-v2-small"))
    labels = [b for b in real.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Backbone"]
    assert "sd2-depth" in [v for _, v in labels[0].choices]
    # a non-commercial estimator is marked, as a backbone is
    (estimator,) = [
        b for b in real.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Depth estimator"
    ]
    assert ("depth-anything-v2-base (non-commercial)", "depth-anything-v2-base") in estimator.choices
    assert ("depth-anything-v2-small", "depth-anything-v2-small") in estimator.choices


def test_a_depth_file_given_before_the_photo_is_kept_for_it(service):
    """A depth file given before any photo was dropped, silently, when the photo came (as one given with the last
    photo is: the sample's street depth was used for the next photo)."""
    import gradio as gr

    from depth2img.ui import depth_file_for_new_photo, depth_file_given

    keep = depth_file_for_new_photo("d.npz", "metric", depth_file_given(None, "d.npz"))
    assert keep == (gr.skip(), gr.skip(), "d.npz")  # kept, now paired with this photo
    # a photo dropped in before the event that paired the depth file with the last photo reported: still kept
    assert depth_file_for_new_photo("d.npz", "metric", "older.npz")[:2] == (gr.skip(), gr.skip())
    # given with the last photo: dropped with its polarity (the sample's: test_the_samples_depth_file_is_...)
    assert depth_file_for_new_photo("d.npz", "metric", depth_file_given("old.png", "d.npz")) == (
        None,
        "",
        None,
    )
    assert depth_file_for_new_photo(None, "", None) == (None, "", None)
    deps = {d["api_name"]: d for d in create_demo(service).config["dependencies"]}
    given_with = deps["depth_file_photo"]["outputs"]
    assert deps["depth_file_photo"]["targets"][0][1] == "upload"
    assert set(given_with) <= set(deps["new_photo"]["inputs"]) and set(given_with) <= set(
        deps["sample_depth_paired"]["outputs"]
    )
    assert set(given_with) <= set(deps["new_photo"]["outputs"])
    # whether a photo is there comes from the server's state, set by the photo's and the sample's events and the
    # photo's removal: the page's photo value sent with the depth file could already be the next photo (CI, once)
    (has_photo,) = (
        set(deps["depth_file_photo"]["inputs"])
        - set(deps["depth_file_photo"]["outputs"])
        - {deps["depth_on_depth_file"]["targets"][0][0]}
    )
    photo_id = deps["depth"]["inputs"][0]
    assert photo_id not in deps["depth_file_photo"]["inputs"]
    assert all(has_photo in deps[name]["outputs"] for name in ("new_photo", "sample", "photo_gone"))


def test_the_samples_depth_file_is_dropped_when_the_visitor_gives_a_photo(server):
    """The sample's street depth stayed for the next photo: its pairing recorded the path the sample wrote, and the
    page holds gradio's copy of it, so the two never matched. Driven as the page does it: the sample's events in
    their order, then the photo's event with the page's depth file value."""
    import httpx
    from gradio_client import Client

    client = Client(server, verbose=False)
    photo, held = client.predict(api_name="/sample")
    assert Path(held).name == "driving_scene_depth.npz"
    page_file = {"path": held, "meta": {"_type": "gradio.FileData"}, "orig_name": Path(held).name}
    ids = {d.get("api_name"): d["id"] for d in client.config["dependencies"]}

    def page_event(name, *data):
        sent = {"data": list(data), "fn_index": ids[name], "session_hash": client.session_hash}
        answer = httpx.post(f"{server}gradio_api/run/predict", json=sent, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]

    page_event("sample_depth_paired", page_file)
    dropped = page_event("new_photo", page_file, "", None)
    assert dropped[:2] == [None, ""], (
        dropped
    )  # was [{'__type__': 'update'}, {'__type__': 'update'}]: both kept


def test_a_depth_files_recorded_polarity_warning_reaches_the_page(service, photo, tmp_path, monkeypatch):
    """The file's recorded polarity kept over the one picked was said on the server's console only."""
    import gradio as gr

    from depth2img.errors import Depth2ImgWarning

    np.savez(tmp_path / "d.npz", depth=np.linspace(1, 9, 150 * 225).reshape(150, 225), kind="metric")
    shown = []
    monkeypatch.setattr(gr, "Warning", shown.append)
    with pytest.warns(Depth2ImgWarning):  # the file at half the photo's size
        handle_depth(service, photo, "tiny", str(tmp_path / "d.npz"), "far-bright")
    assert shown == [f"{tmp_path / 'd.npz'}: the file records its depth as metric, which it keeps; the polarity given "
                     "(far-bright) is for files that record none"]  # fmt: skip
    shown.clear()
    handle_depth(service, photo, "tiny", str(tmp_path / "d.npz"), "metric")
    assert shown == []


def test_the_seed_field_takes_every_seed_a_browser_holds_exactly(service):
    """The page's seed stopped at 2**31-1 while the Variations seeds and the Python API take up to 2**63-1; past 2**53 a
    browser's number changes a typed seed silently, so the page stops there: _seed refuses more, naming the seed (the
    field's own bounds gave gradio's "Value -1 is less than minimum value 0.", and its precision 0 rounded 2.5 to 2)."""
    import gradio as gr

    from depth2img.ui import MAX_SEED, _seed

    demo = create_demo(service)
    (seed,) = [b for b in demo.blocks.values() if isinstance(b, gr.Number) and b.label == "Seed"]
    assert seed.maximum is None and seed.precision is None and float(MAX_SEED) == MAX_SEED == 2**53 - 1
    assert _seed(seed.preprocess(float(MAX_SEED))) == MAX_SEED and _seed(seed.preprocess(7)) == 7
    with pytest.raises(
        InputError, match=r"^seed must be in 0\.\.9007199254740991 here .*got 9007199254740992$"
    ):
        _seed(seed.preprocess(2**53))
    # as sent (it was shown as 1000000000000000019884624838656)
    with pytest.raises(InputError, match=r"^seed must be in 0\.\.9007199254740991 here .*got 1e\+30$"):
        _seed(seed.preprocess(1e30))
    with pytest.raises(InputError, match=r"^seed must be a whole number in 0\.\.9007199254740991, got 2\.5$"):
        _seed(seed.preprocess(2.5))


def test_the_negative_prompt_and_control_sliders_show_where_the_backbone_takes_them():
    """sd2-depth has no control knobs and Flux no negative prompt: a slider moved for the last backbone, still on the
    page, made the next Generate fail."""
    import gradio as gr

    from depth2img.ui import backbone_controls

    def shown(model):
        return [u.get("visible") for u in backbone_controls(model)]

    # the last: not known before it loads
    assert shown("tiny") == shown("sd15-depth") == shown("someone/else") == [True] * 4
    assert shown("tiny/sd2-depth") == shown("sd2-depth") == [True, False, False, False]
    assert shown("flux-depth") == [False] * 4 and shown("tiny/flux-depth-lora") == [False, True, False, False]
    negative, *controls = backbone_controls("tiny/flux-depth")
    # back to their defaults
    assert negative["value"] == "" and [c["value"] for c in controls] == [1.0, 0.0, 1.0]
    demo = create_demo(Service(model="tiny/sd2-depth"))
    sliders = {b.label: b.visible for b in demo.blocks.values() if isinstance(b, (gr.Slider, gr.Textbox))}
    assert sliders["Negative prompt"] and sliders["Steps"]
    assert not sliders["Control scale"] and not sliders["Control start"] and not sliders["Control end"]
    deps = {d["api_name"]: d for d in demo.config["dependencies"]}
    assert deps["backbone_controls"]["targets"][0][1] == "change"


@pytest.mark.parametrize("stop", [True, False], ids=["stop", "cancel alone"])
def test_a_stopped_or_cancelled_generation_ends_at_its_step(server, photo, monkeypatch, stop):
    """The Stop button (as a browser sends it: the flag, then gradio's cancel): this page session's running transform
    ends at the end of its denoising step, nothing made, though a Generate pressed right after it (gradio frees the
    queue's slot at once) starts before the stopped run reaches the end of its step: with one event per session,
    cleared as a run started, the stopped run went on to its end. The new run is not stopped. A review of the app
    (2026-11-28): gradio_client's ``Job.cancel()`` alone (as a client that goes away) let the running transform go
    on to its last step, holding the device while the next request waited, and write a request folder that nobody
    received; now it ends as Stop's does."""
    import threading

    from gradio_client import Client, handle_file

    from depth2img import transformer, ui
    from depth2img.backends import Backend
    from depth2img.errors import Stopped

    said, running, second = [], threading.Event(), threading.Event()

    class Heard(Stopped):
        def __init__(self, message):
            said.append(message)
            super().__init__(message)

    run, transform = Backend.__call__, Service.transform

    def first_step_waits_for_the_next_request(self, callback, **kwargs):
        def step(pipe, i, t, kw):
            if i == 0 and not running.is_set():  # (the first run only)
                running.set()
                second.wait(60)
            return callback(pipe, i, t, kw)

        return run(self, callback=step, **kwargs)

    def counted(self, *args, **kwargs):
        if running.is_set():
            second.set()  # (the next request has started)
        return transform(self, *args, **kwargs)

    monkeypatch.setattr(transformer, "Stopped", Heard)
    monkeypatch.setattr(Backend, "__call__", first_step_waits_for_the_next_request)
    monkeypatch.setattr(Service, "transform", counted)
    folders = set(ui.APP_DIR.iterdir())
    client = Client(server, verbose=False)
    args = [handle_file(photo), "tiny", "tiny", None, "", "a cat", [], ""]
    job = client.submit(*args, *dict(KNOBS, steps=20, strength=1.0).values(), 5, 1, api_name="/transform")
    assert running.wait(120)
    if stop:
        client.predict(api_name="/stop")
    job.cancel()
    # (the service's lock holds this one until the stopped run has ended)
    _, _, _, records = client.predict(*args, *KNOBS.values(), 6, 1, api_name="/transform")
    assert records[0]["seed"] == 6
    assert said == ["stopped after step 1 of 20; no image was made"]
    assert len(set(ui.APP_DIR.iterdir()) - folders) == 1  # the second request's alone


def test_the_page_shows_the_denoising_steps_as_they_run(server, photo, monkeypatch):
    """Generate's progress on the page: the denoise bar, step by step (the page showed the loading lines alone: behind
    the handlers' *args gradio found no Progress parameter to track tqdm with; and tracking, it counted diffusers'
    hidden bar's steps and ours on one bar, 20 of 10)."""
    import threading

    from gradio_client import Client, handle_file

    from depth2img.backends import Backend

    seen, run = threading.Event(), Backend.__call__

    def step_four_waits_to_be_seen(self, callback, **kwargs):
        def step(pipe, i, t, kw):
            if i == 3:  # three steps done
                seen.wait(60)
            return callback(pipe, i, t, kw)

        return run(self, callback=step, **kwargs)

    monkeypatch.setattr(Backend, "__call__", step_four_waits_to_be_seen)
    client = Client(server, verbose=False)
    job = client.submit(handle_file(photo), "tiny", "tiny", None, "", "a cat", [], "",
                        *dict(KNOBS, steps=8, strength=1.0).values(), 7, 1, api_name="/transform")  # fmt: skip
    shown = []
    for _ in range(1200):
        shown = [(u.desc, u.index, u.length) for u in job.status().progress_data or []]
        if shown == [("denoise", 3, 8)] or job.done():
            break
        time.sleep(0.05)
    seen.set()
    assert shown == [("denoise", 3, 8)]
    assert job.result(timeout=60)[3][0]["seed"] == 7


def test_a_refused_choice_or_depth_file_type_is_one_line_naming_the_input(server, photo, tmp_path, capsys):
    """A review of the app (2026-11-28): over the HTTP API a bad estimator, scheduler, backbone, polarity or preset
    was told "Value: nope is not in the list of choices: [...]" and a depth file notes.txt "Invalid file type. Please
    upload a file that is one of these formats: [...]", naming no input (only the sliders were named), and each
    printed gradio's 28-line traceback in the server's log, not the one line ``depth2img app: ...``."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    notes = tmp_path / "notes.txt"
    notes.write_text("0 1\n2 3\n")
    client = Client(server, verbose=False)
    capsys.readouterr()
    for name, value, said in (
        ("estimator", "nope-est", "estimator: Value: nope-est is not in the list of choices"),
        ("scheduler", "foo", "scheduler: Value: foo is not in the list of choices"),
        ("model", "nope-model", "model: Value: nope-model is not in the list of choices"),
        ("polarity", "sideways", "polarity: Value: 'sideways' (type: <class 'str'>) is not in the list of choices"),
        ("presets", ["nope-preset"], "presets: Value: 'nope-preset' (type: <class 'str'>) is not in the list of"),
        ("depth_file", handle_file(str(notes)), "depth_file: notes.txt: Invalid file type. Please upload a file"),
    ):  # fmt: skip
        given = dict(model="tiny", estimator="tiny", depth_file=None, polarity="", presets=[], **KNOBS)
        given[name] = value
        with pytest.raises(AppError, match=re.escape(said)):
            client.predict(handle_file(photo), given["model"], given["estimator"], given["depth_file"],
                           given["polarity"], "a cat", given["presets"], "", *[given[k] for k in KNOBS], 11, 1,
                           api_name="/transform")  # fmt: skip
        logged = capsys.readouterr().err
        assert f"depth2img app: {said}" in logged and "Traceback" not in logged, name
    # the Variations tab's presets too
    with pytest.raises(AppError, match=re.escape("presets: Value: 'nope-preset'")):
        client.predict(handle_file(photo), "tiny", "tiny", None, "", "", ["nope-preset"], "1", 2, 0.5, 7.5, False,
                       "", 1.0, 0.0, 1.0, "", api_name="/variations")  # fmt: skip
    assert "Traceback" not in capsys.readouterr().err


def test_a_photo_over_pillows_guard_is_refused_in_one_line_without_pillows_warning(server, tmp_path, recwarn):
    """A review of the app (2026-11-28): a 12000x12000 upload printed Pillow's two-line DecompressionBombWarning in
    the server's log (gradio opens the upload first) before the app's own one-line refusal."""
    import struct
    import zlib

    from gradio_client import Client, handle_file

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # a grey PNG's header saying 12000x12000 (144 MP: over Pillow's 89.5 MP warning, under its 179 MP error)
    big = tmp_path / "big12k.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 8, 0, 0, 0, 0))
                    + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))  # fmt: skip
    client = Client(server, verbose=False)
    with pytest.raises(Exception, match=r"big12k\.png: 144,000,000 pixels, over the [0-9,]+-pixel limit"):
        client.predict(handle_file(str(big)), "tiny", None, "", api_name="/depth")
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_a_file_input_sent_as_no_file_is_one_line_naming_the_input(server, photo, capsys):
    """A review of the app (2026-11-28): a photo or depth file sent over the HTTP API as a plain path (gradio_client
    without ``handle_file``), a number, or a file's record with no path got "The upstream Gradio app has raised an
    exception but has not enabled verbose error reporting" and, in the server's log, a 19-line traceback ending in
    pydantic's "1 validation error for FileData": gradio checks the payload before the component's preprocess, which
    names the input."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server, verbose=False)
    capsys.readouterr()
    hint = "give a file (gradio_client.handle_file(path)), got"
    no_path = {"meta": {"_type": "gradio.FileData"}}
    for api_name, args, said in (
        ("/depth", [photo, "tiny", None, ""], f"image_path: {hint} {photo!r}"),
        ("/depth", [handle_file(photo), "tiny", "/tmp/x.npy", ""], f"depth_file: {hint} '/tmp/x.npy'"),
        ("/depth", [handle_file(photo), "tiny", 5, ""], f"depth_file: {hint} 5"),
        ("/depth", [handle_file(photo), "tiny", no_path, ""], f"depth_file: {hint} {no_path!r}"),
        ("/depth_on_estimator", [photo, "tiny", None, ""], f"image_path: {hint} {photo!r}"),
        ("/transform", [photo, "tiny", "tiny", None, "", "a cat", [], "", *KNOBS.values(), 11, 1],
         f"image_path: {hint} {photo!r}"),
        ("/variations", [handle_file(photo), "tiny", "tiny", "/tmp/x.npy", "", "", ["fog"], "1", 2, 0.5, 7.5, False,
                         "", 1.0, 0.0, 1.0, ""], f"depth_file: {hint} '/tmp/x.npy'"),
    ):  # fmt: skip
        with pytest.raises(AppError, match=re.escape(said)):
            client.predict(*args, api_name=api_name)
        logged = capsys.readouterr().err
        assert f"depth2img app: {said}" in logged and "Traceback" not in logged, (api_name, said)
    # a file sent as one still works
    preview, _ = client.predict(handle_file(photo), "tiny", None, "", api_name="/depth")
    assert Image.open(preview).size == (451, 300)


def test_a_slider_sent_as_text_is_named_as_a_null_is(server, photo):
    """A review of the app (2026-11-28): steps="abc" over the HTTP API was told "steps: '<' not supported between
    instances of 'str' and 'int'" (gradio's Slider compared it with its minimum), where steps=None was told "steps
    must be a number, got None"."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server, verbose=False)
    for knob, value, said in (("steps", "abc", "steps must be a number, got 'abc'"),
                              ("control_scale", "x", "control_scale must be a number, got 'x'"),
                              ("guidance", [1], "guidance_scale must be a number, got [1]")):  # fmt: skip
        knobs = {**KNOBS, knob: value}
        with pytest.raises(AppError, match=re.escape(said)):
            client.predict(handle_file(photo), "tiny", "tiny", None, "", "a cat", [], "", *knobs.values(), 11, 1,
                           api_name="/transform")  # fmt: skip
