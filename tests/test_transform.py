"""The generation core on tiny models: equal to raw diffusers, exact sizes, seeds, metadata, ControlNet window."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from depth2img import conditioning, io, registry, tiny
from depth2img.depthmap import DepthMap
from depth2img.errors import GenerationError, InputError, ModelLoadError
from depth2img.knobs import CONTROL_KNOBS
from depth2img.transformer import SceneTransformer, generation_size

PROMPT = "a street"
# a batched image against the same image run alone: batched kernels round differently, by batch size and by CPU
# (1.2e-5 on an AVX-512/AMX CPU, where 1e-5 had held on others); one 8-bit level is 3.9e-3
BATCH_ROUNDING = 1e-4
SIZE = 64  # tiny backbones generate at 64x64, so a 64x64 input goes through unresized


@pytest.fixture(scope="module")
def photo(chelsea):
    return chelsea.resize((SIZE, SIZE))


@pytest.fixture(scope="module")
def depth():
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return DepthMap(1.0 + yy + 0.3 * xx, "metric_depth")


@pytest.fixture(scope="module")
def sd15():
    return SceneTransformer.from_pretrained("tiny")


def _gens(seed, n=1):
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


def _control(depth):
    return torch.from_numpy(depth.control_image()).permute(2, 0, 1)[None]


def _control_np(depth):
    """The control image as Flux's docs pass it (an image, which diffusers scales to [-1, 1]); float, not 8-bit."""
    return depth.control_image()[None]


def _assert_same(ours, theirs):
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-6


def test_sd15_img2img_equals_diffusers(sd15, photo, depth, tiny_dir):
    from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline, UniPCMultistepScheduler

    ours = sd15.transform(photo, PROMPT, depth=depth, seed=7, steps=2, strength=0.6, negative_prompt="blurry")
    cn = ControlNetModel.from_pretrained(tiny_dir / "sd15-depth-controlnet")
    ref = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
        tiny_dir / "sd15-depth", controlnet=cn, safety_checker=None
    )
    ref.scheduler = UniPCMultistepScheduler.from_config(ref.scheduler.config)
    # depth2img's control_scale defaults to 1.0 in both modes; this diffusers pipeline's to 0.8 (its txt2img's: 1.0)
    theirs = ref(PROMPT, image=photo, control_image=_control(depth), strength=0.6, num_inference_steps=2,
                 guidance_scale=7.5, negative_prompt="blurry", generator=_gens(7), output_type="np",
                 controlnet_conditioning_scale=1.0).images  # fmt: skip
    _assert_same(ours.raw, theirs)
    assert ours.metadata[0]["mode"] == "img2img"


def _other_controlnet(tiny_dir, folder):
    """The tiny SD1.5 ControlNet with other weights (a fine-tune of it), saved to ``folder``."""
    from diffusers import ControlNetModel

    cn = ControlNetModel.from_pretrained(tiny_dir / "sd15-depth-controlnet")
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in cn.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    cn.save_pretrained(folder, safe_serialization=True)
    return folder


def test_a_controlnet_given_apart_is_the_one_that_runs(sd15, photo, depth, tiny_dir, tmp_path):
    """``controlnet=``: a depth ControlNet other than the backbone's own equals diffusers' pipeline built with it,
    differs from the backbone's own, and is recorded."""
    from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline, UniPCMultistepScheduler

    mine = _other_controlnet(tiny_dir, tmp_path / "my-controlnet")
    st_ = SceneTransformer.from_pretrained("tiny", controlnet=str(mine))
    ours = st_.transform(photo, PROMPT, depth=depth, seed=7, steps=2, strength=0.6)
    ref = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
        tiny_dir / "sd15-depth", controlnet=ControlNetModel.from_pretrained(mine), safety_checker=None
    )
    ref.scheduler = UniPCMultistepScheduler.from_config(ref.scheduler.config)
    theirs = ref(PROMPT, image=photo, control_image=_control(depth), strength=0.6, num_inference_steps=2,
                 guidance_scale=7.5, generator=_gens(7), output_type="np", controlnet_conditioning_scale=1.0).images  # fmt: skip
    _assert_same(ours.raw, theirs)
    own = sd15.transform(photo, PROMPT, depth=depth, seed=7, steps=2, strength=0.6)
    assert np.abs(own.raw - ours.raw).max() > 1e-2
    backbone = ours.metadata[0]["backbone"]
    assert backbone["controlnet"] == str(mine) and backbone["controlnet_revision"] is None


def test_a_controlnet_that_cannot_serve_is_one_line(tiny_dir, tmp_path, monkeypatch):
    from depth2img import backends

    def no_loading(*args, **kwargs):
        raise AssertionError("a backbone's files were fetched or loaded")

    # refused before the backbone's files are fetched, where its kind is known then
    with monkeypatch.context() as m:
        m.setattr(backends, "snapshot_dir", no_loading)
        m.setattr(backends, "snapshot", no_loading)
        for model in ("tiny/sd2-depth", "tiny/flux-depth"):
            kind = "sd2-depth" if model == "tiny/sd2-depth" else "flux-control"
            with pytest.raises(
                InputError, match=f"^controlnet: backbone '{model}' \\({kind}\\) takes no ControlNet; "
            ):
                SceneTransformer.from_pretrained(model, controlnet=str(tmp_path))
        for given in ("", "no/such/folder", str(tmp_path / "missing")):
            with pytest.raises(InputError, match="^controlnet"):
                SceneTransformer.from_pretrained("tiny", controlnet=given)
    # a folder outside the registry is checked by the loader (its kind is read from the folder)
    with pytest.raises(InputError, match="takes no ControlNet"):
        backends.load_backend(registry.resolve_backbone(str(tiny_dir / "sd2-depth")), dtype=None,
                              controlnet=registry.resolve_controlnet(str(tmp_path)))  # fmt: skip
    with pytest.raises(
        ModelLoadError, match="unet holds UNet2DConditionModel, not a diffusers ControlNetModel$"
    ):
        SceneTransformer.from_pretrained("tiny", controlnet=str(tiny_dir / "sd15-depth" / "unet"))
    with pytest.raises(
        ModelLoadError, match="sd15-depth holds no config.json naming a model class, not a diffusers"
    ):
        SceneTransformer.from_pretrained("tiny", controlnet=str(tiny_dir / "sd15-depth"))
    tiny.ensure("sdxl-depth", tiny_dir / "sdxl-depth")  # (written on first use)
    with pytest.raises(ModelLoadError, match="does not fit 'tiny' .*wrong backbone family"):
        SceneTransformer.from_pretrained("tiny", controlnet=str(tiny_dir / "sdxl-depth-controlnet"))
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        SceneTransformer.from_pretrained("tiny", controlnet="someone/depth-controlnet")
    with pytest.raises(
        InputError, match=r"^controlnet must be a hub id \(owner/name\) or a folder .*, got 5$"
    ):
        SceneTransformer.from_pretrained("tiny", controlnet=5)
    # no weights at all: no word of pickles to convert
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_bytes(
        (tiny_dir / "sd15-depth-controlnet" / "config.json").read_bytes()
    )
    with pytest.raises(ModelLoadError, match=r"^ControlNet '.*config-only' at .*config-only has no weights \(no "
                       r"\.safetensors file\): an incomplete download or copy\? fetch or copy it again$"):  # fmt: skip
        SceneTransformer.from_pretrained("tiny", controlnet=str(tmp_path / "config-only"))
    # of the same family, another block layout, or another kind of control image: failed at the first image
    from diffusers import ControlNetModel

    config = dict(ControlNetModel.load_config(tiny_dir / "sd15-depth-controlnet"))
    for change, message in (
        (
            {"layers_per_block": 2},
            r"its layers_per_block \[2, 2\] against the UNet's \[1, 1\] \(its residuals would not",
        ),
        (
            {"block_out_channels": [32, 32]},
            r"its block_out_channels \[32, 32\] against the UNet's \[32, 64\]",
        ),
        (
            {"conditioning_channels": 1},
            r"takes 1-channel control images; depth2img gives a depth ControlNet 3",
        ),
    ):
        ControlNetModel.from_config({**config, **change}).save_pretrained(tmp_path / "other")
        with monkeypatch.context() as m:  # from the configs, before the pipeline's weights load
            m.setattr(backends.Backend, "_from_pretrained", no_loading)
            with pytest.raises(ModelLoadError, match=f"^ControlNet '{tmp_path / 'other'}' .*{message}"):
                SceneTransformer.from_pretrained("tiny", controlnet=str(tmp_path / "other"))


@pytest.mark.parametrize(
    "resolve, what",
    [(registry.resolve_backbone, "model"), (registry.resolve_estimator, "estimator"), (registry.resolve_lora, "lora"),
     (registry.resolve_controlnet, "controlnet")],
)  # fmt: skip
def test_a_model_named_by_other_than_text_is_refused_naming_it(resolve, what):
    """str() had made hub ids of ["a/b"] and b"x/y" (a download of "['a/b']" was attempted)."""
    for value in (["a/b"], b"x/y", 5):
        with pytest.raises(InputError, match=f"^{what} must be .*, got {re.escape(repr(value))}$"):
            resolve(value)


def test_a_registry_controlnet_hub_id_keeps_its_pinned_revision():
    entry = registry.backbones()["sdxl-depth"]
    assert registry.resolve_controlnet(entry.controlnet).revision == entry.companion_revision
    assert registry.resolve_controlnet("someone/depth-controlnet").revision is None


def test_sd15_txt2img_with_window_equals_diffusers_and_skips_controlnet(sd15, photo, depth, tiny_dir):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UniPCMultistepScheduler

    sd15.backend.controlnet_counter.calls = 0
    ours = sd15.transform(photo, PROMPT, depth=depth, seed=3, steps=4, strength=1.0, control_end=0.5)
    assert ours.metadata[0]["mode"] == "txt2img"
    assert sd15.backend.controlnet_counter.calls == 2  # steps 0 and 1 of 4; diffusers would run it 4 times

    cn = ControlNetModel.from_pretrained(tiny_dir / "sd15-depth-controlnet")
    ref = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_dir / "sd15-depth", controlnet=cn, safety_checker=None
    )
    ref.scheduler = UniPCMultistepScheduler.from_config(ref.scheduler.config)
    raw_calls = []
    cn.register_forward_hook(lambda *a: raw_calls.append(1))
    theirs = ref(PROMPT, image=_control(depth), num_inference_steps=4, guidance_scale=7.5, control_guidance_end=0.5,
                 generator=_gens(3), output_type="np").images  # fmt: skip
    assert len(raw_calls) == 4
    _assert_same(ours.raw, theirs)
    # and the same as our own path with skipping switched off
    plain = sd15.transform(
        photo, PROMPT, depth=depth, seed=3, steps=4, strength=1.0, control_end=0.5, skip_controlnet=False
    )
    _assert_same(ours.raw, plain.raw)


@pytest.mark.parametrize(
    "knobs, runs",
    [(dict(steps=6, strength=1.0, control_start=0.34, control_end=0.35), 0),
     (dict(steps=4, strength=0.5, control_end=0.3), 0),
     (dict(steps=4, strength=1.0, control_start=0.2, control_end=0.7), 1)],
)  # fmt: skip
def test_a_guidance_window_holding_no_step_is_said(sd15, photo, depth, knobs, runs):
    """A window between two steps switched the ControlNet off (as diffusers does) without a word: the depth steered
    nothing."""
    sd15.backend.controlnet_counter.calls = 0
    result = sd15.transform(photo, PROMPT, depth=depth, seed=3, **knobs)
    said = [w for w in result.warnings if "holds none of the" in w]
    assert sd15.backend.controlnet_counter.calls == runs and len(said) == (runs == 0)
    if said:
        n = int(knobs["steps"] * knobs["strength"])
        assert said[0].startswith(f"control_start {knobs.get('control_start', 0):g} to control_end "
                                  f"{knobs['control_end']:g} holds none of the {n} denoising steps")  # fmt: skip


@pytest.mark.parametrize("name", ["tiny/sd15-depth", "tiny/sdxl-depth", "tiny/flux-depth"])
def test_weights_keep_the_requested_dtype(name):
    """The img2img pipeline shares the txt2img one's models (diffusers' from_pipe, which by default casts them all
    to float32): every model of every pipeline must stay in the dtype asked for."""
    st_ = SceneTransformer.from_pretrained(name, dtype=torch.bfloat16)
    assert set(st_.backend.pipes) == {"txt2img", "img2img"}
    for kind, pipe in st_.backend.pipes.items():
        for key, module in pipe.components.items():
            if isinstance(module, torch.nn.Module):
                assert {p.dtype for p in module.parameters()} == {torch.bfloat16}, (kind, key)


def test_loading_logs_no_spurious_float32_warnings():
    """The img2img pipeline's from_pipe casts the shared models to their own dtype, and diffusers logged "There are
    modules in UNet2DConditionModel that should be kept in float32: []" for each: three false alarms a load."""
    import logging

    import diffusers

    class Records(logging.Handler):
        messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    library_logger, handler = logging.getLogger("diffusers"), Records()
    before = diffusers.utils.logging.get_verbosity()
    library_logger.addHandler(handler)
    try:
        SceneTransformer.from_pretrained("tiny")
    finally:
        library_logger.removeHandler(handler)
    assert not [m for m in handler.messages if "kept in float32" in m]
    assert diffusers.utils.logging.get_verbosity() == before


