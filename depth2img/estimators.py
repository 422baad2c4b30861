"""Monocular depth estimators through transformers (Depth Anything V2, DPT/MiDaS, ZoeDepth).

Same preprocessing, model call and post-processing as ``transformers.pipeline("depth-estimation")``,
but batched (images whose preprocessed tensors share a shape run together) and always resized back
to each input's exact size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .depthmap import DepthMap
from .errors import (
    Depth2ImgError,
    GenerationError,
    InputError,
    ModelLoadError,
    cause_line,
    first_line,
    float16_hint,
)
from .io import check_image, to_rgb
from .knobs import check_batch_size
from .loading import (
    ESTIMATOR_FILES,
    LOAD_ERRORS,
    from_pretrained_checked,
    quiet_log,
    require_files,
    require_safetensors,
    resolve_device,
    resolve_dtype,
    snapshot,
    unreadable_weights,
    use_safetensors,
)
from .registry import ModelRef, resolve_estimator

# model_type -> what its output means, for models given by hub id or folder rather than registry name
OUTPUT_BY_MODEL_TYPE = {"depth_anything": "relative_inverse_depth", "dpt": "relative_inverse_depth",
                        "glpn": "metric_depth", "zoedepth": "metric_depth"}  # fmt: skip


def output_kind(config) -> str | None:
    """What a transformers depth model gives, from its config. Depth Anything's metric checkpoints
    (``depth_estimation_type: metric``, e.g. Depth-Anything-V2-Metric-Outdoor-*-hf) give metres, its relative ones
    inverse depth: read as inverse depth, a metric map's near and far were swapped."""
    if (
        config.model_type == "depth_anything"
        and getattr(config, "depth_estimation_type", "relative") == "metric"
    ):
        return "metric_depth"
    return OUTPUT_BY_MODEL_TYPE.get(config.model_type)


