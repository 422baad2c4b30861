"""``DepthMap``: one depth image that knows what its numbers mean and which pixels are valid."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import conditioning
from .errors import InputError


@dataclass
class DepthMap:
    """A (H, W) float32 depth image.

    ``kind`` is one of ``conditioning.KINDS``; ``valid`` marks pixels with a measurement (stereo holes,
    sky, sensor dropouts are False; their ``values`` hold a fill). ``source`` says where it came from.
    ``notes``: what a reader warned of while making it (a file's recorded polarity kept over the one given), for a
    caller that shows warnings itself (the web page); not part of its provenance (``meta``).
    """

    values: np.ndarray
    kind: str
    valid: np.ndarray | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        raw = np.asarray(self.values)
        real = raw.dtype == bool or np.issubdtype(raw.dtype, np.number)
        if not real or np.issubdtype(raw.dtype, np.complexfloating):
            # strings raised numpy's own error; complex values lost their imaginary part
            raise InputError(f"depth values must be real numbers, got dtype {raw.dtype}")
        # its own copy: a caller refilling its buffer for the next frame changed an earlier result's depth
        self.values = raw.astype(np.float32)
        if self.values.ndim != 2 or min(self.values.shape) < 1:
            raise InputError(f"depth must be a 2-D (H, W) array, got shape {self.values.shape}")
        if not (isinstance(self.kind, str) and self.kind in conditioning.KINDS):
            raise InputError(f"depth kind must be one of {sorted(conditioning.KINDS)}, got {self.kind!r}")
        if self.valid is None:
            self.valid = np.ones(self.values.shape, bool)
        self.valid = np.array(self.valid, bool)
        if self.valid.shape != self.values.shape:
            raise InputError(
                f"depth mask shape {self.valid.shape} differs from depth shape {self.values.shape}"
            )
        bad = ~np.isfinite(self.values) & self.valid
        if bad.any():
            raise InputError(f"depth has {int(bad.sum())} NaN or infinite values at pixels marked valid")

    @property
    def height(self) -> int:
        return self.values.shape[0]

    @property
    def width(self) -> int:
        return self.values.shape[1]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL reports image sizes."""
        return self.width, self.height

    def inverse(self) -> np.ndarray:
        """Near = large values (inverse depth or disparity), float64; invalid pixels hold the farthest valid value."""
        return conditioning.to_inverse(self.values, self.kind, self.valid)[0]

    def normalized(self) -> np.ndarray:
        """[0, 1], near = 1, min-max over this image's valid pixels only. Made once per DepthMap (read-only): the
        control image, the 16-bit PNG and the preview of one output had each made it again."""
        return self._normalized

    @cached_property
    def _normalized(self) -> np.ndarray:
        inverse, valid = conditioning.to_inverse(self.values, self.kind, self.valid)
        normalized = conditioning.normalize(inverse, valid)
        normalized.flags.writeable = False
        return normalized

    def resized(self, width: int, height: int) -> DepthMap:
        """This depth at another size (bicubic for values, nearest for the mask). Holes (invalid pixels, metric
        zeros) take their nearest valid value before resizing, so none of them bleeds into the valid pixels."""
        for name, side in (("width", width), ("height", height)):  # raw cv2 errors for 0, -5 or 48.5
            if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or side < 1:
                raise InputError(f"resized: {name} must be a whole number of pixels >= 1, got {side!r}")
        from .io import pixel_limit

        if width * height > pixel_limit():  # (cv2's "Insufficient memory", or the machine's)
            raise InputError(
                f"resized: {width}x{height} is over the pixel limit {pixel_limit()} (DEPTH2IMG_MAX_PIXELS)"
            )
        if self.valid.all() and (self.kind != "metric_depth" or self.values.min() > 0):
            values, valid = self.values, self.valid  # the usual case: no hole (marked valid means finite)
        else:
            valid = conditioning.usable(self.values, self.kind, self.valid)
            values = self.values if valid.all() else conditioning.fill_unusable(self.values, valid)
        values = conditioning.resize_depth(values, height, width)
        valid = conditioning.resize_depth(valid, height, width, nearest=True)
        return DepthMap(values, self.kind, valid, self.source, dict(self.meta), list(self.notes))

    def control_image(self, width: int | None = None, height: int | None = None) -> np.ndarray:
        """ControlNet conditioning: (H, W, 3) float32 in [0, 1], near = white, normalised per image."""
        if (width is None) != (height is None):
            raise InputError(
                f"control_image: give both width and height or neither, got {width!r} and {height!r}"
            )
        depth = self if width is None else self.resized(width, height)
        return conditioning.control_array(depth.normalized())

    @cached_property
    def control_pil(self):
        """``control_image()`` as an 8-bit PIL RGB image at this size, made once per DepthMap (a DepthMap's values
        are never changed after it is made): the rows of a variations grid share one."""
        from PIL import Image

        return Image.fromarray(np.round(self.control_image() * 255).astype(np.uint8), "RGB")

    def sd2_depth(self, height: int, width: int, vae_scale_factor: int):
        """SD2-depth's [-1, 1] latent-size depth channel, as diffusers' ``prepare_depth_map`` would make it."""
        return conditioning.sd2_depth(self.inverse(), height, width, vae_scale_factor)

    def to_uint16(self) -> np.ndarray:
        """Full-range 16-bit near = bright encoding (what the 16-bit PNG holds)."""
        return np.round(self.normalized().astype(np.float64) * 65535.0).astype(np.uint16)
