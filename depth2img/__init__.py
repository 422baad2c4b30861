"""depth2img: change a photo's style, lighting, season or weather with a prompt while keeping its geometry.

Heavy dependencies (torch, diffusers, transformers) load only when a name that needs them is used.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "DepthMap": ".depthmap",
    "DepthEstimator": ".estimators",
    "stereo_depth": ".stereo",
    "load_image": ".io",
    "read_depth_file": ".io",
    "write_depth_products": ".io",
    "render_driving_scene": ".scene",
    "run_depth": ".depth_run",
    "Depth2ImgError": ".errors",
    "Depth2ImgWarning": ".errors",
    "GenerationError": ".errors",
    "InputError": ".errors",
    "ModelLoadError": ".errors",
    "OutOfMemory": ".errors",
    "Stopped": ".errors",
    "SceneTransformer": ".transformer",
    "TransformResult": ".transformer",
    "Request": ".transformer",
    "Sized": ".transformer",
    "write_transform_result": ".outputs",
    "geometry_scores": ".metrics",
    "run_transform": ".transform_run",
    "Job": ".batch",
    "load_job": ".batch",
    "run_job": ".batch",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'depth2img' has no attribute {name!r}")