class DepthEstimator:
    """A loaded depth model with its image processor; call it on PIL images to get ``DepthMap``s."""

    def __init__(self, model, processor, *, kind: str, name: str, ref: ModelRef | None = None):
        self.model = model
        self.processor = processor
        self.kind = kind
        self.name = name
        self.ref = ref

    @property
    def device(self):
        return self.model.device

    @property
    def dtype(self):
        return self.model.dtype

    @property
    def provenance(self) -> dict:
        """What made a depth, as outputs record it beside its source name: the weights' id, revision and dtype."""
        ref = self.ref
        return {"id": ref and ref.location, "revision": ref and ref.revision,
                "dtype": str(self.dtype).replace("torch.", "")}  # fmt: skip

    @classmethod
    def from_pretrained(cls, name=None, *, device=None, dtype=None, local_files_only: bool = False):
        """Load a registry name (default ``depth-anything-v2-small``), ``tiny``, a hub id or a local folder."""
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForDepthEstimation

        ref = resolve_estimator(name)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        path, ref = snapshot(ref, local_files_only=local_files_only, allow_patterns=ESTIMATOR_FILES)
        require_safetensors(path, ref)
        # (a backbone's folder, as an incomplete estimator's, was "Unrecognized model ... Should have a model_type key")
        if (path / "model_index.json").is_file():
            raise ModelLoadError(f"{ref.kind} {ref.name!r} at {path} holds a diffusers pipeline (model_index.json), "
                                 "not a depth estimator; give it as the backbone (--model)")  # fmt: skip
        at = f"{ref.kind} {ref.name!r} at {path}"
        # (transformers said "Unrecognized model in ... Should have a `model_type` key in its config.json")
        require_files(path, at, ref, ["config.json"], ESTIMATOR_FILES)
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
            kind = ref.entry.output if ref.entry else output_kind(config)
            # the entry's output kind holds only for the model it names (a ZoeDepth cached in Depth Anything's place
            # was read as inverse depth, near and far swapped, and a DPT ran silently)
            found = config.model_type
            if ref.entry and (found != ref.entry.model_type or output_kind(config) != kind):
                what = f"{found!r} model" + (
                    "" if found != ref.entry.model_type else f" giving {output_kind(config)}"
                )
                raise ModelLoadError(
                    f"{ref.kind} {ref.label} at {path} holds a {what}, not the {ref.entry.model_type!r} model "
                    f"giving {kind} that {ref.entry.name!r} names"
                )
            if kind is None:
                raise ModelLoadError(
                    f"{ref.kind} {ref.name!r} is a {config.model_type!r} model, not a known depth estimator "
                    f"({', '.join(OUTPUT_BY_MODEL_TYPE)})"
                )
            # (once the model is known a depth model: transformers said "Can't load image processor ... make sure you
            # don't have a local directory with the same name")
            require_files(path, at, ref, ["preprocessor_config.json"], ESTIMATOR_FILES)
            with quiet_log("transformers"):  # its PIL fallback's warning: see loading.library_class
                processor = AutoImageProcessor.from_pretrained(
                    path, local_files_only=True, trust_remote_code=False
                )
            model = from_pretrained_checked(
                AutoModelForDepthEstimation,
                path,
                f"{ref.kind} {ref.name!r} at {path}: its weights file",
                local_files_only=True,
                use_safetensors=use_safetensors(),
                trust_remote_code=False,
                dtype=dtype,
            )
        except ModelLoadError:
            raise
        except LOAD_ERRORS as err:
            damaged = unreadable_weights(path, err)
            raise ModelLoadError(
                f"{ref.kind} {ref.name!r} at {path}: {damaged}"
                if damaged
                else f"{ref.kind} {ref.name!r} at {path} could not be loaded: {cause_line(err)}"
            ) from None
        if not hasattr(processor, "post_process_depth_estimation"):
            raise ModelLoadError(
                f"{ref.kind} {ref.name!r}: {type(processor).__name__} has no depth post-processing"
            )
        model.to(device).eval()
        return cls(model, processor, kind=kind, name=ref.name, ref=ref)

    @property
    def default_batch_size(self) -> int:
        """8 on a GPU, 1 on CPU (`depth2img bench --depth`, full-size Depth Anything V2 S/B/L on a 2-core x86_64:
        batches of 4 were 10-23 % slower per image than one at a time)."""
        return 1 if self.device.type == "cpu" else 8

    def __call__(self, images, batch_size: int | None = None, progress=None) -> list[DepthMap]:
        """Estimate depth for one PIL image or a list; returns one DepthMap per image at its exact size.

        ``batch_size`` None: ``default_batch_size``."""
        import torch

        batch_size = self.default_batch_size if batch_size is None else check_batch_size(batch_size)
        single = isinstance(images, str) or not isinstance(images, Sequence)
        images = [images] if single else list(images)
        names = ["image"] if single else [f"images[{i}]" for i in range(len(images))]
        images = [to_rgb(check_image(im, name)) for im, name in zip(images, names)]
        inputs = [self._pixel_values(img, name) for img, name in zip(images, names)]
        results: list[DepthMap | None] = [None] * len(images)
        order = sorted(range(len(images)), key=lambda i: tuple(inputs[i].shape))
        batches: list[list[int]] = []
        for i in order:
            if batches and inputs[batches[-1][0]].shape == inputs[i].shape and len(batches[-1]) < batch_size:
                batches[-1].append(i)
            else:
                batches.append([i])
        for batch in batches:
            pixel_values = torch.cat([inputs[i] for i in batch]).to(self.device, self.dtype)
            sizes = [images[i].size[::-1] for i in batch]  # (height, width)
            with torch.inference_mode():
                outputs = self.model(pixel_values=pixel_values)
            outputs.predicted_depth = outputs.predicted_depth.float()
            depths = self._post_process(outputs, sizes)
            for i, depth, (h, w) in zip(batch, depths, sizes):
                values = depth.detach().cpu().numpy().astype(np.float32)
                assert values.shape == (h, w), (values.shape, (h, w))
                broken = int((~np.isfinite(values)).sum())
                if broken:  # DepthMap's own message would speak of "pixels marked valid"
                    hint = float16_hint(self.dtype, "--dtype, the API's dtype=")
                    raise GenerationError(
                        f"{names[i]}: estimator {self.name!r} gave {broken} NaN or infinite depth values{hint}"
                    )
                results[i] = DepthMap(values, self.kind, source=self.name, meta=self.provenance)
            if progress is not None:
                progress(len(batch))
        return results[0] if single else results

    def isolated(self, images: list, batch_size: int | None = None, progress=None) -> list:
        """One DepthMap per image, or in its place the Depth2ImgError that image alone raises: the images run
        batched; if the estimator refuses the batch (every image is checked before any is estimated), each runs
        alone, so an error is its own image's and the others are still estimated."""
        counted = 0  # images the batched try reported before it failed: not reported twice

        def count(n):
            nonlocal counted
            counted += n
            if progress is not None:
                progress(n)

        try:
            return self(images, batch_size=batch_size, progress=count)
        except Depth2ImgError:
            pass
        results = []
        for k, image in enumerate(images):
            try:
                results.append(self(image))
            except Depth2ImgError as err:
                results.append(err)
            if progress is not None and k >= counted:
                progress(1)
        return results

    def _pixel_values(self, image, name: str):
        try:
            return self.processor(images=image, return_tensors="pt")["pixel_values"]
        # a side its resizing rounds to 0 px, on a very elongated image
        except (ValueError, RuntimeError) as err:
            raise InputError(
                f"{name}: {image.size[0]}x{image.size[1]} cannot be resized for estimator {self.name!r}, whose "
                f"input is {_input_size(self.processor)}: try a less elongated image (transformers: {first_line(err)})"
            ) from None

    def _post_process(self, outputs, sizes):
        if self.model.config.model_type != "zoedepth":
            return [
                r["predicted_depth"]
                for r in self.processor.post_process_depth_estimation(outputs, target_sizes=sizes)
            ]
        try:
            import torchvision  # noqa: F401  transformers' ZoeDepth post-processing needs it
        except ImportError:
            return _zoe_post_process(outputs.predicted_depth, sizes, do_remove_padding=self.processor.do_pad)
        results = self.processor.post_process_depth_estimation(
            outputs, source_sizes=sizes, target_sizes=sizes
        )
        return [r["predicted_depth"] for r in results]


def _input_size(processor) -> str:
    size = getattr(processor, "size", None) or {}
    return f"{size['width']}x{size['height']}" if "width" in size and "height" in size else str(dict(size))


def _zoe_post_process(predicted_depth, sizes, *, do_remove_padding: bool):
    """transformers' ZoeDepth post-processing (remove the reflect padding, resize to the source), with
    torch's bicubic interpolation in place of torchvision's tensor resize (the same operation)."""
    import torch

    results = []
    for depth, (h, w) in zip(predicted_depth.unsqueeze(1), sizes):
        pad_h = int(np.sqrt(h / 2) * 3) if do_remove_padding else 0
        pad_w = int(np.sqrt(w / 2) * 3) if do_remove_padding else 0
        depth = torch.nn.functional.interpolate(
            depth[None], size=(h + 2 * pad_h, w + 2 * pad_w), mode="bicubic", align_corners=False
        )[0]
        depth = depth[:, pad_h : pad_h + h, pad_w : pad_w + w]
        results.append(depth.squeeze(0))
    return results