def test_loading_does_not_advise_installing_torchvision(tiny_dir):
    """Without torchvision (not a dependency) transformers warns at the first import of each image processor that
    it falls back to its PIL one: two lines at a backbone's load (processors depth2img does not use), one at an
    estimator's. A fresh process, as transformers warns once per class and process; the log is back at its
    verbosity after."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: transformers has nothing to warn about")
    code = (
        "from depth2img import DepthEstimator, SceneTransformer\n"
        "import transformers\n"
        "for name in ('tiny/dpt-hybrid', 'tiny/zoedepth'):\n"
        "    DepthEstimator.from_pretrained(name)\n"
        "for name in ('tiny', 'tiny/sd2-depth', 'tiny/flux-depth'):\n"
        "    SceneTransformer.from_pretrained(name)\n"
        "print(transformers.logging.get_verbosity())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DEPTH2IMG_TINY_DIR": str(tiny_dir)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "torchvision" not in done.stderr and done.stdout.split() == ["30"], done.stderr  # 30: warning


def test_default_dtype_on_a_gpu_is_the_backbone_familys(monkeypatch):
    """No dtype given: float32 on CPU; on a GPU float16, but bfloat16 for Flux (as its model cards load it). The GPU
    is faked: load_backend only loads weights on the CPU; the dtype is what is checked."""
    from depth2img.backends import load_backend
    from depth2img.loading import resolve_dtype
    from depth2img.registry import resolve_backbone

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype(None, cpu, "bfloat16") == torch.float32
    assert (
        resolve_dtype(None, cuda) == torch.float16 and resolve_dtype(None, cuda, "bfloat16") == torch.bfloat16
    )
    assert resolve_dtype("float32", cuda, "bfloat16") == torch.float32  # the user's choice wins
    assert load_backend(resolve_backbone("tiny/flux-depth"), dtype=None, device="cpu").dtype == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    got = {name: load_backend(resolve_backbone(name), dtype=None, device="cuda").dtype
           for name in ("tiny/sd15-depth", "tiny/sdxl-depth", "tiny/sd2-depth", "tiny/flux-depth", "tiny/flux-depth-lora")}  # fmt: skip
    assert got == {"tiny/sd15-depth": torch.float16, "tiny/sdxl-depth": torch.float16, "tiny/sd2-depth": torch.float16,
                   "tiny/flux-depth": torch.bfloat16, "tiny/flux-depth-lora": torch.bfloat16}  # fmt: skip
    bf16 = load_backend(resolve_backbone("tiny/sd15-depth"), dtype="bfloat16", device="cuda")
    assert bf16.dtype == torch.bfloat16


def test_mixed_dtypes_survive_the_shared_img2img_pipeline(tiny_dir):
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    from depth2img.backends import SD15Backend

    st_ = SceneTransformer.from_pretrained("tiny", dtype=torch.bfloat16)
    txt2img = st_.backend.pipes["txt2img"]
    txt2img.vae.to(torch.float32)  # as some users keep the VAE
    for p in txt2img.vae.parameters():
        p.data += 1e-4 * torch.randn_like(p)  # values bf16 cannot hold
    before = {k: v.clone() for k, v in txt2img.vae.state_dict().items()}
    backend = SD15Backend(txt2img, st_.backend.ref)
    img2img = backend.pipes["img2img"]
    assert isinstance(img2img, StableDiffusionControlNetImg2ImgPipeline) and img2img.vae is txt2img.vae
    assert txt2img.vae.dtype == torch.float32 and txt2img.unet.dtype == torch.bfloat16
    assert txt2img.controlnet.dtype == torch.bfloat16 and txt2img.text_encoder.dtype == torch.bfloat16
    after = txt2img.vae.state_dict()  # the very float32 weights, not a cast to bf16 and back
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_text_encoders_float32_layers_stay_as_diffusers_loads_them(tiny_dir):
    """T5 keeps its ``wo`` layers in float32 in a half-precision load (transformers' _keep_in_fp32_modules, against
    fp16 overflow); from_pipe's cast for the img2img pipeline rounded them to fp16, in the shared model too."""
    from diffusers import FluxControlPipeline

    ref = FluxControlPipeline.from_pretrained(tiny_dir / "flux-depth", dtype=torch.float16)
    ours = SceneTransformer.from_pretrained("tiny/flux-depth", dtype="float16", device="cpu").backend.pipe
    theirs = dict(ref.text_encoder_2.named_parameters())
    assert {p.dtype for n, p in theirs.items() if ".wo." in n} == {torch.float32}  # what the test relies on
    for name, p in ours.text_encoder_2.named_parameters():
        assert p.dtype == theirs[name].dtype and torch.equal(p, theirs[name]), name


def test_compiled_fast_path_traces_whole_models_and_keeps_the_controlnet_window(eager_compile, photo, depth):
    """optimize(compile_mode=...) compiles the UNet, the ControlNet (through its forward, which the guidance
    window wraps from outside) and the VAE decoder. Dynamo traces the real models here; its eager backend stands
    in for inductor, whose code generation takes about a minute on CPU for these tiny models."""
    import torch._dynamo

    modes = eager_compile
    st_ = SceneTransformer.from_pretrained("tiny")
    knobs = dict(depth=depth, seed=[3, 4], steps=4, strength=1.0, control_end=0.5)
    before = st_.transform(photo, PROMPT, **knobs).raw
    applied = st_.backend.optimize(compile_mode="reduce-overhead", channels_last=False, fuse_qkv=False)
    assert applied == ["unet:compile(reduce-overhead)", "controlnet:compile(reduce-overhead)",
                       "vae:compile(reduce-overhead)"]  # fmt: skip
    assert modes == ["reduce-overhead"] * 3
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    st_.backend.controlnet_counter.calls = 0
    after = st_.transform(photo, PROMPT, **knobs).raw
    assert st_.backend.controlnet_counter.calls == 2  # still skipped outside the window
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] >= 3 and not counters["graph_break"], dict(
        counters["graph_break"]
    )
    _assert_same(after, before)


def test_the_cpp_wrapper_mode_is_inductors_cpp_wrapper():
    """--compile cpp-wrapper is the default mode's kernels launched from a C++ wrapper: inductor options, which
    torch.compile takes instead of a mode. A real inductor compile of a small model through compile_forward (about
    10 s on this CPU) generates a C++ entry point, not a Python one, and gives eager's outputs."""
    import torch
    from torch._inductor.utils import run_and_get_code

    from depth2img.backends import compile_forward

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 3, padding=1)
    )
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        expected = model(x)
        compile_forward(model, "cpp-wrapper", name="toy", fallback=False)
        out, code = run_and_get_code(model, x)
    assert "inductor_entry_impl" in "\n".join(code)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny", "tiny/sdxl-depth", "tiny/sd2-depth", "tiny/flux-depth"])
def test_the_depth_reaches_the_image(name, photo, depth):
    """Every tiny backbone's image depends on the depth it is given. diffusers' ``ControlNetModel.from_unet`` zeroes
    a ControlNet's output convolutions; the tiny ControlNets built that way added nothing, so tests of the control
    image, scale and window could not fail (one compared against diffusers at a different scale and passed)."""
    st_ = SceneTransformer.from_pretrained(name)
    flipped = DepthMap(depth.values[::-1].copy(), "metric_depth")
    a, b = (
        st_.transform(photo, PROMPT, depth=d, seed=3, steps=2, strength=1.0).raw for d in (depth, flipped)
    )
    # 0 with zeroed convolutions; 2e-4 with the embedding's last one initialised as usual
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize("name", ["tiny", "tiny/sd2-depth", "tiny/flux-depth", "tiny/flux-depth-lora"])
def test_records_list_the_control_knobs_the_backbone_has(name, photo, depth):
    """A review of the records (2026-11-28): SD2's and Flux's outputs recorded control_scale, control_start and
    control_end at their defaults, knobs those backbones do not have (a rerun giving them is refused)."""
    st_ = SceneTransformer.from_pretrained(name)
    meta = st_.transform(photo, PROMPT, depth=depth, seed=0, steps=2, strength=1.0).metadata[0]
    has = {"tiny": CONTROL_KNOBS, "tiny/flux-depth-lora": ("control_scale",)}.get(name, ())
    assert [k for k in CONTROL_KNOBS if k in meta] == list(has)
    assert {"steps", "strength", "guidance_scale", "feature_cache", "seed"} <= set(meta)


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_new_control_scale_or_other_knob_compiles_nothing_new(channels_last, eager_compile, photo, depth):
    """A Python float reaching a compiled forward is a constant of its graph: each new control scale (the app's
    slider, a job's rows) compiled the ControlNet again (7.7 s with inductor on CPU for the tiny model), and that
    second graph takes the scale as a CPU tensor, on which CUDA graphs are skipped. The compiled ControlNet always
    runs at scale 1 and its residuals are scaled after it, as diffusers scales them: the same images, one graph.
    Steps, strength (img2img: its pipeline calls the UNet with one argument fewer and channels-last latents),
    guidance, the prompt and the seed add no graph either; a guidance window that skips the ControlNet adds one,
    the UNet without residuals, once. With the fast path's channels-last layout (GPUs) too."""
    import torch._dynamo

    st_ = SceneTransformer.from_pretrained("tiny")
    knobs = dict(depth=depth, seed=3, steps=2, strength=1.0)
    plain = {s: st_.transform(photo, PROMPT, control_scale=s, **knobs).raw for s in (1.0, 0.7, 0.4)}
    st_.backend.optimize(compile_mode="default", channels_last=channels_last, fuse_qkv=False)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    got = {s: st_.transform(photo, PROMPT, control_scale=s, **knobs).raw for s in (1.0, 0.7, 0.4)}
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 3  # UNet, ControlNet, VAE decoder
    st_.transform(photo, "a snowy road", depth=depth, seed=8, steps=3, strength=0.6, guidance_scale=5.0,
                  control_scale=0.9)  # fmt: skip
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 3
    for window in [(0.2, 0.7), (0.0, 0.5)]:
        st_.transform(
            photo, PROMPT, depth=depth, seed=8, steps=4, control_start=window[0], control_end=window[1]
        )
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 4
    for s in plain:  # channels-last convolutions round differently
        assert np.abs(got[s] - plain[s]).max() <= (1e-5 if channels_last else 0.0), s
    assert np.abs(plain[0.7] - plain[0.4]).max() > 1e-3


def test_pndm_runs_few_steps_on_a_backbone_whose_scheduler_config_lacks_skip_prk_steps(photo, depth):
    """Tiny SDXL's scheduler config (Euler) has no skip_prk_steps: PNDM from it failed under 4 steps with numpy's
    'operands could not be broadcast together with shapes (6,) (8,)', an internal error."""
    st_ = SceneTransformer.from_pretrained("tiny/sdxl-depth")
    result = st_.transform(photo, PROMPT, depth=depth, seed=0, steps=3, strength=1.0, scheduler="pndm")
    assert result.images[0].size == photo.size and st_.backend.pipe.scheduler.config.skip_prk_steps


def _decoded_batches(st):
    """The batch sizes the VAE decoder receives, one per pipeline call."""
    sizes = []
    st.backend.pipe.vae.decoder.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    return sizes


@pytest.mark.parametrize("name", ["tiny", "tiny/sd2-depth", "tiny/sdxl-depth", "tiny/flux-depth"])
def test_a_compiled_backend_pads_a_smaller_batch_to_the_one_it_compiled(name, photo, depth):
    """A new batch size would recompile; a compiled backend pads a smaller batch of a shape it has run to that
    batch, and each image is still the one its seed makes alone. The padding logic asks ``Backend.compiled``
    only, so the models stay eager here (the next test traces them)."""
    from depth2img.featurecache import COMPILE_MODE_ATTR

    st = SceneTransformer.from_pretrained(name)
    flipped = DepthMap(depth.values.T.copy(), "metric_depth")
    a = st.prepare(photo, PROMPT, depth=depth, seed=[3, 4, 5], steps=2, strength=0.5)
    b = st.prepare(photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM), "a snowy road", depth=flipped, seed=9,
                   steps=2, strength=0.5)  # fmt: skip
    alone = {seed: st.run([a.with_seeds([seed])])[0].raw[0] for seed in (4, 5)} | {9: st.run([b])[0].raw[0]}
    sizes = _decoded_batches(st)
    denoiser = getattr(st.backend.pipe, "unet", None) or st.backend.pipe.transformer
    setattr(denoiser, COMPILE_MODE_ATTR, "default")  # what optimize(compile_mode=...) marks
    assert st.backend.compiled
    st.run([a])
    one, across = st.run([a.with_seeds([4])]), st.run([a.with_seeds([5]), b])  # one photo; two photos
    assert sizes == [3, 3, 3]
    assert one[0].raw.shape[0] == across[0].raw.shape[0] == across[1].raw.shape[0] == 1
    for got, seed, batch in [(one[0], 4, 1), (across[0], 5, 2), (across[1], 9, 2)]:
        assert np.abs(got.raw[0] - alone[seed]).max() < BATCH_ROUNDING and got.timings["batch"] == batch
        assert got.metadata[0]["batch"] == 3  # what diffusers denoised together, padding included
    delattr(denoiser, COMPILE_MODE_ATTR)  # uncompiled: each batch at its own size
    st.run([b])
    assert sizes[-1] == 1


def test_a_batch_size_that_has_run_is_not_padded(photo, depth):
    """Padding goes to the smallest larger batch a shape has run, and a size that has run is run as it is (the app's
    warm-up runs one image and then two: one image must not cost two)."""
    from depth2img.featurecache import COMPILE_MODE_ATTR

    st = SceneTransformer.from_pretrained("tiny")
    setattr(st.backend.pipe.unet, COMPILE_MODE_ATTR, "default")  # what optimize(compile_mode=...) marks
    sizes = _decoded_batches(st)
    req = st.prepare(photo, PROMPT, depth=depth, seed=[1, 2, 3, 4], steps=2)
    for seeds in ([1], [1, 2, 3, 4], [1], [1, 2], [1, 2, 3], [1, 2]):
        st.run([req.with_seeds(seeds)])
    assert sizes == [1, 4, 1, 4, 4, 4]  # 2 and 3 never ran at their own size: padded to 4 each time


def test_padding_keeps_a_compiled_graph_and_yields_to_out_of_memory(eager_compile, photo, depth, monkeypatch):
    """With dynamo tracing the real models, a smaller batch adds no graph. Out of memory at the padded size, the
    halves run at their own size (padded back to the failed size, they would fail again)."""
    import torch._dynamo

    st = SceneTransformer.from_pretrained("tiny")
    st.backend.optimize(compile_mode="default", channels_last=False, fuse_qkv=False)
    req = st.prepare(photo, PROMPT, depth=depth, seed=[1, 2, 3], steps=2)
    st.run([req])
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    st.run([req.with_seeds([7])])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    sizes = _decoded_batches(st)

    def out_of_memory_at_three(module, args):
        if args[0].shape[0] >= 3:
            raise torch.OutOfMemoryError("CUDA out of memory")

    st.backend.pipe.vae.decoder.register_forward_pre_hook(out_of_memory_at_three)
    results = st.run_isolated([req.with_seeds([1]), req.with_seeds([2])])
    assert sizes == [3, 1, 1] and [r.seeds for r in results] == [[1], [2]]


def test_models_that_fell_back_to_eager_are_not_padded_for(photo, depth, monkeypatch):
    """Where the compiler failed at the first call, each model runs eager: padding would only add work."""
    from torch._dynamo.exc import BackendCompilerFailed

    from depth2img.errors import Depth2ImgWarning

    def broken(fn, *a, **k):
        def call(*args, **kwargs):
            raise BackendCompilerFailed(fn, RuntimeError("CppCompileError: no C compiler"), None)

        return call

    monkeypatch.setattr(torch, "compile", broken)
    st = SceneTransformer.from_pretrained("tiny")
    st.backend.optimize(compile_mode="default", channels_last=False, fuse_qkv=False)
    assert st.backend.compiled
    sizes = _decoded_batches(st)
    req = st.prepare(photo, PROMPT, depth=depth, seed=[1, 2], steps=2)
    with pytest.warns(Depth2ImgWarning, match="no C compiler"):
        st.run([req])
    st.run([req.with_seeds([3])])
    assert not st.backend.compiled and sizes == [2, 1]


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune", "default", "max-autotune-no-cudagraphs"])
def test_cuda_graph_modes_return_outputs_out_of_the_graph_pool(monkeypatch, mode):
    """Under CUDA graphs the next compiled call may overwrite a call's outputs (the ControlNet's residuals, before
    the UNet read them, on an H200): in those modes each output tensor, nested as the ControlNet returns them, is a
    copy; in the others it is what the compiled function returned. The compiled function is faked here: what
    matters is what the wrapper does with its outputs."""
    from depth2img.backends import compile_forward
    from depth2img.featurecache import COMPILE_MODE_ATTR

    returned, modes = [], []

    def fake_compile(fn, *, mode=None, **kwargs):
        modes.append(mode)

        def run(*args, **kwargs):
            returned.append(fn(*args, **kwargs))
            return returned[-1]

        return run

    class Residuals(torch.nn.Module):  # a list of down residuals and a mid residual, like a ControlNet
        def forward(self, x, scale=1.0):
            return [x * scale, x + 1], x * 2

    monkeypatch.setattr(torch, "compile", fake_compile)
    module = Residuals()
    compile_forward(module, mode)
    (down, mid) = module(torch.ones(2, 3), scale=3.0)
    (down_raw, mid_raw) = returned[-1]
    assert modes == [mode] and getattr(module, COMPILE_MODE_ATTR) == mode and isinstance(module, Residuals)
    copied = mode in ("reduce-overhead", "max-autotune")
    for ours, raw in zip([*down, mid], [*down_raw, mid_raw], strict=True):
        assert torch.equal(ours, raw)
        assert (ours.untyped_storage().data_ptr() != raw.untyped_storage().data_ptr()) == copied


