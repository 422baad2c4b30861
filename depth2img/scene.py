"""A small procedural renderer of a driving-like scene with exact ground truth.

A pinhole camera 1.5 m above a flat road looks down the road; cars and buildings are axis-aligned
boxes, ray-cast per pixel. It returns the RGB image, its exact metric z-depth, a semantic mask, an
instance mask and 2-D boxes (COCO ``[x, y, w, h]``): tests, the notebook and the dataset tools use it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from .depthmap import DepthMap
from .errors import InputError

CLASSES = ("sky", "road", "car", "building")  # semantic ids 0..3
CAMERA_HEIGHT_M = 1.5
ROAD_END_M = 300.0  # the road plane stops here; farther rays see sky
MIN_BOX_PIXELS = 20  # instances with fewer visible pixels get no 2-D box
# width, height by default: also the app's sample and the first of its warm-up requests
SCENE_SIZE = (640, 320)


@dataclass
class Scene:
    image: object  # PIL RGB
    depth: DepthMap  # metric z-depth in metres; sky is invalid (infinitely far)
    semantic: np.ndarray  # (H, W) uint8, index into CLASSES
    instances: np.ndarray  # (H, W) int32, 0 = no object, else instance id
    boxes: list[dict] = field(default_factory=list)  # {"id", "label", "bbox": [x, y, w, h]}


def _boxes(rng: np.random.Generator, n_cars: int, n_buildings: int):
    """(label, (x0, x1, y0, y1, z0, z1)) in camera-centred metres, y up from the road."""
    objects = []
    lanes = [-1.8, 1.8, 5.4]
    for _ in range(n_cars):
        x = rng.choice(lanes) + rng.uniform(-0.3, 0.3)
        z = rng.uniform(7.0, 45.0)
        w, h, ln = rng.uniform(1.7, 2.0), rng.uniform(1.4, 1.8), rng.uniform(3.8, 4.8)
        objects.append(("car", (x - w / 2, x + w / 2, 0.0, h, z, z + ln)))
    for i in range(n_buildings):
        side = -1 if i % 2 == 0 else 1
        x_near = side * rng.uniform(9.0, 12.0)
        width = rng.uniform(6.0, 10.0)
        z = 8.0 + (i // 2) * 16.0 + rng.uniform(0, 4)
        h = rng.uniform(8.0, 25.0)
        xs = sorted((x_near, x_near + side * width))
        objects.append(("building", (xs[0], xs[1], 0.0, h, z, z + rng.uniform(8.0, 14.0))))
    return objects


def render_driving_scene(width: int = SCENE_SIZE[0], height: int = SCENE_SIZE[1], *, seed: int = 0, n_cars: int = 4,
                         n_buildings: int = 6, fov_deg: float = 70.0) -> Scene:  # fmt: skip
    """Render the scene at ``width`` x ``height``; the same seed gives the same scene."""
    from PIL import Image

    from .io import MAX_ASPECT, MIN_SIDE
    from .knobs import check_seed

    def whole(value, lo: int, hi: int) -> bool:
        return not isinstance(value, bool) and isinstance(value, numbers.Integral) and lo <= value <= hi

    for name, value in (("width", width), ("height", height)):
        if not whole(value, MIN_SIDE, 8192):
            raise InputError(f"{name} must be an integer in {MIN_SIDE}..8192, got {value!r}")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise InputError(f"width x height {width}x{height} is narrower than 1:{MAX_ASPECT}")
    seed = check_seed(seed)
    for name, value in (("n_cars", n_cars), ("n_buildings", n_buildings)):
        if not whole(value, 0, 64):
            raise InputError(f"{name} must be an integer in 0..64, got {value!r}")
    # fov_deg 0 rendered a scene 300 m deep everywhere
    if isinstance(fov_deg, bool) or not isinstance(fov_deg, numbers.Real) or not 10 <= fov_deg <= 150:
        raise InputError(f"fov_deg must be in [10, 150] degrees, got {fov_deg!r}")
    width, height = int(width), int(height)
    rng = np.random.default_rng(seed)
    f = (width / 2) / np.tan(np.radians(fov_deg) / 2)
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    dx, dy = (u - width / 2) / f, -(v - height / 2) / f  # ray direction (dx, dy, 1): t is the z-depth
    depth = np.full((height, width), np.inf)
    semantic = np.zeros((height, width), np.uint8)
    instances = np.zeros((height, width), np.int32)
    normal_axis = np.full((height, width), -1)

    with np.errstate(divide="ignore", invalid="ignore"):
        t_road = np.where(dy < 0, CAMERA_HEIGHT_M / -dy, np.inf)
    road = t_road < ROAD_END_M
    depth[road] = t_road[road]
    semantic[road] = 1

    objects = _boxes(rng, n_cars, n_buildings)
    origin = np.array([0.0, CAMERA_HEIGHT_M, 0.0])
    dirs = (dx, dy, np.ones_like(dx))
    for inst, (label, (x0, x1, y0, y1, z0, z1)) in enumerate(objects, start=1):
        with np.errstate(divide="ignore", invalid="ignore"):
            ts = []
            for axis, (lo, hi) in enumerate(((x0, x1), (y0, y1), (z0, z1))):
                a = (lo - origin[axis]) / dirs[axis]
                b = (hi - origin[axis]) / dirs[axis]
                ts.append((np.minimum(a, b), np.maximum(a, b)))
        near = np.stack([t[0] for t in ts])
        t_near = np.nanmax(near, axis=0)
        t_far = np.nanmin(np.stack([t[1] for t in ts]), axis=0)
        hit = (t_near <= t_far) & (t_near > 0) & (t_near < depth)
        depth[hit] = t_near[hit]
        semantic[hit] = CLASSES.index(label)
        instances[hit] = inst
        normal_axis[hit] = np.nanargmax(near, axis=0)[hit]

    # Shading: flat colours per class, lit by face orientation, faded into haze with distance.
    sky_top, sky_horizon = np.array([70, 120, 200.0]), np.array([190, 210, 235.0])
    ramp = np.clip(v / (height / 2), 0, 1)[..., None]
    rgb = sky_top * (1 - ramp) + sky_horizon * ramp
    colours = {1: np.array([85, 85, 90.0]), 3: np.array([170, 155, 135.0])}
    car_palette = rng.uniform(30, 230, size=(len(objects) + 1, 3))
    light = {0: 0.75, 1: 1.0, 2: 0.9, -1: 1.0}
    for cls in (1, 2, 3):
        m = semantic == cls
        if not m.any():
            continue
        base = car_palette[instances[m]] if cls == 2 else np.broadcast_to(colours[cls], (int(m.sum()), 3))
        shade = np.vectorize(light.get)(normal_axis[m])[:, None]
        rgb[m] = base * shade
    z_road = np.where(np.isfinite(depth), depth, 0.0)
    x_road = dx * z_road
    dashes = (semantic == 1) & (np.abs(x_road) < 0.08) & ((z_road % 6.0) < 3.0)
    rgb[dashes] = 235.0
    windows = (semantic == 3) & ((v.astype(int) // 6) % 3 == 0) & ((u.astype(int) // 5) % 3 == 0)
    rgb[windows] *= 0.55
    finite = np.isfinite(depth)
    haze = np.where(finite, 1 - np.exp(-np.where(finite, depth, 0) / 250.0), 0)[..., None]
    rgb = rgb * (1 - haze) + sky_horizon * haze
    rgb += rng.normal(0, 3.0, rgb.shape)  # sensor-like noise so the image is not flat
    image = Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8), "RGB")

    boxes = []
    for inst, (label, _) in enumerate(objects, start=1):
        ys, xs = np.nonzero(instances == inst)
        if len(xs) >= MIN_BOX_PIXELS:
            x, y = int(xs.min()), int(ys.min())
            boxes.append(
                {"id": inst, "label": label, "bbox": [x, y, int(xs.max()) - x + 1, int(ys.max()) - y + 1]}
            )
    depth_map = DepthMap(np.where(finite, depth, ROAD_END_M).astype(np.float32), "metric_depth", finite,
                         source="procedural-scene", meta={"seed": seed, "focal_px": float(f)})  # fmt: skip
    return Scene(image, depth_map, semantic, instances, boxes)
