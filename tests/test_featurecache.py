"""The opt-in feature cache (DeepCache-like): what it runs, what it reuses, that it undoes itself, its refusals."""

import numpy as np
import pytest
import torch

from depth2img.backends import compile_forward
from depth2img.depthmap import DepthMap
from depth2img.errors import InputError
from depth2img.featurecache import swapped_forward, unet_feature_cache
from depth2img.transformer import SceneTransformer

SIZE = 64


@pytest.fixture(scope="module")
def sd15():
    return SceneTransformer.from_pretrained("tiny")


@pytest.fixture(scope="module")
def depth():
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return DepthMap(1.0 + yy + 0.3 * xx, "metric_depth")


@pytest.fixture(scope="module")
def photo(chelsea):
    return chelsea.resize((SIZE, SIZE))


def _latents_per_step(pipe, control, interval, steps=4):
    """Run the raw diffusers pipeline under the cache; latents after each step, and the call counts."""
    seen = []

    def keep(p, i, t, kw):
        seen.append(kw["latents"].clone())
        return kw

    with unet_feature_cache(pipe.unet, interval, pipe.controlnet) as calls:
        pipe("a street", image=control, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
             callback_on_step_end=keep, output_type="np")  # fmt: skip
    return seen, calls


def test_cache_runs_deep_blocks_every_nth_step_and_changes_only_later_steps(sd15, depth):
    sd15.backend.set_scheduler("unipc")  # one UNet call per step (PNDM makes an extra one)
    pipe = sd15.backend.pipes["txt2img"]
    control = sd15.backend.control_tensor([depth])
    full, _ = _latents_per_step(pipe, control, interval=1)
    cached, calls = _latents_per_step(pipe, control, interval=2)
    assert calls.unet == 4 and calls.deep == 2  # steps 0 and 2 run the deep blocks; 1 and 3 reuse them
    assert torch.equal(cached[0], full[0])  # a full step is exactly the uncached computation
    assert not torch.allclose(cached[1], full[1], atol=1e-6)  # a cached step is not: the quality trade
    assert all(torch.isfinite(x).all() for x in cached)
    # everything patched is restored: no instance-level forward left on any module
    assert not [m for m in (*pipe.unet.modules(), pipe.controlnet) if "forward" in m.__dict__]
    again, _ = _latents_per_step(pipe, control, interval=1)
    assert all(torch.equal(a, b) for a, b in zip(again, full))


def test_cache_through_the_api_skips_controlnet_and_is_recorded(sd15, photo, depth):
    base = sd15.transform(photo, "a street", depth=depth, seed=1, steps=6, strength=1.0)
    same = sd15.transform(photo, "a street", depth=depth, seed=1, steps=6, strength=1.0, feature_cache=1)
    assert np.abs(same.raw - base.raw).max() == 0.0
    sd15.backend.controlnet_counter.calls = 0
    fast = sd15.transform(photo, "a street", depth=depth, seed=1, steps=6, strength=1.0, feature_cache=3)
    assert sd15.backend.cache_calls.deep == 2 and sd15.backend.controlnet_counter.calls == 2  # steps 0 and 3
    assert fast.metadata[0]["feature_cache"] == 3 and base.metadata[0]["feature_cache"] == 1
    assert fast.raw.shape == base.raw.shape and 0 < np.abs(fast.raw - base.raw).max() <= 1
    # with a guidance window, the switched-off ControlNet stays off on cached steps (its scale-0 call is skipped)
    sd15.backend.controlnet_counter.calls = 0
    sd15.transform(
        photo, "a street", depth=depth, seed=1, steps=6, strength=1.0, feature_cache=2, control_end=0.5
    )
    assert sd15.backend.controlnet_counter.calls == 2  # steps 0 and 2 run it; 1 reuses; 3-5 are outside


def test_cache_works_for_sd2_and_sdxl(photo, depth):
    for name in ("tiny/sd2-depth", "tiny/sdxl-depth"):
        st = SceneTransformer.from_pretrained(name)
        base = st.transform(photo, "a street", depth=depth, seed=1, steps=4, strength=0.99)
        fast = st.transform(photo, "a street", depth=depth, seed=1, steps=4, strength=0.99, feature_cache=2)
        assert st.backend.cache_calls.deep == 2, name
        assert np.isfinite(fast.raw).all() and np.abs(fast.raw - base.raw).max() > 0, name


@pytest.mark.parametrize("value", [0, 11, 2.5, True, "3"])
def test_bad_interval_is_refused(sd15, photo, depth, value):
    with pytest.raises(
        InputError, match=f"feature_cache must be an integer in 1..10 \\(1 = off\\), got {value!r}"
    ):
        sd15.transform(photo, "a street", depth=depth, steps=2, feature_cache=value)


def test_refused_for_flux_and_with_compile(photo, depth, sd15):
    flux = SceneTransformer.from_pretrained("tiny/flux-depth")
    with pytest.raises(InputError, match="feature_cache: backbone 'tiny/flux-depth' .* has no UNet to cache"):
        flux.transform(photo, "a street", depth=depth, steps=2, strength=1.0, feature_cache=2)
    unet = sd15.backend.pipe.unet
    unet.compile()  # lazy: nothing is compiled until a call
    try:
        with pytest.raises(InputError, match="feature_cache does not combine with torch.compile"):
            with unet_feature_cache(unet, 2):
                pass
    finally:
        unet._compiled_call_impl = None
    layer = torch.nn.Linear(2, 2)  # compiled the way the fast path compiles (its forward, lazily)
    compile_forward(layer, "default")
    with pytest.raises(InputError, match="feature_cache does not combine with torch.compile"):
        with unet_feature_cache(layer, 2):
            pass


def test_swapped_forward_nests_and_unwinds_in_any_order():
    layer = torch.nn.Linear(2, 2)
    x = torch.ones(1, 2)
    ref = layer(x)
    with swapped_forward(layer, lambda f: lambda x: f(x) + 1):
        with swapped_forward(layer, lambda f: lambda x: f(x) * 10):
            assert torch.equal(layer(x), (ref + 1) * 10)
        assert torch.equal(layer(x), ref + 1)
    assert torch.equal(layer(x), ref) and "forward" not in layer.__dict__
    with pytest.raises(RuntimeError), swapped_forward(layer, lambda f: lambda x: f(x) + 1):
        raise RuntimeError("boom")
    assert "forward" not in layer.__dict__