def test_inductor_options_ride_on_the_mode_and_decide_the_copy_out_of_the_graph_pool(monkeypatch):
    """The bench's --inductor settings reach torch.compile on top of the mode's own (torch takes a mode or options,
    not both, so the mode goes as the options it stands for); a setting that turns CUDA graphs on or off decides
    whether outputs are copied out of the graph pool. A typo or a value of the wrong type is refused before any
    compile, naming the argument."""
    from depth2img.backends import (
        captures_cuda_graphs,
        check_inductor_options,
        compile_forward,
        compile_kwargs,
    )

    assert compile_kwargs("reduce-overhead") == {"mode": "reduce-overhead"}
    assert compile_kwargs("reduce-overhead", {"conv_1x1_as_mm": True}) == {
        "options": {"triton.cudagraphs": True, "conv_1x1_as_mm": True}
    }
    assert compile_kwargs("cpp-wrapper", {"epilogue_fusion": False}) == {
        "options": {"cpp_wrapper": True, "epilogue_fusion": False}
    }
    assert captures_cuda_graphs("default", {"triton.cudagraphs": True})
    assert not captures_cuda_graphs("reduce-overhead", {"triton.cudagraphs": False})
    assert captures_cuda_graphs("max-autotune", {"conv_1x1_as_mm": True}) and not captures_cuda_graphs(
        "default"
    )
    # as the bench's command line gives them: Python literals, a string where none parses
    assert check_inductor_options(["conv_1x1_as_mm=True", "epilogue-fusion = False", "max_autotune_gemm_backends=ATEN"]) == {
        "conv_1x1_as_mm": True, "epilogue_fusion": False, "max_autotune_gemm_backends": "ATEN"
    }  # fmt: skip
    assert check_inductor_options(None) == {}
    # torch takes a float setting as a float only (an int failed at torch.compile, after the models were built);
    # None where the type allows it
    budget = check_inductor_options(["triton.cudagraph_partition_memory_budget=1", "compile_threads=None"])
    assert budget == {"triton.cudagraph_partition_memory_budget": 1.0, "compile_threads": None}
    assert type(budget["triton.cudagraph_partition_memory_budget"]) is float
    torch.compile(lambda t: t, options=budget)  # what torch's own check of them says
    assert compile_kwargs("max-autotune", {"epilogue_fusion": False}) == {
        "options": {"max_autotune": True, "triton.cudagraphs": True, "coordinate_descent_tuning": True,
                    "epilogue_fusion": False}
    }  # fmt: skip
    for bad, message in (
        (["conv_1x1_as_m=True"], "--inductor: 'conv_1x1_as_m' is not a setting of torch._inductor.config"),
        (["conv_1x1_as_mm"], "--inductor takes NAME=VALUE (conv_1x1_as_mm=True), got 'conv_1x1_as_mm'"),
        (["conv_1x1_as_mm=1"], "--inductor: conv_1x1_as_mm takes bool (its default is False), got 1"),
        ({"coordinate_descent_search_radius": True}, "takes int (its default is 1), got True"),
        (["cuda.arch={1}"], "--inductor: cuda.arch takes str or None (its default is None), got {1}"),
        # a generic type torch does not check: JSON must still record it (the figures were lost at the end)
        (
            ["pre_grad_fusion_options={'a': {1, 2}}"],
            "pre_grad_fusion_options must be a value JSON can record",
        ),
        (["epilogue_fusion=False", "epilogue-fusion=True"], "--inductor gives epilogue_fusion twice"),
        (
            ["memory_pool=intermediate"],
            "--inductor: memory_pool takes one of 'none', 'intermediates', 'outputs', ",
        ),
        ("conv_1x1_as_mm", "--inductor must be a dict of inductor settings, got 'conv_1x1_as_mm'"),
    ):
        with pytest.raises(InputError, match=re.escape(message)):
            check_inductor_options(bad, "--inductor")

    seen, returned = [], []

    def fake_compile(fn, **kwargs):
        seen.append(kwargs)

        def run(*args, **kw):
            returned.append(fn(*args, **kw))
            return returned[-1]

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    x = torch.ones(2, 3)
    for setting, copied in ((True, True), (False, False)):
        module = torch.nn.Linear(3, 3)
        compile_forward(module, "reduce-overhead", options={"triton.cudagraphs": setting})
        out = module(x)
        assert seen[-1] == {"fullgraph": False, "options": {"triton.cudagraphs": setting}}
        assert torch.equal(out, returned[-1])
        assert (out.untyped_storage().data_ptr() != returned[-1].untyped_storage().data_ptr()) == copied


def test_sd2_depth_equals_diffusers(photo, depth, tiny_dir):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionDepth2ImgPipeline

    st = SceneTransformer.from_pretrained("tiny/sd2-depth")
    ours = st.transform(photo, PROMPT, depth=depth, seed=11, steps=2, strength=0.7)
    ref = StableDiffusionDepth2ImgPipeline.from_pretrained(tiny_dir / "sd2-depth")

    def theirs(depth_map):
        return ref(PROMPT, image=photo, depth_map=torch.from_numpy(depth_map)[None], strength=0.7,
                   num_inference_steps=2, guidance_scale=7.5, generator=_gens(11), output_type="np").images  # fmt: skip

    # we hand it the inverse depth scaled to [0, 1]; its own min-max makes that the raw map's result
    _assert_same(ours.raw, theirs(conditioning.normalize(depth.inverse())))
    assert np.abs(ours.raw - theirs(depth.inverse())).max() < 1e-4
    # a negative prompt, another scheduler and two seeds in one call
    two = st.transform(photo, PROMPT, depth=depth, seed=[3, 4], steps=3, strength=0.7, negative_prompt="blurry",
                       guidance_scale=6.0, scheduler="euler-a")  # fmt: skip
    ref.scheduler = EulerAncestralDiscreteScheduler.from_config(ref.scheduler.config)
    theirs2 = ref(PROMPT, image=photo, depth_map=torch.from_numpy(conditioning.normalize(depth.inverse()))[None],
                  strength=0.7, num_inference_steps=3, guidance_scale=6.0, negative_prompt="blurry",
                  num_images_per_prompt=2, generator=_gens(3, 2), output_type="np").images  # fmt: skip
    _assert_same(two.raw, theirs2)
    with pytest.raises(
        InputError, match="control_end: backbone 'tiny/sd2-depth' \\(sd2-depth\\) has no such knob"
    ):
        st.transform(photo, PROMPT, depth=depth, steps=2, control_end=0.5)


def test_sd2_depth_in_float16_takes_our_16_bit_png(photo, depth, tmp_path):
    """SD2-depth's pipeline casts the depth map to float16 before normalising it: our own 16-bit PNG (near =
    65535) overflowed to inf, and every output pixel was NaN, saved as a black image."""
    back = io.read_depth_file(io.write_depth_png16(depth, tmp_path / "d_depth16.png"))
    assert back.inverse().max() == 65535
    outs = {}
    for dtype in ("float32", "float16"):
        st = SceneTransformer.from_pretrained("tiny/sd2-depth", device="cpu", dtype=dtype)
        outs[dtype] = st.transform(photo, PROMPT, depth=back, seed=1, steps=2, strength=0.7).raw
    assert np.isfinite(outs["float16"]).all()
    assert np.abs(outs["float16"] - outs["float32"]).max() < 0.05


def test_an_output_with_nan_pixels_is_an_error_not_a_black_image(sd15, photo, depth, tmp_path, monkeypatch):
    from depth2img import run_transform

    good = sd15._run_backend

    def half_nan(**kwargs):
        out = good(**kwargs)
        out.raw[-1, 0, 0, 0] = np.nan
        return out

    monkeypatch.setattr(sd15, "_run_backend", half_nan)
    with pytest.raises(
        GenerationError,
        match=r"^the pipeline's output has NaN or inf pixels in 1 of 2 image\(s\); nothing was written$",
    ):
        sd15.transform(photo, PROMPT, depth=depth, seed=0, steps=2, num_images=2)
    with monkeypatch.context() as m:  # in float16 (the SD default on a GPU), the likely cause is named
        m.setattr(sd15, "dtype", torch.float16)
        with pytest.raises(GenerationError, match=r"nothing was written; float16 overflows where bfloat16 and "
                           r"float32 do not \(transform --dtype, the API's dtype=\)$"):  # fmt: skip
            sd15.transform(photo, PROMPT, depth=depth, seed=0, steps=2, num_images=2)
    photo.save(tmp_path / "a.png")
    report = run_transform([tmp_path / "a.png"], tmp_path / "out", prompt=PROMPT, model=sd15, seed=0, num_images=2,
                           knobs={"steps": 2}, progress=False)  # fmt: skip
    assert len(report.failed) == 1 and "NaN or inf pixels in 1 of 2" in report.failed[0]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == []


def test_run_transform_refuses_an_unknown_knob_before_loading(tmp_path, photo, monkeypatch):
    """A misspelt knob failed as prepare()'s TypeError once both models had loaded."""
    from depth2img import run_transform

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(SceneTransformer, "from_pretrained", no_loading)
    photo.save(tmp_path / "a.png")
    with pytest.raises(
        InputError, match=r"^knobs: 'guidance' is not a knob \(steps, strength, guidance_scale, "
    ):
        run_transform(
            [tmp_path / "a.png"], tmp_path / "out", prompt=PROMPT, model="tiny", knobs={"guidance": 3}
        )
    # a depth polarity with no depth to read was accepted and did nothing (the CLI alone refused it)
    for polarity, message in (
        ("metric", "^depth_polarity metric says how to read depth files; none was given$"),
        ("bogus", "^depth_polarity must be one of near-bright, far-bright, metric, got 'bogus'$"),
    ):
        with pytest.raises(InputError, match=message):
            run_transform([tmp_path / "a.png"], tmp_path / "out", prompt=PROMPT, model="tiny",
                          depth_polarity=polarity)  # fmt: skip
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "preset_knobs, kwargs, message",
    [
        (
            "{control_end: 0.5}",
            dict(knobs={"control_start": 0.6}),
            r"control_start and control_end must satisfy 0 <= start < end <= 1, got 0.6 and 0.5 \(with the knobs of "
            r"preset late\)",
        ),
        (
            "{feature_cache: 3}",
            dict(load_options={"compile": "default"}),
            r"compile default does not combine with feature_cache 3; use one or the other \(with the knobs of "
            r"preset late\)",
        ),
        (
            "{}",
            dict(model="tiny/flux-depth", negative_prompt="blur"),
            r"negative_prompt: backbone .* takes no",
        ),
        (
            "{}",
            dict(model="tiny/flux-depth", load_options={"lora": "tiny/lcm-sd15"}),
            r"lora: few-step LoRAs are",
        ),
        # a few-step scheduler's limit, given or a LoRA's (a review of the backbones, 2026-11-28)
        (
            "{}",
            dict(scheduler="tcd", knobs={"steps": 60}),
            r"steps: scheduler 'tcd' takes at most 50 steps, got 60$",
        ),
        (
            "{}",
            dict(load_options={"lora": "tiny/lcm-sd15"}, knobs={"steps": 51}),
            r"steps: scheduler 'lcm' takes at most 50 steps, got 51$",
        ),
        # a preset's steps: said so (they were blamed on the steps given, none)
        ("{steps: 60}", dict(scheduler="lcm"), r"steps: .* got 60 \(with the knobs of preset late\)$"),
    ],
)
def test_run_transform_plans_each_inputs_knobs_before_loading(tmp_path, photo, monkeypatch, preset_knobs, kwargs,
                                                             message):  # fmt: skip
    """A review (2026-11-28): a preset's knob that fails with the ones given, a negative prompt or LoRA the backbone
    cannot take: the CLI refused them up front, run_transform failed each input once both
    models had loaded (the checks were the CLI's own; now run_transform's, which the CLI calls)."""
    from depth2img import run_transform
    from depth2img.estimators import DepthEstimator

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(SceneTransformer, "from_pretrained", no_loading)
    monkeypatch.setattr(DepthEstimator, "from_pretrained", no_loading)
    photo.save(tmp_path / "a.png")
    (tmp_path / "p.yaml").write_text(
        f"presets:\n  late:\n    prompt: '{{prompt}}, late'\n    knobs: {preset_knobs}\n"
    )
    kwargs = {"model": "tiny", **kwargs}
    kwargs["load_options"] = {"preset_files": [tmp_path / "p.yaml"], **kwargs.get("load_options", {})}
    with pytest.raises(InputError, match=f"^{message}"):
        run_transform([tmp_path / "a.png"], tmp_path / "out", prompt=PROMPT, preset="late", **kwargs)
    assert not (tmp_path / "out").exists()


def test_flux_counts_its_img2img_steps_as_its_pipeline_does(photo, depth, tmp_path, capsys):
    """Flux's img2img runs steps - int(steps - steps x strength) steps, one more than SD's int(steps x strength)
    where that is not whole: steps 3 at strength 0.3 runs 1 step there, and was refused as leaving none."""
    from depth2img.cli import main
    from depth2img.knobs import denoising_steps

    assert [denoising_steps(3, 0.3, fm) for fm in (False, True)] == [0, 1]
    assert [denoising_steps(10, 0.35, fm) for fm in (False, True)] == [3, 4]
    st = SceneTransformer.from_pretrained("tiny/flux-depth")
    st.transform(photo, PROMPT, depth=depth, seed=0, steps=3, strength=0.3, progress=True)
    assert "denoise: 100%|██████████| 1/1" in capsys.readouterr().err  # the bar counted what ran
    photo.save(tmp_path / "a.png")
    assert main(["transform", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", "tiny/flux-depth",
                 "--prompt", "x", "--steps", "3", "--strength", "0.3", "-q"]) == 0  # fmt: skip
    assert main(["transform", str(tmp_path / "a.png"), "-o", str(tmp_path / "p"), "--model", "tiny", "--prompt", "x",
                 "--steps", "3", "--strength", "0.3", "-q"]) == 2  # fmt: skip
    assert "--steps=3 and --strength=0.3 leave 0" in capsys.readouterr().err


