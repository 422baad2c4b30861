"""Shared fixtures: tiny random-weight models written once per session, offline hub, real photos from skimage."""

import os
import shutil
import tempfile

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # the tests never reach the network


def pytest_configure(config):
    """Importing diffusers makes torch create /tmp/torchinductor_$USER for its compile caches: the tests' go to a
    folder of their own, removed at the end (before any test module imports diffusers)."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        config._depth2img_inductor = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(
            prefix="depth2img-tests-inductor-"
        )


def pytest_unconfigure(config):
    folder = getattr(config, "_depth2img_inductor", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)


@pytest.fixture(scope="session", autouse=True)
def tiny_dir(tmp_path_factory):
    """Every tiny model in the hub layout, loaded by the registry names tiny / tiny/<entry>."""
    from depth2img import tiny

    root = tmp_path_factory.mktemp("tiny-models")
    tiny.write_all(root)
    old = os.environ.get("DEPTH2IMG_TINY_DIR")
    os.environ["DEPTH2IMG_TINY_DIR"] = str(root)
    yield root
    if old is None:
        os.environ.pop("DEPTH2IMG_TINY_DIR", None)
    else:
        os.environ["DEPTH2IMG_TINY_DIR"] = old


@pytest.fixture(scope="session")
def chelsea():
    """A real photo of an awkward size (451x300)."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.chelsea())


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory, chelsea):
    from PIL import Image
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    chelsea.save(d / "chelsea.png")
    Image.fromarray(data.coffee()).save(d / "coffee.jpg", quality=95)
    return d


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile with dynamo's eager backend: the models are traced for real, without inductor's minute of
    code generation on CPU. Yields the modes asked for."""
    import torch
    import torch._dynamo

    real, modes = torch.compile, []

    def compile_(
        fn, *, mode=None, options=None, **kwargs
    ):  # options: inductor's, for a mode that is a set of them
        modes.append(mode if options is None else options)
        return real(fn, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_)
    yield modes
    torch._dynamo.reset()
