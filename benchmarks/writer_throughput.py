"""The background writer's ceiling: output PNGs per second through ``BackgroundWriter`` by thread count.

    python benchmarks/writer_throughput.py [--size 1920x1080] [--images 32] [--threads 1 2] [--repeats 2]

A real photo (skimage astronaut) resized to ``--size``, saved ``--images`` times with its metadata as a batch
job saves outputs (``save_png``, zlib level 1, atomic rename), each followed by its manifest line in order. On a
GPU making an image every ~190 ms (19,000 images/hour), one writer thread must stay under that per image.
"""

import argparse
import os
import time
from functools import partial

from batch_throughput import scratch  # this folder is on sys.path when the script runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from PIL import Image
    from skimage import data

    from depth2img.outputs import BackgroundWriter, append_manifest, save_png

    w, h = (int(v) for v in args.size.split("x"))
    photo = Image.fromarray(data.astronaut()).convert("RGB").resize((w, h), Image.LANCZOS)
    root = scratch("d2i-writer-")
    print(f"== {args.images} PNGs of {w}x{h}, {os.cpu_count()} CPU cores", flush=True)
    for rep in range(args.repeats):
        for threads in args.threads:
            out = root / f"{rep}-{threads}"
            started = time.perf_counter()
            with BackgroundWriter(threads=threads) as writer:
                for i in range(args.images):
                    record = {"item": f"x{i}", "seed": i}
                    line = partial(append_manifest, out / "manifest.jsonl", [record])
                    writer.submit(
                        save_png, photo, out / f"x{i}.png", record, in_order=lambda _, line=line: line()
                    )
                writer.flush()
            took = time.perf_counter() - started
            print(f"threads {threads}: {took * 1000 / args.images:.1f} ms per image, "
                  f"{args.images * 3600 / took:,.0f} images/hour", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