def test_flux_img2img_that_would_start_from_pure_noise_is_refused(photo, depth, tmp_path, capsys):
    """A review of the backbones (2026-11-28): Flux's img2img skips int(steps - steps x strength) steps; where that
    is 0 (4 steps at 0.8, 2 at 0.6) it started from pure noise: the photo and its colour inverse gave the same pixels,
    recorded as img2img. Refused, naming the fewest steps that keep the photo."""
    from depth2img.cli import main
    from depth2img.knobs import check_denoising_steps

    st = SceneTransformer.from_pretrained("tiny/flux-depth")
    with pytest.raises(
        InputError, match=r"^steps=4 and strength=0.8 keep nothing of the photo: .* give steps 5 or "
    ):
        st.transform(photo, PROMPT, depth=depth, seed=0, steps=4, strength=0.8)
    for steps, strength, fewest in ((2, 0.6, 3), (30, 0.97, 34), (1, 0.5, 2)):
        with pytest.raises(InputError, match=f"give steps {fewest} or more"):
            check_denoising_steps(steps, strength, flow_matching=True)
        check_denoising_steps(fewest, strength, flow_matching=True)
    # past the most steps taken (1000) the advice is the strength alone (its re-verification: "give steps 10000")
    with pytest.raises(
        InputError, match=r"starts from pure noise; give a lower strength, or strength 1 \(from"
    ):
        check_denoising_steps(30, 0.9999, flow_matching=True)
    check_denoising_steps(4, 0.8)  # (SD's img2img noises the photo at its first step run)
    inverse = Image.fromarray(255 - np.asarray(photo))
    kept = [st.transform(p, PROMPT, depth=depth, seed=0, steps=5, strength=0.8).raw for p in (photo, inverse)]
    assert np.abs(kept[0] - kept[1]).max() > 1e-3  # the photo is used
    photo.save(tmp_path / "a.png")
    assert main(["transform", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", "tiny/flux-depth",
                 "--prompt", "x", "--steps", "4", "--strength", "0.8", "-q"]) == 2  # fmt: skip
    assert "--steps=4 and --strength=0.8 keep nothing of the photo" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_denoise_bar_closes_at_its_last_step_not_after_the_decode(sd15, photo, depth, monkeypatch):
    """The bar closed once the pipeline had returned, so its rate took in the VAE decode (a full-size CPU run: 46.6
    s/step at its last step, 71.6 once closed); it now closes at its last step's callback."""
    from depth2img import transformer as tmod

    events, real_bar, real_run = [], tmod.progress_bar, SceneTransformer._run_backend

    def bar(**kwargs):
        made = real_bar(**kwargs)
        close = made.close
        made.close = lambda: (events.append("closed"), close())
        return made

    def run(self, **kwargs):
        out = real_run(self, **kwargs)
        events.append("returned")
        return out

    monkeypatch.setattr(tmod, "progress_bar", bar)
    monkeypatch.setattr(SceneTransformer, "_run_backend", run)
    sd15.transform(photo, PROMPT, depth=depth, seed=0, steps=2, progress=True)
    assert events[:2] == ["closed", "returned"], events


def test_sdxl_equals_diffusers(photo, depth, tiny_dir):
    from diffusers import (
        ControlNetModel,
        DPMSolverMultistepScheduler,
        StableDiffusionXLControlNetImg2ImgPipeline,
        StableDiffusionXLControlNetPipeline,
    )

    st = SceneTransformer.from_pretrained("tiny/sdxl-depth")
    ours = st.transform(photo, PROMPT, depth=depth, seed=5, steps=2, strength=0.6, control_scale=0.7)
    cn = ControlNetModel.from_pretrained(tiny_dir / "sdxl-depth-controlnet")
    ref = StableDiffusionXLControlNetImg2ImgPipeline.from_pretrained(tiny_dir / "sdxl-depth", controlnet=cn)
    theirs = ref(PROMPT, image=photo, control_image=_control(depth), strength=0.6, num_inference_steps=2,
                 guidance_scale=7.5, controlnet_conditioning_scale=0.7, height=SIZE, width=SIZE,
                 generator=_gens(5), output_type="np").images  # fmt: skip
    _assert_same(ours.raw, theirs)
    # txt2img with a negative prompt, a guidance window, another scheduler and two seeds in one call
    two = st.transform(photo, PROMPT, depth=depth, seed=[6, 7], steps=4, strength=1.0, negative_prompt="blurry",
                       control_end=0.5, control_scale=0.8, guidance_scale=5.0, scheduler="dpm++")  # fmt: skip
    txt2img = StableDiffusionXLControlNetPipeline(**ref.components)
    txt2img.scheduler = DPMSolverMultistepScheduler.from_config(ref.scheduler.config)
    theirs2 = txt2img(PROMPT, image=_control(depth), negative_prompt="blurry", num_inference_steps=4,
                      guidance_scale=5.0, controlnet_conditioning_scale=0.8, control_guidance_end=0.5, height=SIZE,
                      width=SIZE, num_images_per_prompt=2, generator=_gens(6, 2), output_type="np").images  # fmt: skip
    _assert_same(two.raw, theirs2)


def test_flux_equals_diffusers(photo, depth, tiny_dir):
    from diffusers import FluxControlImg2ImgPipeline, FluxControlPipeline

    st = SceneTransformer.from_pretrained("tiny/flux-depth")
    ours = st.transform(photo, PROMPT, depth=depth, seed=2, steps=2, strength=1.0)
    ref = FluxControlPipeline.from_pretrained(tiny_dir / "flux-depth")
    theirs = ref(PROMPT, control_image=_control_np(depth), num_inference_steps=2, guidance_scale=10.0, height=SIZE,
                 width=SIZE, generator=_gens(2), output_type="np").images  # fmt: skip
    _assert_same(ours.raw, theirs)
    # img2img, and the guidance knob (the model embeds it, as FLUX.1-dev's does)
    mixed = st.transform(photo, PROMPT, depth=depth, seed=3, steps=4, strength=0.6, guidance_scale=3.5)
    img2img = FluxControlImg2ImgPipeline(**ref.components)
    theirs = img2img(PROMPT, image=photo, control_image=_control_np(depth), strength=0.6, num_inference_steps=4,
                     guidance_scale=3.5, height=SIZE, width=SIZE, generator=_gens(3), output_type="np").images  # fmt: skip
    _assert_same(mixed.raw, theirs)
    louder = st.transform(photo, PROMPT, depth=depth, seed=3, steps=4, strength=0.6, guidance_scale=10.0)
    assert np.abs(louder.raw - mixed.raw).max() > 1e-4
    with pytest.raises(
        InputError, match="control_scale: backbone 'tiny/flux-depth' .* no such knob; flux-depth-lora has"
    ):
        st.transform(photo, PROMPT, depth=depth, seed=2, steps=2, strength=1.0, control_scale=0.5)
    # the defaults ask for nothing, so a script or job passing them for every backbone runs here too
    same = st.transform(photo, PROMPT, depth=depth, seed=2, steps=2, strength=1.0, control_scale=1.0,
                        control_start=0.0, control_end=1.0)  # fmt: skip
    np.testing.assert_array_equal(same.raw, ours.raw)
    with pytest.raises(InputError, match="negative_prompt: .* takes no negative prompt"):
        st.transform(photo, PROMPT, depth=depth, seed=2, steps=2, strength=1.0, negative_prompt="blur")
    fog = st.transform(photo, PROMPT, preset="fog", depth=depth, steps=2, strength=1.0)
    assert fog.metadata[0]["negative_prompt"] == ""


@pytest.mark.parametrize("size", [(451, 300), (741, 500), (33, 97), (2048, 1024)])
def test_output_size_is_exactly_the_input_size(sd15, size):
    img = Image.new("RGB", size, (120, 130, 140))
    result = sd15.transform(img, PROMPT, seed=0, steps=2, strength=0.5)
    assert [im.size for im in result.images] == [size]
    assert result.depth.size == size and result.control_image.size == size


@pytest.mark.parametrize("backbone", ["tiny/sd2-depth", "tiny/sdxl-depth", "tiny/flux-depth"])
def test_every_backbone_returns_the_input_size(backbone, depth):
    """Generation sizes are multiples of 8 (16 for Flux's packed latents); each output is resized back to the
    source's size exactly, whichever backbone (only SD1.5 was checked)."""
    img = Image.new("RGB", (57, 91), (120, 130, 140))
    result = SceneTransformer.from_pretrained(backbone).transform(img, PROMPT, seed=0, steps=2, strength=0.5)
    assert [im.size for im in result.images] == [(57, 91)] and result.depth.size == (57, 91)
    assert result.metadata[0]["generation_size"] != [57, 91]


def test_generation_size_keeps_budget_and_aspect():
    assert generation_size(512, 512, 512, 16) == (512, 512)
    w, h = generation_size(2048, 1024, 512, 16)
    assert w % 16 == 0 and h % 16 == 0 and abs(w / h - 2) < 0.05 and 0.9 < w * h / 512**2 < 1.1
    assert generation_size(451, 300, 1024, 16) == (
        1248,
        832,
    )  # 451x300 * 2.78 = 1255.5x835.2 -> multiples of 16


def test_seeds(sd15, photo, depth):
    a = sd15.transform(photo, PROMPT, depth=depth, seed=42, steps=2, num_images=2)
    b = sd15.transform(photo, PROMPT, depth=depth, seed=42, steps=2, num_images=2)
    assert a.seeds == [42, 43] and [m["seed"] for m in a.metadata] == [42, 43]
    assert np.array_equal(a.raw, b.raw)
    assert not np.array_equal(a.raw[0], a.raw[1])
    single = sd15.transform(photo, PROMPT, depth=depth, seed=43, steps=2)  # item i depends only on seed + i
    assert np.abs(single.raw[0] - a.raw[1]).max() < BATCH_ROUNDING
    listed = sd15.transform(photo, PROMPT, depth=depth, seed=[43, 42], steps=2)
    assert listed.seeds == [43, 42] and np.abs(listed.raw[1] - a.raw[0]).max() < BATCH_ROUNDING
    rand = sd15.transform(photo, PROMPT, depth=depth, steps=2)
    assert isinstance(rand.seeds[0], int) and rand.metadata[0]["seed"] == rand.seeds[0]


def _count_backend_calls(monkeypatch):
    from depth2img.backends import Backend

    calls, original = [], Backend.__call__

    def counted(self, **kwargs):
        calls.append(len(kwargs["generators"]))
        return original(self, **kwargs)

    monkeypatch.setattr(Backend, "__call__", counted)
    return calls


@pytest.mark.parametrize("name", ["tiny", "tiny/sd2-depth", "tiny/sdxl-depth", "tiny/flux-depth"])
@pytest.mark.parametrize("strength", [0.5, 1.0])  # img2img and txt2img (sd2-depth is img2img only)
def test_one_batch_across_photos_and_prompts_equals_separate_runs(name, strength, photo, depth, monkeypatch):
    st = SceneTransformer.from_pretrained(name)
    other_photo = photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    other_depth = DepthMap(depth.values.T.copy(), "metric_depth")
    takes = st.backend.takes_negative_prompt
    a = st.prepare(photo, PROMPT, depth=depth, seed=[3, 4], steps=2, strength=strength,
                   **({"negative_prompt": "blurry"} if takes else {}))  # fmt: skip
    b = st.prepare(other_photo, "a snowy road at night", depth=other_depth, seed=9, steps=2, strength=strength,
                   **({"negative_prompt": "dark"} if takes else {}))  # fmt: skip
    calls = _count_backend_calls(monkeypatch)
    batched = st.run([a, b])
    assert calls == [3]  # one pipeline call for both photos, both prompts and all three seeds
    alone = [st.run([r])[0] for r in (a, b)]
    for got, want in zip(batched, alone):
        assert got.raw.shape == want.raw.shape and np.abs(got.raw - want.raw).max() < BATCH_ROUNDING
        # the same metadata, but for the batch each image ran in
        assert got.seeds == want.seeds and got.metadata == [{**m, "batch": 3} for m in want.metadata]
        assert got.timings["batch"] == 3 and {m["batch"] for m in want.metadata} == {len(want.seeds)}
    assert [r.metadata[0]["negative_prompt"] for r in batched] == (["blurry", "dark"] if takes else ["", ""])
    assert np.abs(batched[0].raw[0] - batched[1].raw[0]).max() > 1e-3  # the two items did not mix
    # Without a negative prompt SDXL uses zero embeddings, with one the encoded text: never one batch
    bare = st.prepare(
        other_photo, "a snowy road at night", depth=other_depth, seed=9, steps=2, strength=strength
    )
    calls.clear()
    mixed = st.run([a, bare])
    assert calls == ([2, 1] if st.backend.empty_negative_is_zeros else [3])
    assert np.abs(mixed[1].raw - st.run([bare])[0].raw).max() < BATCH_ROUNDING


@pytest.mark.parametrize("name", ["tiny/sd2-depth", "tiny/sdxl-depth", "tiny/flux-depth"])
def test_img2img_image_i_of_a_batch_is_seed_i_alone(name, photo, depth):
    # diffusers' Flux img2img samples one photo's latents with the first generator only; we pass the photo per image
    st = SceneTransformer.from_pretrained(name)
    two = st.transform(photo, PROMPT, depth=depth, seed=3, num_images=2, steps=2, strength=0.5)
    alone = st.transform(photo, PROMPT, depth=depth, seed=4, steps=2, strength=0.5)
    assert np.abs(two.raw[1] - alone.raw[0]).max() < BATCH_ROUNDING


def test_run_groups_requests_by_what_a_batch_must_share(sd15, photo, depth, monkeypatch):
    two = sd15.prepare(photo, PROMPT, depth=depth, seed=0, steps=2)
    three = sd15.prepare(photo, PROMPT, depth=depth, seed=1, steps=3)
    again = sd15.prepare(photo, "a road", depth=depth, seed=2, steps=2)
    small = sd15.prepare(photo.resize((32, 64)), PROMPT, depth=depth.resized(32, 64), seed=3, steps=2)
    calls = _count_backend_calls(monkeypatch)
    results = sd15.run([two, three, again, small])
    assert sorted(calls) == [1, 1, 2]  # steps differ, sizes differ: three pipeline calls
    assert [r.seeds for r in results] == [[0], [1], [2], [3]]  # in the order given
    assert [r.metadata[0]["steps"] for r in results] == [2, 3, 2, 2] and results[3].images[0].size == (32, 64)
    with pytest.raises(InputError, match="seed must be"):
        two.with_seeds([-1])
    with pytest.raises(InputError, match="^seed lists 5 more than once; each seed makes one image$"):
        two.with_seeds([5, 5])  # (variations' seeds=[1, 1] likewise: two images of one file name)
    with pytest.raises(InputError, match="list of Request objects from prepare\\(\\), got Request"):
        sd15.run(two)
    with pytest.raises(InputError, match="list of Request objects from prepare\\(\\), got Image"):
        sd15.run([two, photo])
    assert sd15.run([]) == []


def test_outputs_are_resized_to_their_inputs_in_parallel_and_in_order(monkeypatch):
    from depth2img import transformer

    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)
    sizes = [(90, 60), (48, 32), (45, 30), (90, 61), (48, 32)]  # mixed, one needing no resize
    monkeypatch.setattr(transformer, "CPU_THREADS", 1)
    one = transformer._to_input_sizes(pixels, sizes)
    monkeypatch.setattr(transformer, "CPU_THREADS", 3)
    three = transformer._to_input_sizes(pixels, sizes)
    assert [im.size for im in three] == sizes and all(im.mode == "RGB" for im in three)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(one, three))
    assert np.array_equal(np.asarray(three[1]), pixels[1])


