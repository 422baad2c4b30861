"""``depth2img transform`` on many photos, in-process (``run_transform``), model loaded once: images per hour.

    python benchmarks/transform_throughput.py [--model tiny] [--sizes 1 8] [--repeats 2] [--steps 4]
                                              [--torch-threads N]

8 real photos from skimage, resized to 1024x683, 2 images each; depth estimation, denoising and every product
write included. A warm-up run first, then the ``--batch-size`` values interleaved. ``--torch-threads 1`` on a
2-core CPU leaves one core free while torch computes, as a GPU does: it shows what overlapping CPU work with
the denoising can gain where the denoising does not need the CPU.
"""

import argparse
import time

from batch_throughput import PHOTOS, scratch, write_photos  # this folder is on sys.path when the script runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8], help="--batch-size values to compare")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--torch-threads", type=int, default=None)
    args = parser.parse_args()

    import torch

    from depth2img import SceneTransformer
    from depth2img.transform_run import run_transform

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    root = scratch("d2i-transform-")
    write_photos(root / "in")
    st = SceneTransformer.from_pretrained(args.model)
    n = len(PHOTOS) * 2
    print(f"== {len(PHOTOS)} photos of 1024x683 x 2 images, {args.steps} steps, model {args.model}, "
          f"torch threads {torch.get_num_threads()}", flush=True)  # fmt: skip
    for rep in range(args.repeats + 1):  # the first round warms up
        for size in args.sizes:
            started = time.perf_counter()
            report = run_transform([root / "in"], root / f"out-{rep}-{size}", prompt="a city street", model=st,
                                   num_images=2, knobs={"steps": args.steps}, progress=False, batch_size=size)  # fmt: skip
            took = time.perf_counter() - started
            assert report.ok and len(report.done) == len(PHOTOS), report.failed
            if rep:
                print(f"--batch-size {size}: {took:.2f} s, {n * 3600 / took:,.0f} images/hour", flush=True)


if __name__ == "__main__":
    main()
