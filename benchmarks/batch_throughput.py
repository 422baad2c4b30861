"""Dataset-run throughput by denoising batch size, models loaded once (steady state, no start-up in the figure).

    python benchmarks/batch_throughput.py [--model tiny] [--sizes 1 8] [--repeats 2] [--steps 4] [--only TEXT]
                                          [--photo-size 1024x683]

8 real photos from skimage, resized to ``--photo-size``, through ``depth2img.batch.run_job`` with two jobs: 4 prompt
variations x 1 seed (before batching across variations each output was its own pipeline call), 2 presets x
4 seeds, and 1 preset x 1 seed (a whole sequence made rainy: one source depth per output). A warm-up run first, then the sizes interleaved; prints the summary line of each run. Outputs go to a
temporary folder, removed at exit. Any registry model works (``--model sd15-depth`` on a GPU, with its weights downloaded).
"""

import argparse
import atexit
import shutil
import tempfile
from pathlib import Path

JOBS = {
    "4 variations x 1 seed": {"matrix": {"template": "a city street, {time}, {weather}",
                                         "axes": {"time": ["at noon", "at night"], "weather": ["rain", "snow"]}},
                              "seeds": 1},
    "2 presets x 4 seeds": {"presets": ["winter", "rain"], "seeds": 4},
    "1 preset x 1 seed": {"presets": ["rain"], "seeds": 1},
}  # fmt: skip
PHOTOS = [
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "cat",
]


def scratch(prefix: str) -> Path:
    """A new temporary folder, removed when the script exits (these scripts write hundreds of MB of outputs)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def write_photos(folder: Path, size: str = "1024x683") -> None:
    """The real skimage photos of ``PHOTOS``, resized to ``size`` (WxH), as PNGs in ``folder`` (made here)."""
    from PIL import Image
    from skimage import data

    w, h = (int(v) for v in size.split("x"))
    folder.mkdir(parents=True)
    for name in PHOTOS:
        photo = Image.fromarray(getattr(data, name)()).convert("RGB").resize((w, h), Image.LANCZOS)
        photo.save(folder / f"{name}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8], help="batch_size values to compare")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--only", default="", help="run the jobs whose title contains this text")
    parser.add_argument(
        "--photo-size", default="1024x683", help="the photos' size, WxH (1920x1080: driving footage)"
    )
    args = parser.parse_args()

    from depth2img.batch import Job, run_job
    from depth2img.service import Service

    root = scratch("d2i-throughput-")
    write_photos(root / "in", args.photo_size)
    service = Service(model=args.model, device=None)
    for title, spec in ((t, s) for t, s in JOBS.items() if args.only in t):
        print(
            f"== {title}, {len(PHOTOS)} photos of {args.photo_size}, {args.steps} steps, model {args.model}",
            flush=True,
        )
        for rep in range(args.repeats + 1):  # the first round warms up
            for size in args.sizes:
                out = root / f"out-{rep}-{size}-{len(title)}"
                job = Job(inputs="in", output=str(out), model=args.model, knobs={"steps": args.steps, "strength": 0.75},
                          batch_size=size, base_dir=str(root), **spec)  # fmt: skip
                report = run_job(job, progress=False, service=service)
                if rep:
                    print(f"batch_size {size}: {report.summary()}", flush=True)


if __name__ == "__main__":
    main()