def test_the_pipelines_time_holds_the_copy_that_waits_for_its_gpu_work(sd15, photo, depth, monkeypatch):
    """On a GPU the pipeline call returns with its VAE decode still queued, and the copy to the host waits for it:
    the bench counts what lies outside ``last_pipeline_s`` as the API's own time, so the copy must lie inside it."""
    import time

    from depth2img import backends

    copy = backends.on_host

    def slow_copy(images):
        time.sleep(0.5)  # a GPU's queued decode, as a CPU run cannot show it
        return copy(images)

    monkeypatch.setattr(backends, "on_host", slow_copy)
    started = time.perf_counter()
    sd15.transform(photo, PROMPT, depth=depth, seed=0, steps=2)
    assert 0.5 <= sd15.backend.last_pipeline_s <= time.perf_counter() - started


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_batch_comes_to_the_host_as_diffusers_np_output_and_rounds_as_numpy(dtype):
    """The pipeline's images are cast on the model's device and copied (``output_type="pt"``): the float images must
    stay diffusers' ``output_type="np"`` ones bit for bit, and the 8-bit ones numpy's rounding of them (half to even:
    float32 products that land on n + 0.5 are in the batch)."""
    from diffusers.image_processor import VaeImageProcessor

    from depth2img.backends import on_host

    images = torch.rand(3, 3, 20, 30, generator=torch.Generator().manual_seed(0))
    halves = torch.tensor([(2 * n + 1) / 510 for n in range(30)], dtype=torch.float32)
    assert ((halves * 255) % 1 == 0.5).sum() >= 15  # products exactly halfway between two 8-bit levels
    images[0, 0, 0] = halves
    images[1, 1, :2, :2] = torch.tensor([[0.0, 1.0], [1e-9, 0.99999]])
    images = images.to(dtype)
    want = VaeImageProcessor.pt_to_numpy(images)
    got = on_host(images)
    assert got.raw.dtype == np.float32 and np.array_equal(got.raw, want)
    assert got.pixels.dtype == np.uint8 and got.pixels.flags.c_contiguous
    assert np.array_equal(got.pixels, np.clip(np.round(want * 255.0), 0, 255).astype(np.uint8))


def test_run_isolated_keeps_a_failure_to_its_own_request(sd15, photo, depth, monkeypatch):
    from depth2img.backends import Backend
    from depth2img.errors import Depth2ImgError

    reqs = [sd15.prepare(photo, prompt, depth=depth, seed=seed, steps=2)
            for prompt, seed in (("a road", [0, 1]), ("a bad road", 2), ("a lane", 3), ("a street", 4))]  # fmt: skip
    want = sd15.run(reqs[:1] + reqs[2:])
    calls, original = [], Backend.__call__

    def refuses_bad(self, **kwargs):
        calls.append(len(kwargs["generators"]))
        if any("bad" in p for p in kwargs["prompts"]):
            raise InputError("depth is constant (no structure)")
        return original(self, **kwargs)

    monkeypatch.setattr(Backend, "__call__", refuses_bad)
    splits = []
    got = sd15.run_isolated(reqs, on_split=lambda err, half: splits.append((str(err), half)))
    assert calls == [
        5,
        3,
        2,
        1,
        2,
    ]  # all; the first half (2 requests); the road; the bad one; the second half
    assert splits == [("depth is constant (no structure)", 2), ("depth is constant (no structure)", 1)]
    assert isinstance(got[1], Depth2ImgError) and str(got[1]) == "depth is constant (no structure)"
    for g, w in zip(got[:1] + got[2:], want):
        assert (
            g.seeds == w.seeds and np.abs(g.raw - w.raw).max() < 1e-5
        )  # a split changes no image beyond rounding
    # each output records the batch it was denoised in: the road's 2 images alone, the last two requests together
    assert [[m["batch"] for m in g.metadata] for g in (got[0], got[2], got[3])] == [[2, 2], [2], [2]]
    assert [m["batch"] for w in want for m in w.metadata] == [4] * 4
    assert sd15.run_isolated([]) == []


def test_presets_wrap_prompt_and_set_knobs(sd15, photo, depth):
    from depth2img.errors import Depth2ImgWarning

    with pytest.warns(Depth2ImgWarning, match="^prompt is 120 tokens; the text encoder takes 75: truncated"):
        r = sd15.transform(photo, "a road", preset="winter+night", depth=depth, seed=0, steps=2)
    m = r.metadata[0]
    assert m["warnings"] == r.warnings and r.warnings[0].startswith("prompt is 120 tokens")
    assert m["prompt"].startswith("a road, in winter") and "at night" in m["prompt"]
    assert "green leaves" in m["negative_prompt"] and "daylight" in m["negative_prompt"]
    sketch = sd15.transform(photo, None, preset="pencil-sketch", depth=depth, seed=0, steps=2)
    assert sketch.metadata[0]["guidance_scale"] == 8.0 and sketch.metadata[0]["prompt"].startswith(
        "a pencil sketch"
    )
    override = sd15.transform(
        photo, None, preset="pencil-sketch", depth=depth, seed=0, steps=2, guidance_scale=3.0,
        negative_prompt="1,000 ghosts,blurry, blurry",
    )  # fmt: skip
    assert override.metadata[0]["guidance_scale"] == 3.0
    # the user's negative as written, the preset's phrases it lacks after it
    assert override.metadata[0]["negative_prompt"] == "1,000 ghosts,blurry, blurry, color, photo"
    plain = sd15.transform(photo, "a road", depth=depth, seed=0, steps=2, negative_prompt="1,000 ghosts")
    assert plain.metadata[0]["negative_prompt"] == "1,000 ghosts" and plain.warnings == []
    # presets that contradict each other (or the user's words) were combined without a word
    with pytest.warns(Depth2ImgWarning) as said:
        clash = sd15.transform(photo, "a Sunny road", preset="summer+rain", depth=depth, seed=0, steps=2)
    assert [w for w in clash.warnings if "both name" in w] == [
        "the prompt and the negative prompt both name 'sunny' (preset summer+rain): the model is steered towards "
        "and away from them at once"
    ] and any("both name 'sunny'" in str(w.message) for w in said)
    from depth2img.presets import contradictions, resolve

    assert contradictions(*resolve("a street", "summer+winter")[:2]) == ["snow", "bare trees", "summer"]
    assert contradictions(*resolve("a street", "rain+fog")[:2]) == []  # weather that goes together
    assert contradictions("a snowy road", "snow") == []  # whole words only
    assert contradictions("(worst quality), c++ code", "c++, (worst quality)") == ["c++", "(worst quality)"]
    # said negated, the prompt agrees with the negative prompt; said plainly once more, it does not
    assert contradictions("a street, no people, without Snow", "people, snow, cars") == []
    assert contradictions("a street, no people, people walking", "people") == ["people"]
    assert contradictions("a snowy street, knot people", "people, snow") == ["people"]  # "knot" is no "not"
    # the user's own words on both sides: no preset is named
    own = sd15.transform(
        photo, "a sunny road", preset="fog", depth=depth, seed=0, steps=2, negative_prompt="sunny"
    )
    assert [w for w in own.warnings if "both name" in w] == [
        "the prompt and the negative prompt both name 'sunny': the model is steered towards and away from them at once"
    ]


def test_user_presets_file(tmp_path, photo, depth, sd15):
    from depth2img.presets import load_presets, resolve

    f = tmp_path / "mine.yaml"
    f.write_text("presets:\n  dusty:\n    prompt: '{prompt}, dust storm'\n    knobs: {strength: 0.5}\n")
    presets = load_presets([f])
    assert (
        resolve("a road", "dusty+night", presets)[0]
        == "a road, dust storm, at night, dark sky, street lights, headlights, artificial lighting"
    )
    assert resolve(None, "dusty", presets)[2] == {"strength": 0.5}
    # the user's words are kept as written: a number's comma, a phrase repeated for weight
    assert resolve("1,000 lanterns, a road, a road", "dusty+dusty", presets)[0] == (
        "1,000 lanterns, a road, a road, dust storm"
    )
    assert resolve("a road, dust storm", "dusty", presets)[0] == "a road, dust storm"
    f.write_text("presets:\n  bad:\n    prompt: 'no placeholder'\n")
    with pytest.raises(InputError, match="must contain \\{prompt\\}"):
        load_presets([f])
    f.write_text("presets:\n  bad:\n    knobs: {stepz: 3}\n")
    with pytest.raises(InputError, match="unknown knobs \\['stepz'\\]"):
        load_presets([f])
    f.write_text("presets:\n  bad: [\n")
    with pytest.raises(InputError, match="malformed YAML at line"):
        load_presets([f])


def test_from_pretrained_reads_each_presets_file_once(tmp_path, monkeypatch):
    """It read them before the backbone loaded (to fail early) and again when it made the SceneTransformer."""
    from depth2img import presets as presets_mod
    from depth2img.transformer import SceneTransformer

    f = tmp_path / "mine.yaml"
    f.write_text("presets:\n  dusty:\n    prompt: '{prompt}, dust storm'\n")
    read, load = [], presets_mod._load_file
    monkeypatch.setattr(presets_mod, "_load_file", lambda path, *a: read.append(path) or load(path, *a))
    st = SceneTransformer.from_pretrained("tiny", preset_files=[f])
    assert read.count(f) == 1 and "dusty" in st.presets


def test_steps_times_strength_is_checked_once_a_preset_applies(tmp_path, photo, depth):
    """The CLI and job files check steps x strength up front only when both are given: a preset's strength can
    still leave img2img no step, which each request then refuses in one line."""
    f = tmp_path / "p.yaml"
    f.write_text("presets:\n  faint:\n    prompt: '{prompt}, faint'\n    knobs: {strength: 0.3}\n")
    st = SceneTransformer.from_pretrained("tiny", preset_files=[f])
    with pytest.raises(
        InputError, match="^steps x strength must leave .*: steps=3 and strength=0.3 leave 0; raise"
    ):
        st.transform(photo, "a road", preset="faint", depth=depth, steps=3)
    assert (
        st.transform(photo, "a road", preset="faint", depth=depth, steps=4, seed=0).metadata[0]["strength"]
        == 0.3
    )


@pytest.mark.parametrize("strength, total", [(0.8, 3), (1.0, 4)])
def test_the_denoise_bar_counts_the_steps_that_run(sd15, photo, depth, strength, total, capsys):
    """img2img runs int(steps x strength) of the steps: the bar (the web page shows it) counts to that, not to
    steps, from the start."""
    sd15.transform(photo, "a road", depth=depth, steps=4, strength=strength, seed=0, progress=True)
    import re

    counts = re.findall(r"(\d+)/(\d+) \[", capsys.readouterr().err)
    assert counts[0] == ("0", str(total)) and counts[-1] == (str(total), str(total))
    assert {t for _, t in counts} == {str(total)}


def test_variations_grid_computes_depth_once(sd15, photo, monkeypatch):
    calls = []
    est = sd15.estimator
    monkeypatch.setattr(sd15, "_estimator", lambda *a, **k: calls.append(1) or est(*a, **k))
    monkeypatch.setattr(type(sd15), "estimator", property(lambda self: self._estimator))
    rows = sd15.variations(photo, presets=["winter", "rain"], seeds=[1, 2], steps=2)
    assert len(calls) == 1
    assert [r.metadata[0]["preset"] for r in rows] == ["winter", "rain"] and [r.seeds for r in rows] == [
        [1, 2],
        [1, 2],
    ]


def test_variations_share_denoising_batches_of_whole_rows(sd15, photo, depth, monkeypatch):
    from depth2img.backends import Backend
    from depth2img.errors import OutOfMemory

    presets = ["winter", "rain", "pencil-sketch", "fog", "snow"]  # pencil-sketch has its own guidance_scale
    calls = _count_backend_calls(monkeypatch)
    one = sd15.variations(photo, presets=presets, seeds=[1, 2], depth=depth, steps=2, batch_size=1)
    assert calls == [2] * 5  # a row is never split: batch_size 1 gives one call per row, as before
    calls.clear()
    grid = sd15.variations(photo, presets=presets, seeds=[1, 2], depth=depth, steps=2)  # batch_size 4
    assert calls == [4, 4, 2]  # winter+rain, fog+snow, then pencil-sketch alone (its own guidance_scale)
    assert [r.metadata[0]["preset"] for r in grid] == presets and [r.seeds for r in grid] == [[1, 2]] * 5
    # one control image for the grid, made when first asked for, from the shared depth
    assert grid[0]._control_image is None and all(r.control_image is grid[0].control_image for r in grid)
    assert np.array_equal(np.asarray(grid[3].control_image), np.round(grid[3].depth.control_image() * 255))
    for got, want in zip(grid, one):
        assert np.abs(got.raw - want.raw).max() < 1e-5
        assert got.metadata == [{**m, "batch": 4 if got.metadata[0]["preset"] != "pencil-sketch" else 2}
                                for m in want.metadata]  # fmt: skip
    # Out of memory: the batch's rows run one at a time, with the same images
    counted = Backend.__call__

    def small_gpu(self, **kwargs):
        if len(kwargs["generators"]) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return counted(self, **kwargs)

    monkeypatch.setattr(Backend, "__call__", small_gpu)
    calls.clear()
    tight = sd15.variations(photo, presets=presets, seeds=[1, 2], depth=depth, steps=2)
    assert calls == [2, 2, 2, 2, 2]
    assert all(np.abs(got.raw - want.raw).max() < 1e-5 for got, want in zip(tight, one))
    with pytest.raises(OutOfMemory, match="out of GPU memory generating 3 image"):
        sd15.variations(photo, presets=presets[:2], seeds=[1, 2, 3], depth=depth, steps=2)
    with pytest.raises(InputError, match="batch_size must be an integer >= 1, got 0"):
        sd15.variations(photo, presets=presets, depth=depth, batch_size=0)
    with pytest.raises(InputError, match="^seeds must be a list of integers, got int 3$"):
        sd15.variations(photo, presets=presets, depth=depth, seeds=3)
    with pytest.raises(InputError, match="^presets must be a list of preset names, got set"):
        sd15.variations(photo, presets={"rain"}, depth=depth)
    with pytest.raises(InputError, match="pass seeds=\\[...\\], not seed or num_images"):
        sd15.variations(photo, presets=presets, depth=depth, num_images=2)
    with pytest.warns(UserWarning, match="truncated") as caught:  # the tiny byte tokenizer makes long prompts
        (row,) = sd15.variations(
            photo, presets="rain+night", seeds=[7], depth=depth, steps=2
        )  # a string: one preset
    assert row.metadata[0]["preset"] == "rain+night" and row.seeds == [7]
    assert caught[0].filename == __file__  # the warning points at the caller's line


def test_metadata_round_trip(sd15, photo, depth, tmp_path):
    import json

    from depth2img.outputs import read_png_metadata, write_transform_result

    r = sd15.transform(photo, PROMPT, preset="fog", depth=depth, seed=9, steps=2, num_images=2)
    records = write_transform_result(r, tmp_path, "x", source="in/x.png")
    assert [rec["output"] for rec in records] == ["x_fog_s9.png", "x_fog_s10.png"]
    for rec, meta in zip(records, r.metadata):
        back = read_png_metadata(tmp_path / rec["output"])
        shared = [
            "x_depth16.png",
            "x_depth_preview.png",
            "x_control.png",
        ]  # made from the depth, for all images
        assert back == json.loads(
            json.dumps({**meta, "source": "in/x.png", "output": rec["output"], "depth_files": shared})
        )
        assert back["backbone"]["id"].endswith("sd15-depth") and back["backbone"]["controlnet"].endswith(
            "-controlnet"
        )
        assert back["backbone"]["controlnet_revision"] is None  # a tiny folder has none; a pinned one below
        assert set(back["versions"]) == {"depth2img", "torch", "diffusers", "transformers", "pillow", "numpy"}
        assert back["native_size"] == 64  # (the tiny models'; it sets the generation size)
        assert back["device"] == "cpu" and back["dtype"] == "float32"  # what a same-image rerun needs too
    lines = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert lines == [read_png_metadata(tmp_path / rec["output"]) for rec in records]


