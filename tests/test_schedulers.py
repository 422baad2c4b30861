"""depth2img's UniPC: diffusers' steps bit for bit, without a host wait for the device."""

import diffusers
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from depth2img import tiny
from depth2img.backends import make_scheduler
from depth2img.schedulers import UniPCMultistepScheduler

# diffusers' UniPC options that change the arithmetic of a step ({}: as the SD1.5 pipeline makes it)
OPTIONS = [
    {},
    {"solver_order": 1},
    {"solver_order": 3},
    {"solver_order": 3, "use_karras_sigmas": True},
    {"lower_order_final": False},
    {"solver_type": "bh1", "predict_x0": False},
    {"prediction_type": "v_prediction", "disable_corrector": [2, 5]},
]


def schedulers(**options):
    config = tiny._sd_scheduler().config
    return diffusers.UniPCMultistepScheduler.from_config(
        config, **options
    ), UniPCMultistepScheduler.from_config(config, **options)


def denoise(scheduler, steps, sample):
    """The samples after each step, the model output a fixed function of the sample and timestep."""
    scheduler.set_timesteps(steps)
    out = []
    for t in scheduler.timesteps:
        model_output = torch.tanh(sample * 0.7 + t.item() / 1000)
        sample = scheduler.step(model_output, t, sample).prev_sample
        out.append(sample)
    return out


@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "sd15"
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unipc_steps_equal_diffusers(options, dtype):
    theirs, ours = schedulers(**options)
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    expected, got = denoise(theirs, 12, sample), denoise(ours, 12, sample)
    assert len(got) == 12
    for step, (a, b) in enumerate(zip(expected, got)):
        assert b.dtype == dtype, step
        # (where diffusers' last step with sigma 0 gives inf or NaN, in the same places)
        torch.testing.assert_close(
            b, a, rtol=0, atol=0, equal_nan=True, msg=lambda m, step=step: f"step {step}: {m}"
        )
    assert not torch.equal(got[0], got[-1])
    if not options:  # SD's own ends finite
        assert torch.isfinite(got[-1]).all()


class DeviceWaits(TorchDispatchMode):
    """Operations that would make the host wait for a device (here ``meta``): a copy between it and the CPU, a value
    read back from it, linalg's error check; and ``torch.tensor`` of host data made on it (a copy that the
    dispatcher does not see)."""

    def __init__(self):
        super().__init__()
        self.waits = []
        self.tensor = torch.tensor

    def _tensor(self, *args, device=None, **kwargs):
        if device is not None and torch.device(device).type != "cpu":
            self.waits.append("tensor")
        return self.tensor(*args, device=device, **kwargs)

    def __enter__(self):
        torch.tensor = self._tensor
        return super().__enter__()

    def __exit__(self, *exc):
        torch.tensor = self.tensor
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = {t.device.type for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        outs = {t.device.type for t in tree_leaves(out) if isinstance(t, torch.Tensor)}
        name = func.__name__
        copies = name.startswith(("_to_copy", "copy_", "_copy_from", "lift_fresh")) and len(ins | outs) > 1
        if copies or ("meta" in ins and name.startswith(("_local_scalar_dense", "_linalg_check_errors"))):
            self.waits.append(name)
        return out


@pytest.mark.parametrize("options", [{}, {"solver_order": 3}], ids=["sd15", "order3"])
def test_unipc_steps_never_wait_for_the_device(options):
    theirs, ours = schedulers(**options)
    sample = torch.zeros(2, 4, 8, 8, device="meta")
    for scheduler, expected in ((theirs, True), (ours, False)):
        with DeviceWaits() as mode:
            out = denoise(scheduler, 6, sample)
        assert out[-1].device.type == "meta" and out[-1].shape == sample.shape
        assert bool(mode.waits) == expected, (type(scheduler).__module__, mode.waits)


def test_make_scheduler_gives_depth2img_unipc_and_diffusers_own_when_asked():
    config = tiny._sd_scheduler().config
    assert type(make_scheduler("unipc", config)) is UniPCMultistepScheduler
    assert type(make_scheduler("unipc", config, stock=True)) is diffusers.UniPCMultistepScheduler
    assert type(make_scheduler("ddim", config)) is diffusers.DDIMScheduler
    # a saved config names diffusers' class
    assert '"_class_name": "UniPCMultistepScheduler"' in make_scheduler("unipc", config).to_json_string()