def test_the_controlnet_and_depth_loras_revisions_are_recorded(sd15, photo, depth, monkeypatch):
    """Metadata promised model ids and revisions, but gave the ControlNet's (and Flux's depth LoRA's) id only."""
    import dataclasses

    b = sd15.backend
    monkeypatch.setattr(b, "companion_ref", dataclasses.replace(b.companion_ref, revision="539f9918" * 5))
    meta = sd15.transform(photo, PROMPT, depth=depth, seed=0, steps=2).metadata[0]["backbone"]
    assert meta["controlnet_revision"] == "539f9918" * 5 and meta["lora_revision"] is None


def test_scheduler_swap_keeps_weights(sd15, photo, depth):
    unet = sd15.backend.pipe.unet
    r = sd15.transform(photo, PROMPT, depth=depth, seed=0, steps=2, scheduler="ddim")
    assert type(sd15.backend.pipes["img2img"].scheduler).__name__ == "DDIMScheduler"
    assert sd15.backend.pipes["txt2img"].scheduler is sd15.backend.pipes["img2img"].scheduler
    assert sd15.backend.pipe.unet is unet and r.metadata[0]["scheduler"] == "ddim"
    sd15.transform(photo, PROMPT, depth=depth, seed=0, steps=2, scheduler="unipc")
    sd15.backend.set_scheduler("ddim-trailing")  # Hyper-SD's: DDIM with trailing timesteps
    assert sd15.backend.pipe.scheduler.config.timestep_spacing == "trailing"
    sd15.backend.set_scheduler("dpm++-karras")
    assert sd15.backend.pipe.scheduler.config.use_karras_sigmas
    sd15.backend.set_scheduler("unipc")


@pytest.mark.parametrize("scheduler", ["lcm", "tcd"])
def test_few_step_schedulers_refuse_more_steps_than_their_schedule_holds(sd15, photo, depth, scheduler):
    """LCM and TCD take their steps from a 50-step schedule; diffusers' ValueError on 60 escaped as an internal
    error that ended a whole CLI run."""
    with pytest.raises(InputError, match=f"^steps: scheduler '{scheduler}' takes at most 50 steps, got 60$"):
        sd15.transform(photo, PROMPT, depth=depth, seed=0, steps=60, strength=1.0, scheduler=scheduler)
    r = sd15.transform(photo, PROMPT, depth=depth, seed=0, steps=2, strength=1.0, scheduler=scheduler)
    assert r.metadata[0]["scheduler"] == scheduler
    sd15.backend.set_scheduler("unipc")


def test_anything_but_a_pil_image_is_refused_with_one_line(sd15, photo):
    calls = (
        lambda im: sd15.transform(im, PROMPT),
        lambda im: sd15.prepare(im, PROMPT),
        lambda im: sd15.variations(im, presets=["rain"]),
        lambda im: sd15.depth_for(im),
        lambda im: sd15.estimator(im),
    )
    for call in calls:
        for bad, got in (
            (np.zeros((8, 8, 3), np.uint8), "ndarray"),
            ("street.jpg", "str"),
            (None, "NoneType"),
        ):
            with pytest.raises(
                InputError,
                match=f"^image must be a PIL image \\(use depth2img.load_image for files\\), got {got}$",
            ):
                call(bad)
    with pytest.raises(InputError, match="^images\\[1\\] must be a PIL image .*got str$"):
        sd15.estimator([photo, "b.png"])


def test_long_prompt_names_truncated_tokens(sd15, photo, depth):
    from depth2img.errors import Depth2ImgWarning

    long = "a street " + " ".join(f"w{i}" for i in range(60))
    tokenizer = sd15.backend.checking_tokenizer("tokenizer")

    def tokens(text):
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    # the words dropped as written, from the first not wholly kept (the tokens' decode, lowercased and spaced out,
    # had been quoted: "14,876 characters" dropped of a 10,000-character prompt)
    words = long.split(" ")
    kept = max(k for k in range(len(words)) if tokens(" ".join(words[:k])) <= 75)
    dropped = " ".join(words[kept:])
    said = (f"prompt is {tokens(long)} tokens; the text encoder takes 75: truncated {dropped[:40]!r} ... "
            f"{dropped[-30:]!r} ({len(dropped)} characters)")  # fmt: skip
    with pytest.warns(Depth2ImgWarning, match=f"^{re.escape(said)}$"):
        r = sd15.transform(photo, long, depth=depth, seed=0, steps=2)
    assert r.warnings == r.metadata[0]["warnings"] == [said] and dropped.endswith("w58 w59")
    # a long tail is shown by its ends (10,000 characters of prompt filled the web page)
    with pytest.warns(Depth2ImgWarning) as said:
        sd15.transform(photo, long * 40, depth=depth, seed=0, steps=2)
    assert re.fullmatch(r"prompt is \d+ tokens; the text encoder takes 75: truncated '[^']{40}' \.\.\. '[^']{30}' "
                        r"\([\d,]{5,} characters\)", str(said[0].message)), str(said[0].message)  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=None), "give a prompt or a preset"),
        (dict(prompt="   "), "give a prompt or a preset"),
        (dict(prompt=["a street"]), r"^prompt must be a string, got list \['a street'\]$"),
        (dict(negative_prompt=5), "^negative_prompt must be a string, got int 5$"),
        (dict(preset=("rain",)), r"^preset must be a string, got tuple \('rain',\)$"),
        (dict(preset="winter+nite"), "unknown preset 'nite'"),
        (dict(scheduler="magic"), "scheduler 'magic' is not one of"),
        (dict(strength=0.0), r"strength must be in \(0, 1\], got 0.0"),
        (dict(strength=1.5), r"strength must be in \(0, 1\], got 1.5"),
        (dict(steps=0), "steps must be an integer in 1..1000, got 0"),
        (dict(guidance_scale=-1.0), r"guidance_scale must be in \[0, 50\], got -1.0"),
        (dict(control_start=0.6, control_end=0.5), "0 <= start < end <= 1"),
        (dict(seed=-1), "seed must be an integer in 0..2\\*\\*63-1, got -1"),
        (dict(seed=2**70), "seed must be an integer"),
        (dict(num_images=0), "num_images must be an integer in 1..64, got 0"),
        (
            dict(strength=True),
            r"^strength must be in \(0, 1\], got True$",
        ),  # once ran as txt2img, recorded true
        (dict(guidance_scale=True), r"^guidance_scale must be in \[0, 50\], got True$"),
        (dict(control_start=False), "got False and 1.0"),
        (
            dict(seed=2**63 - 1, num_images=2),
            r"^seed 9223372036854775807 with num_images 2: image i uses seed \+ i",
        ),
        (dict(steps=1, strength=0.8), "steps=1 and strength=0.8 leave 0; raise either"),
        (
            dict(depth=np.ones((64, 64))),
            "depth array: depth_polarity must be one of near-bright, far-bright, metric \\(got None\\)",
        ),
        (
            dict(depth=np.ones((32, 64)), depth_polarity="metric"),
            "depth is 64x32 but the image is 64x64: aspect ratios differ",
        ),
    ],
)
def test_bad_arguments(sd15, photo, kwargs, message):
    kwargs = {"prompt": PROMPT, "steps": 2, **kwargs}
    with pytest.raises(InputError, match=message) as err:
        sd15.transform(photo, **kwargs)
    assert "\n" not in str(err.value)


def test_a_request_for_no_seeds_is_refused(sd15, photo, depth):
    req = sd15.prepare(photo, PROMPT, depth=depth, seed=0, steps=2)
    with pytest.raises(InputError, match="^seed list is empty$"):
        req.with_seeds([])  # run() raised IndexError on it


def test_depth_file_with_nan_refused(sd15, photo, tmp_path):
    np.save(tmp_path / "d.npy", np.array([[1.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(InputError, match="d.npy: 1 depth values are NaN"):
        sd15.transform(photo, PROMPT, depth=tmp_path / "d.npy", depth_polarity="metric", steps=2)


def test_depth_file_of_other_size_same_aspect_is_resized(sd15, photo, tmp_path):
    from depth2img import io

    io.write_depth_png16(
        DepthMap(np.arange(32 * 32, dtype=float).reshape(32, 32) + 1, "metric_depth"), tmp_path / "d.png"
    )
    r = sd15.transform(photo, PROMPT, depth=tmp_path / "d.png", seed=0, steps=2)
    assert r.depth.size == (SIZE, SIZE) and r.metadata[0]["depth"]["source"].endswith("d.png")


def test_records_say_where_the_depth_came_from(sd15, photo, depth, tmp_path, monkeypatch):
    """A review of the records (2026-11-28): a depth array or the caller's own DepthMap recorded its source as "",
    and a depth made elsewhere was recorded as the absolute path of any file of its name in the working folder (an
    estimator's or scene's)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "procedural-scene").write_text("a file that happens to share the scene's name")
    scene = DepthMap(depth.values, "metric_depth", source="procedural-scene")
    sources = [sd15.transform(photo, PROMPT, depth=d, depth_polarity=polarity, seed=0, steps=2).metadata[0]["depth"]
               ["source"] for d, polarity in ((depth.values, "metric"), (scene, None), (depth, None))]  # fmt: skip
    assert sources == ["array", "procedural-scene", "DepthMap"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [("{not json", r"cannot be read as JSON \(Expecting property name"),
     ("[1]", "must be a JSON object \\(a pipeline's model index\\), got list"),
     (b"\xff\xfe", r"cannot be read as JSON \('utf-8' codec can't decode")],
)  # fmt: skip
def test_a_malformed_model_index_is_one_line(tmp_path, capsys, text, problem):
    """It was an 'internal error' (JSONDecodeError; AttributeError for a list), exit 1."""
    from depth2img.cli import main

    (tmp_path / "m").mkdir()
    index = tmp_path / "m" / "model_index.json"
    index.write_bytes(text) if isinstance(text, bytes) else index.write_text(text)
    with pytest.raises(ModelLoadError, match=f"^{index}: {problem}"):
        SceneTransformer.from_pretrained(str(tmp_path / "m"))
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    assert main(["transform", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "m"),
                 "--estimator", "tiny", "--prompt", "x", "-q"]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"depth2img: error: {index}: ")


def test_model_kind_mismatch_and_missing_weights(tmp_path, tiny_dir, monkeypatch):
    import shutil

    with pytest.raises(ModelLoadError, match="is not a diffusers pipeline folder"):
        SceneTransformer.from_pretrained(str(tiny_dir / "depth-anything"))
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_dir / "sd15-depth", mixed)
    shutil.copytree(tiny_dir / "sdxl-depth-controlnet", mixed / "controlnet")
    with pytest.raises(ModelLoadError, match="does not fit .*wrong backbone family"):
        SceneTransformer.from_pretrained(str(mixed))
    # a UNet config whose cross_attention_dim is misspelt: its own loader's error, not the ControlNet blamed (a review,
    # 2026-11-28: "ControlNet ... does not fit ... (UNet cross-attention None): wrong backbone family")
    typo = tmp_path / "typo"
    shutil.copytree(tiny_dir / "sd15-depth", typo)
    shutil.copytree(tiny_dir / "sd15-depth-controlnet", tmp_path / "typo-controlnet")
    config = json.loads((typo / "unet" / "config.json").read_text())
    config["cross_atention_dim"] = config.pop("cross_attention_dim")
    (typo / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ModelLoadError, match=rf"^model '{typo}' at {typo} could not be loaded: .*attn2.to_k.weight"
    ):
        SceneTransformer.from_pretrained(str(typo))
    from depth2img import registry

    monkeypatch.setattr(registry, "tiny_root", lambda: tiny_dir.parent / "elsewhere")
    monkeypatch.setitem(
        registry.backbones()["sd2-depth"].__dict__, "tiny", "sd15-depth"
    )  # entry says sd2, folder holds sd15
    shutil.copytree(tiny_dir / "sd15-depth", tiny_dir.parent / "elsewhere" / "sd15-depth")
    with pytest.raises(ModelLoadError, match="holds a sd15-controlnet pipeline .* needs sd2-depth"):
        SceneTransformer.from_pretrained("tiny/sd2-depth")
    with pytest.raises(ModelLoadError, match="stable-diffusion-v1-5/stable-diffusion-v1-5.*hf download"):
        SceneTransformer.from_pretrained("sd15-depth")


def test_broken_tokenizer_is_caught(tmp_path, tiny_dir):
    import shutil

    from depth2img.tiny import _byte_vocab

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir / "sd15-depth", broken)
    shutil.copytree(tiny_dir / "sd15-depth-controlnet", broken / "controlnet")
    from transformers import CLIPTokenizer

    vocab = {k: v for k, v in list(_byte_vocab().items())[:1]}
    vocab.update({"<|startoftext|>": 1, "<|endoftext|>": 2})
    (tmp_path / "v.json").write_text(__import__("json").dumps(vocab))
    (tmp_path / "m.txt").write_text("#version: 0.2\n")
    shutil.rmtree(broken / "tokenizer")
    CLIPTokenizer(str(tmp_path / "v.json"), str(tmp_path / "m.txt")).save_pretrained(broken / "tokenizer")
    with pytest.raises(ModelLoadError, match="tokenizer has 3 tokens .*re-download"):
        SceneTransformer.from_pretrained(str(broken))


def test_a_flux_without_its_t5_tokenizer_is_refused(tmp_path, tiny_dir):
    """A review of hub caches (2026-11-28): FLUX with tokenizer_2/ missing loaded an empty T5 tokenizer (104 tokens:
    its 100 extra ids and specials) silently; only one under 64 tokens or over its text encoder's vocabulary (32128
    for FLUX's T5) was refused. Here the tiny T5 encoder's vocabulary is made 1000, so 104 is not over it."""
    import shutil

    from transformers import T5EncoderModel

    model = tmp_path / "flux"
    shutil.copytree(tiny_dir / "flux-depth", model)
    encoder = T5EncoderModel.from_pretrained(model / "text_encoder_2")
    encoder.resize_token_embeddings(1000)
    encoder.save_pretrained(model / "text_encoder_2")
    shutil.rmtree(model / "tokenizer_2")
    with pytest.raises(ModelLoadError, match=r"tokenizer_2 has 104 tokens \(text encoder vocabulary 1000\); the "
                       r"tokenizer files \(tokenizer_2/\) are missing"):  # fmt: skip
        SceneTransformer.from_pretrained(str(model))


def test_flux_lora_equals_diffusers_and_scale_is_the_control_knob(photo, depth, tiny_dir):
    from diffusers import FluxControlPipeline

    st = SceneTransformer.from_pretrained("tiny/flux-depth-lora")
    ours = st.transform(photo, PROMPT, depth=depth, seed=4, steps=2, strength=1.0, control_scale=0.6)
    assert ours.metadata[0]["backbone"]["lora"].endswith("flux-depth-lora-lora")
    ref = FluxControlPipeline.from_pretrained(tiny_dir / "flux-depth-lora")
    ref.load_lora_weights(tiny_dir / "flux-depth-lora-lora", weight_name="pytorch_lora_weights.safetensors")
    theirs = ref(PROMPT, control_image=_control_np(depth), num_inference_steps=2, guidance_scale=10.0, height=SIZE,
                 width=SIZE, generator=_gens(4), output_type="np", joint_attention_kwargs={"scale": 0.6}).images  # fmt: skip
    _assert_same(ours.raw, theirs)
    off = st.transform(photo, PROMPT, depth=depth, seed=4, steps=2, strength=1.0, control_scale=0.0)
    full = st.transform(photo, PROMPT, depth=depth, seed=4, steps=2, strength=1.0, control_scale=1.0)
    gap_off, gap_full = np.abs(off.raw - ours.raw).max(), np.abs(full.raw - ours.raw).max()
    assert gap_off > 1e-4 and gap_full > 1e-4  # the knob changes the result in both directions
    with pytest.raises(InputError, match="control_start: .* has no such knob"):
        st.transform(photo, PROMPT, depth=depth, steps=2, strength=1.0, control_start=0.2)


def test_few_step_lora_equals_diffusers_and_sets_its_defaults(photo, depth, tiny_dir):
    from diffusers import ControlNetModel, LCMScheduler, StableDiffusionControlNetPipeline

    st = SceneTransformer.from_pretrained("tiny", lora="tiny/lcm-sd15")
    ours = st.transform(photo, PROMPT, depth=depth, seed=8, strength=1.0)
    m = ours.metadata[0]
    assert (m["scheduler"], m["steps"], m["guidance_scale"]) == ("lcm", 4, 1.0)  # the LoRA's defaults
    assert (
        m["backbone"]["speed_lora"]["id"].endswith("lcm-sd15") and m["backbone"]["speed_lora"]["scale"] == 1.0
    )
    cn = ControlNetModel.from_pretrained(tiny_dir / "sd15-depth-controlnet")
    ref = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_dir / "sd15-depth", controlnet=cn, safety_checker=None
    )
    ref.load_lora_weights(tiny_dir / "lcm-sd15", weight_name="pytorch_lora_weights.safetensors")
    ref.fuse_lora()
    ref.scheduler = LCMScheduler.from_config(ref.scheduler.config)
    theirs = ref(PROMPT, image=_control(depth), num_inference_steps=4, guidance_scale=1.0, generator=_gens(8),
                 output_type="np").images  # fmt: skip
    _assert_same(ours.raw, theirs)
    plain = SceneTransformer.from_pretrained("tiny").transform(photo, PROMPT, depth=depth, seed=8, strength=1.0, steps=4,
                                                                guidance_scale=1.0, scheduler="lcm")  # fmt: skip
    assert np.abs(plain.raw - ours.raw).max() > 1e-3  # the LoRA is really in
    explicit = st.transform(photo, PROMPT, depth=depth, seed=8, strength=1.0, steps=2)
    assert explicit.metadata[0]["steps"] == 2  # explicit knobs still win
    sketch = st.prepare(photo, PROMPT, preset="pencil-sketch", depth=depth, seed=0).knobs
    assert (sketch["guidance_scale"], sketch["steps"]) == (1.0, 4)  # the preset's guidance 8 would break LCM
    # Hyper-SD's tiny stand-in (the same folder, its one file): the registry's weight_name is the hub repo's file
    hyper = SceneTransformer.from_pretrained("tiny", lora="tiny/hyper-sd15-8step")
    m = hyper.transform(photo, PROMPT, depth=depth, seed=8, strength=1.0).metadata[0]
    assert (m["scheduler"], m["steps"], m["guidance_scale"]) == ("ddim-trailing", 8, 1.0)


def test_a_presets_knobs_do_not_override_the_guidance_flux_needs(photo, depth):
    from depth2img.transformer import FLUX_GUIDANCE

    def guidance(st, **knobs):
        return st.prepare(photo, PROMPT, preset="pencil-sketch", depth=depth, seed=0, **knobs).knobs[
            "guidance_scale"
        ]

    assert guidance(SceneTransformer.from_pretrained("tiny")) == 8.0  # the preset's knob, on SD
    flux = SceneTransformer.from_pretrained("tiny/flux-depth")
    assert guidance(flux) == FLUX_GUIDANCE != 8.0
    assert guidance(flux, guidance_scale=3.0) == 3.0  # explicit knobs still win


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lora": "tiny/lcm-sd15", "lora_scale": 5}, r"lora_scale must be in \(0, 2\], got 5"),
        ({"lora": "tiny/lcm-sd15", "lora_scale": float("nan")}, r"lora_scale must be in \(0, 2\], got nan"),
        ({"lora": "nope"}, "lora 'nope' is not a registry name"),
        ({"lora_scale": 0.5}, "^lora_scale 0.5 is given without a LoRA to scale$"),  # it was ignored
        ({"attention": "flash"}, "attention must be sdpa or xformers, got 'flash'"),
        ({"offload": "model"}, "offload 'model' moves weights between CPU and GPU; no GPU is available here"),
        ({"offload": "disk"}, "offload must be one of"),
        ({"native_size": 0}, r"^native_size must be an integer in 16..4096 \(pixels a side\), got 0$"),
        ({"native_size": -512}, "native_size must be an integer in 16..4096"),
        ({"native_size": "512"}, "native_size must be an integer in 16..4096 .*, got '512'"),
        ({"native_size": True}, "native_size must be an integer"),
    ],
)
def test_load_arguments_are_checked_before_the_backbone_loads(monkeypatch, kwargs, message):
    """These were checked only after the backbone had loaded: a real one is gigabytes to download and load."""
    from depth2img import backends

    def no_load(*args, **kw):
        raise AssertionError("the backbone started loading")

    monkeypatch.setattr(backends, "load_backend", no_load)
    with pytest.raises(InputError, match=message):
        SceneTransformer.from_pretrained("tiny", device="cpu", **kwargs)


def test_a_tiny_few_step_lora_is_built_on_first_use_as_a_tiny_backbone_is(monkeypatch, tmp_path):
    """A review of the backbones (2026-11-28): ``--lora tiny/lcm-sdxl`` where its tiny folder was not built yet was
    refused up front ("expected one .safetensors file, found 0"); the loader builds it, as it builds a backbone."""
    from depth2img.backends import check_at_hand
    from depth2img.registry import resolve_backbone, resolve_lora

    monkeypatch.setenv("DEPTH2IMG_TINY_DIR", str(tmp_path / "fresh"))
    check_at_hand(resolve_backbone("tiny/sdxl-depth"), lora=resolve_lora("tiny/lcm-sdxl"))
    assert not (tmp_path / "fresh").exists()  # (nothing built by the check itself)
    # a folder whose name starts with "tiny" is no tiny model (its re-verification: an empty LoRA folder tinyfoo
    # passed the check, and a backbone folder tiny-sd was given the tiny random-weight estimator)
    from depth2img.registry import default_estimator_for, is_tiny, load_registry

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tinyfoo").mkdir()
    with pytest.raises(
        ModelLoadError, match=r"LoRA 'tinyfoo' at .*tinyfoo: expected one .safetensors file, found 0"
    ):
        check_at_hand(resolve_backbone("tiny"), lora=resolve_lora("tinyfoo"))
    assert default_estimator_for("tiny-sd") == load_registry()["default_estimator"] != "tiny"
    assert [is_tiny(n) for n in ("tiny", "tiny/sd2-depth", "tiny-sd", "tinyfoo", None)] == [1, 1, 0, 0, 0]


def test_few_step_lora_mismatches_are_refused(monkeypatch, tiny_dir):
    from depth2img import backends, tiny

    real = backends.load_backend

    def no_load(*args, **kw):
        raise AssertionError("the backbone started loading")

    # registry backbones and LoRAs: refused before the backbone (gigabytes) loads
    monkeypatch.setattr(backends, "load_backend", no_load)
    with pytest.raises(
        InputError, match="^lora: 'tiny/lcm-sd15' is made for sd15-controlnet, not sdxl-controlnet"
    ):
        SceneTransformer.from_pretrained("tiny/sdxl-depth", lora="tiny/lcm-sd15")
    with pytest.raises(
        InputError, match="few-step LoRAs are wired for sd15-depth and sdxl-depth, not flux-control"
    ):
        SceneTransformer.from_pretrained("tiny/flux-depth", lora="tiny/lcm-sd15")
    # a folder's, its kind read from its model index (was: once it had loaded)
    tiny.ensure("sdxl-depth", tiny_dir / "sdxl-depth")
    with pytest.raises(
        InputError, match="^lora: 'tiny/lcm-sd15' is made for sd15-controlnet, not sdxl-control"
    ):
        SceneTransformer.from_pretrained(str(tiny_dir / "sdxl-depth"), lora="tiny/lcm-sd15")
    monkeypatch.setattr(backends, "load_backend", real)
    with pytest.raises(InputError, match="lora 'fast' is not a registry name"):
        SceneTransformer.from_pretrained("tiny", lora="fast")
    with pytest.raises(InputError, match="lora_scale must be in \\(0, 2\\], got 5"):
        SceneTransformer.from_pretrained("tiny", lora="tiny/lcm-sd15", lora_scale=5)
    assert (
        SceneTransformer.from_pretrained("tiny/sdxl-depth", lora="tiny/lcm-sdxl").backend.default_scheduler
        == "lcm"
    )


def test_a_lora_folder_outside_the_registry(tiny_dir, capfd):
    """A folder LoRA of another backbone was refused as "...: Error(s) in loading state_dict for
    UNet2DConditionModel:" (the cause cut) after 9 lines of diffusers' log; a fitting one silently kept the backbone's
    scheduler, 30 steps and full guidance."""
    from depth2img.errors import Depth2ImgWarning

    capfd.readouterr()
    with pytest.raises(ModelLoadError) as err:
        SceneTransformer.from_pretrained("tiny", lora=str(tiny_dir / "lcm-sdxl"))
    assert str(err.value).startswith(
        f"LoRA '{tiny_dir / 'lcm-sdxl'}' does not fit 'tiny': a LoRA for another backbone? size mismatch for "
    ) and "\n" not in str(err.value)
    assert "unsuccessful" not in capfd.readouterr().err
    with pytest.warns(
        Depth2ImgWarning, match="lcm-sd15: no registry entry, so its scheduler, steps and guidance"
    ):
        st = SceneTransformer.from_pretrained("tiny", lora=str(tiny_dir / "lcm-sd15"))
    assert st.backend.default_scheduler != "lcm"
    # a LoRA with no UNet weights (a text encoder's) loaded silently and was recorded as a speed LoRA
    from safetensors.torch import save_file

    (tiny_dir.parent / "te-lora").mkdir(exist_ok=True)
    save_file({f"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_{ab}.weight": torch.zeros(shape)
               for ab, shape in (("A", (4, 32)), ("B", (32, 4)))},
              str(tiny_dir.parent / "te-lora" / "pytorch_lora_weights.safetensors"))  # fmt: skip
    with pytest.raises(
        ModelLoadError, match=r"^LoRA '.*te-lora' has no weights for the UNet of 'tiny', where "
    ):
        SceneTransformer.from_pretrained("tiny", lora=str(tiny_dir.parent / "te-lora"))


@pytest.mark.parametrize(
    "device, compile_mode, laid_out",
    [("cuda", "reduce-overhead", True), ("cuda", None, False), ("cpu", "reduce-overhead", False)],
)
def test_channels_last_is_the_fast_paths_default_only_compiled_on_a_gpu(
    device, compile_mode, laid_out, eager_compile, monkeypatch
):
    """Channels-last made the eager fast path 7-9 % slower than plain diffusers on an H100 (batch 16) and a CPU call
    4 % slower; compiled on the H100, 1 % faster. The GPU is the pipeline's device property, faked (nothing runs)."""
    st_ = SceneTransformer.from_pretrained("tiny")
    monkeypatch.setattr(type(st_.backend.pipe), "device", property(lambda self: torch.device(device)))
    applied = st_.backend.optimize(compile_mode=compile_mode, fuse_qkv=False)
    assert [a for a in applied if "channels_last" in a] == (
        ["unet:channels_last", "controlnet:channels_last", "vae:channels_last"] if laid_out else []
    )
    assert st_.backend.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last) is laid_out


def test_fused_qkv_keeps_the_flux_depth_loras_deltas_and_a_fused_few_step_lora(photo, depth):
    """Fused QKV projections are built from the base weights: on Flux's depth LoRA, applied per call (its scale is
    control_scale), the LoRA's q/k/v deltas were silently dropped by compile=...'s fast path."""
    kw = dict(depth=depth, seed=2, steps=2, strength=1.0)
    flux = SceneTransformer.from_pretrained("tiny/flux-depth-lora")
    before = flux.transform(photo, PROMPT, control_scale=0.5, **kw).raw
    assert "transformer:fused_qkv" not in flux.backend.optimize(fuse_qkv=True, channels_last=False)
    assert np.abs(flux.transform(photo, PROMPT, control_scale=0.5, **kw).raw - before).max() < 1e-6
    lcm = SceneTransformer.from_pretrained("tiny", lora="tiny/lcm-sd15")
    before = lcm.transform(photo, PROMPT, **kw).raw
    assert "unet:fused_qkv" in lcm.backend.optimize(fuse_qkv=True, channels_last=False)
    assert np.abs(lcm.transform(photo, PROMPT, **kw).raw - before).max() < 1e-5


def test_xformers_attention_survives_the_compiled_fast_path(eager_compile, monkeypatch):
    """compile=... fused the QKV projections after memory() had set xformers attention: fusing resets every
    processor to diffusers' fused SDPA one, so xformers was silently undone while the metadata still named it."""
    import sys
    import types

    from diffusers import DiffusionPipeline
    from diffusers.models.attention_processor import XFormersAttnProcessor

    monkeypatch.setitem(
        sys.modules, "xformers", types.ModuleType("xformers")
    )  # the extra, as far as checks go

    def xformers_processors(pipe):  # what the real call sets, without xformers' CUDA kernels
        for name in ("unet", "controlnet", "vae"):
            getattr(pipe, name).set_attn_processor(XFormersAttnProcessor())

    monkeypatch.setattr(DiffusionPipeline, "enable_xformers_memory_efficient_attention", xformers_processors)
    st = SceneTransformer.from_pretrained("tiny", device="cpu", attention="xformers", compile="default")
    for name in ("unet", "controlnet", "vae"):
        kinds = {type(p).__name__ for p in getattr(st.backend.pipe, name).attn_processors.values()}
        assert kinds == {"XFormersAttnProcessor"}, name
    assert (
        not [a for a in st.backend.fast_path if "fused_qkv" in a]
        and "unet:compile(default)" in st.backend.fast_path
    )


def test_model_offload_puts_the_models_back_after_an_img2img_call(photo, depth, monkeypatch):
    """Model offload's hooks are set through the txt2img pipeline; the img2img one (every strength < 1) released
    nothing at the end of its call, leaving its last models on the GPU. Installed with the CPU as the execution
    device (there is no GPU here) to read the pipelines' state."""
    from depth2img.backends import offload_pipeline

    kw = dict(depth=depth, seed=0, steps=2, strength=0.8, control_end=0.5)
    want = SceneTransformer.from_pretrained("tiny", device="cpu").transform(photo, PROMPT, **kw).raw
    st = SceneTransformer.from_pretrained("tiny", device="cpu")
    offload_pipeline(st.backend.pipe, "model", torch.device("cpu"))
    armed = []
    real = type(st.backend.pipe).enable_model_cpu_offload
    monkeypatch.setattr(type(st.backend.pipe), "enable_model_cpu_offload",
                        lambda self, *a, **k: (armed.append(self), real(self, *a, **k))[1])  # fmt: skip
    for _ in range(2):
        got = st.transform(photo, PROMPT, **kw)
        assert np.abs(got.raw - want).max() < 1e-6 and got.metadata[0]["mode"] == "img2img"
    assert armed == [st.backend.pipe] * 2  # released (and armed again) after each call


def test_sdxl_img2img_logs_no_empty_float32_list(photo, depth):
    """diffusers' SDXL img2img upcasts its VAE with .to(float32), which logged "There are modules in AutoencoderKL
    that should be kept in float32: []" twice on every call."""
    import logging

    from diffusers.utils import logging as diffusers_logging

    st = SceneTransformer.from_pretrained("tiny/sdxl-depth")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("diffusers.models.modeling_utils")
    logger.addHandler(handler)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_warning()  # the CLI's tests quiet diffusers for the process
    try:
        st.transform(photo, PROMPT, depth=depth, seed=1, steps=2, strength=0.6)
        # a list that is not empty still shows
        logger.warning("There are modules in X that should be kept in float32: ['wo']")
    finally:
        logger.removeHandler(handler)
        diffusers_logging.set_verbosity(verbosity)
    assert [r.getMessage() for r in records] == [
        "There are modules in X that should be kept in float32: ['wo']"
    ]


def test_without_guidance_no_negative_prompt_is_used_or_recorded(sd15, photo, depth):
    """guidance <= 1 (a few-step LoRA's default) turns classifier-free guidance off, so diffusers encodes no negative:
    outputs recorded the negative prompt (the user's, a preset's) that had changed nothing."""
    import warnings as w

    common = dict(depth=depth, seed=1, steps=2, guidance_scale=1.0)
    plain = sd15.transform(photo, "a cat", **common)
    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        told = sd15.transform(photo, "a cat", negative_prompt="blurry", **common)
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(told.images[0]))
    assert told.metadata[0]["negative_prompt"] == ""
    note = "negative prompt unused: guidance_scale 1 <= 1 turns classifier-free guidance off"
    assert told.warnings == [note] and any(note in str(c.message) for c in caught)
    sketch = sd15.transform(photo, "a cat", preset="pencil-sketch", **common)  # its negatives: "color, photo"
    assert sketch.metadata[0]["negative_prompt"] == "" and sketch.warnings == []
    guided = sd15.transform(
        photo, "a cat", negative_prompt="blurry", depth=depth, seed=1, steps=2, guidance_scale=2.0
    )
    assert guided.metadata[0]["negative_prompt"] == "blurry" and guided.warnings == []


def test_a_backbone_outside_the_registry_generates_at_its_pipelines_own_size(tiny_dir, tmp_path):
    """A local SDXL or Flux folder generated at 512 a side (a quarter of its pixels): the size is now the one diffusers
    computes for the pipeline (UNet sample size, or Flux's default sample size, x the VAE's scale factor)."""
    import shutil

    shutil.copytree(tiny_dir / "sdxl-depth", tmp_path / "my-sdxl")
    shutil.copytree(tiny_dir / "sdxl-depth-controlnet", tmp_path / "my-sdxl" / "controlnet")  # its ControlNet
    shutil.copytree(tiny_dir / "flux-depth", tmp_path / "my-flux")
    for folder in ("my-sdxl", "my-flux"):
        st = SceneTransformer.from_pretrained(str(tmp_path / folder), estimator="tiny")
        pipe = st.backend.pipe
        latent = pipe.unet.config.sample_size if folder == "my-sdxl" else pipe.default_sample_size
        assert st.native_size == latent * pipe.vae_scale_factor == {"my-sdxl": 64, "my-flux": 128}[folder]
        assert (
            SceneTransformer.from_pretrained(
                str(tmp_path / folder), estimator="tiny", native_size=96
            ).native_size
            == 96
        )


def test_threads_sharing_one_transformer_each_get_their_own_images(sd15, photo, depth):
    """Threads calling one SceneTransformer failed with raw errors (IndexError, "stack expects a non-empty
    TensorList"): prepare swapped the live pipelines' scheduler while another thread denoised. Runs now take turns
    and prepare only checks the scheduler."""
    import concurrent.futures

    asks = [
        dict(seed=s, scheduler=sch) for s, sch in ((1, "euler-a"), (2, "ddim"), (3, "unipc"), (4, "euler-a"))
    ]

    def one(ask):
        return sd15.transform(photo, "a street", depth=depth, steps=3, **ask).raw[0]

    alone = [one(ask) for ask in asks]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(one, asks))
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


def test_a_prompt_checked_while_another_thread_encodes_leaves_its_encoding_alone(sd15):
    """A fast tokenizer's padding is state each call sets: prepare's prompt check (outside the run lock) made the
    pipeline's encoding, in another thread, come back unpadded (9 tokens, not 77): a different image, now and then
    (this file's threads test failed so in one fresh-clone CI run)."""
    import sys
    import threading

    tok = sd15.backend.pipe.tokenizer
    stop, lengths = threading.Event(), set()

    def pipeline_encodes():
        while not stop.is_set():
            ids = tok(
                ["a street"], padding="max_length", max_length=tok.model_max_length, truncation=True
            ).input_ids
            lengths.add(len(ids[0]))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        encoder = threading.Thread(target=pipeline_encodes)
        encoder.start()
        for _ in range(1500):
            sd15._prompt_warnings("a street", "prompt")
        stop.set()
        encoder.join()
    finally:
        sys.setswitchinterval(interval)
    assert lengths == {tok.model_max_length}


def test_the_api_takes_array_likes_and_numpy_numbers_and_refuses_the_rest_in_one_line(sd15, photo, depth):
    """From a Python user's review: a torch tensor or nested lists as depth crashed inside pathlib; an all-zero or
    negative metric array generated from a blank control image, silently; the result's depth was the caller's own
    buffer (refilled for the next frame, it changed); np.int64(2) images was "not an integer"."""
    from PIL import Image

    from depth2img.errors import Depth2ImgWarning

    values = depth.values.copy()
    ref = sd15.transform(photo, "x", depth=values, depth_polarity="metric", steps=2, seed=0)
    assert not np.shares_memory(ref.depth.values, values) and ref.metadata[0]["depth"]["polarity"] == "metric"
    for like in (torch.from_numpy(values), values.tolist()):
        got = sd15.transform(photo, "x", depth=like, depth_polarity="metric", steps=2, seed=0)
        np.testing.assert_array_equal(got.raw, ref.raw)
    for bad, message in [
        (
            Image.new("I;16", (SIZE, SIZE)),
            "^depth must be a DepthMap, an \\(H, W\\) array or a depth file's path, got",
        ),
        ({"depth": values}, "got dict$"),
        (
            np.zeros_like(values),
            "^depth: no pixel holds a depth \\(all marked invalid, or metric depth all 0\\)$",
        ),
        (-values, f"^depth array: metric depth has {values.size} negative values$"),
    ]:
        with pytest.raises(InputError, match=message):
            sd15.transform(photo, "x", depth=bad, depth_polarity="metric", steps=2, seed=0)
    # a depth without structure is said in the outputs' warnings too (only on stderr, none in the manifest)
    with pytest.warns(
        Depth2ImgWarning, match="^depth array: every depth value is 1, so it carries no structure"
    ):
        flat = sd15.transform(
            photo, "x", depth=np.ones_like(values), depth_polarity="metric", steps=2, seed=0
        )
    assert flat.warnings == flat.metadata[0]["warnings"] and flat.warnings[0].startswith("depth array: every")
    got = sd15.transform(photo, "x", depth=depth, steps=np.int64(2), strength=np.float32(0.5), seed=np.int64(0),
                         num_images=np.int64(2))  # fmt: skip
    assert len(got.images) == 2 and got.metadata[0]["steps"] == 2 and got.seeds == [0, 1]
    # JSON-ready
    assert type(got.metadata[0]["steps"]) is int and type(got.metadata[0]["strength"]) is float


def test_more_api_arguments_are_checked_where_they_are_given(sd15, photo, depth, tmp_path, tiny_dir):
    """From the Python user's review: a seed list with another num_images made as many images as seeds, silently;
    variations(seeds=[]) ran seed 0; a bogus depth_polarity was ignored without a depth file; a misspelt estimator
    failed at the first transform, after the backbone loaded; a presets file given as a string was read letter by
    letter; run(None) was a raw TypeError; every image of a call shared one nested metadata dict."""
    import depth2img
    from depth2img.metrics import geometry_scores

    with pytest.raises(
        InputError, match="^seed is a list of 2 seeds and num_images 3: a seed list makes one image"
    ):
        sd15.transform(photo, "x", depth=depth, seed=[1, 2], num_images=3, steps=2)
    assert len(sd15.transform(photo, "x", depth=depth, seed=[1, 2], num_images=2, steps=2).images) == 2
    with pytest.raises(InputError, match="^seeds is empty"):
        sd15.variations(photo, presets=["rain"], seeds=[], depth=depth, steps=2)
    with pytest.raises(
        InputError, match="^depth_polarity must be one of near-bright, far-bright, metric, got 'bogus'"
    ):
        sd15.transform(photo, "x", depth=depth, depth_polarity="bogus", steps=2)
    with pytest.raises(InputError, match="^depth_polarity metric says how to read a depth; none was given$"):
        sd15.transform(photo, "x", depth_polarity="metric", steps=2)
    with pytest.raises(
        InputError, match="requests must be a list of Request objects from prepare\\(\\), got NoneType"
    ):
        sd15.run(None)
    with pytest.raises(InputError, match="got Request"):
        sd15.run_isolated(sd15.prepare(photo, "x", depth=depth, steps=2))
    with pytest.raises(InputError, match="^seeds must be a list of integers, got int 5$"):
        sd15.prepare(photo, "x", depth=depth, steps=2).with_seeds(5)
    result = sd15.transform(photo, "x", depth=depth, seed=0, num_images=2, steps=2)
    result.metadata[0]["backbone"]["id"] = "edited"
    assert result.metadata[1]["backbone"]["id"] != "edited"
    with pytest.raises(InputError, match="^geometry_scores takes two DepthMaps .*got Image$"):
        depth2img.geometry_scores(depth, result.images[0])
    assert geometry_scores is depth2img.geometry_scores and depth2img.Depth2ImgWarning
    job = depth2img.Job(inputs=tmp_path, output=tmp_path / "out", prompt="x")  # Paths, as from Python
    assert job.inputs == str(tmp_path) and job.output == str(tmp_path / "out")

    def no_load(*args, **kwargs):
        raise AssertionError("the backbone started loading")

    import depth2img.backends as backends

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backends, "load_backend", no_load)
        with pytest.raises(InputError, match="estimator 'depth-anyting-v2-small' is not a registry name"):
            SceneTransformer.from_pretrained("tiny", estimator="depth-anyting-v2-small")
        (tmp_path / "bad.yaml").write_text("presets: 3\n")
        with pytest.raises(InputError, match="bad.yaml: must hold a 'presets:' mapping"):
            SceneTransformer.from_pretrained("tiny", preset_files=str(tmp_path / "bad.yaml"))
    (tmp_path / "mine.yaml").write_text("presets:\n  mine:\n    prompt: '{prompt}, mine'\n")
    assert (
        "mine" in SceneTransformer.from_pretrained("tiny", preset_files=str(tmp_path / "mine.yaml")).presets
    )


def test_a_set_stop_event_ends_a_generation_at_its_step_and_a_grid_at_once(sd15, photo, depth, monkeypatch):
    """The web page's Stop button: inside stop_when_set, a generation ends at the end of the step during which the
    event was set (Stopped, no image); a grid is not halved and run again as a failed batch would be."""
    import threading

    from depth2img.backends import Backend
    from depth2img.errors import InputError, Stopped
    from depth2img.transformer import stop_when_set

    event = threading.Event()
    calls = _count_backend_calls(monkeypatch)
    counted = Backend.__call__

    def set_during_step_two(self, callback, **kwargs):
        def step(pipe, i, t, kw):
            if i == 1:  # (step 2 ends next)
                event.set()
            return callback(pipe, i, t, kw)

        return counted(self, callback=step, **kwargs)

    with stop_when_set(event):
        assert sd15.transform(photo, "x", depth=depth, steps=3, seed=0).images  # not set: runs whole
        with monkeypatch.context() as m:
            m.setattr(Backend, "__call__", set_during_step_two)
            with pytest.raises(Stopped, match=r"^stopped after step 2 of 3; no image was made$"):
                sd15.transform(photo, "x", depth=depth, steps=4, seed=0)  # (strength 0.8: 3 steps)
        freed = []
        pipe_class = type(sd15.backend.pipe)
        monkeypatch.setattr(pipe_class, "maybe_free_model_hooks", lambda self: freed.append(self))
        with pytest.raises(Stopped, match=r"^stopped after step 1 of 4; no image was made$"):  # set before
            sd15.transform(photo, "x", depth=depth, steps=4, strength=1.0, seed=0)
        # the pipeline's release at its end was skipped: the backend's is not (model offload's models leave the GPU)
        assert freed == [sd15.backend.pipe]
        calls.clear()
        with pytest.raises(Stopped, match="^stopped after step 1 of 2"):
            sd15.variations(
                photo, presets=["winter", "rain", "fog"], seeds=[1, 2], depth=depth, steps=2, strength=1.0
            )
        assert calls == [4]  # the first batch, stopped: not split and run again
    assert sd15.transform(photo, "x", depth=depth, steps=2, seed=0).images  # outside the block: not stopped
    with pytest.raises(InputError, match="stop_when_set takes a threading.Event, got bool"):
        with stop_when_set(True):
            pass


def test_a_style_preset_without_a_prompt_names_the_scene_and_empty_preset_names_are_said():
    """A review of presets (2026-11-28): a style preset alone (the CLI takes --preset without --prompt) left its
    template's lead-in dangling ("a watercolor painting of, soft washes"; after winter: "... of in winter"), and
    'winter++night' was "unknown preset ''"."""
    from depth2img.errors import InputError
    from depth2img.presets import resolve

    assert resolve(None, "watercolor")[0] == "a watercolor painting of the scene, soft washes, paper texture"
    assert resolve("  ", "winter+watercolor")[0].startswith("a watercolor painting of the scene, in winter, ")
    assert resolve(None, "winter")[0].startswith("in winter, ")  # no lead-in: no subject added
    assert resolve("a street", "watercolor")[0].startswith("a watercolor painting of a street, ")
    for given in ("winter++night", "+winter", "winter+", "winter+ +night"):
        with pytest.raises(
            InputError, match=rf"^preset '{re.escape(given)}' has an empty name between or beside"
        ):
            resolve("x", given)
