"""``depth2img depth`` on a folder of photos, in-process (``run_depth``), estimator loaded once: images per hour.

    python benchmarks/depth_throughput.py [--estimator tiny] [--copies 4] [--repeats 2] [--torch-threads N]
                                          [--formats png16 npy preview]

The 8 real skimage photos of ``batch_throughput.PHOTOS`` at 1024x683, ``--copies`` times each (32 images by
default), read, estimated and written (every product chosen by ``--formats``). A warm-up run first.
``--torch-threads 1`` on a 2-core CPU leaves one core free while torch computes, as a GPU does.
"""

import argparse
import shutil
import time

from batch_throughput import PHOTOS, scratch, write_photos  # this folder is on sys.path when the script runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--estimator", default="tiny")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--formats", nargs="+", default=["png16", "npy", "preview"])
    args = parser.parse_args()

    import torch

    from depth2img.depth_run import run_depth
    from depth2img.estimators import DepthEstimator

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    root = scratch("d2i-depth-")
    write_photos(root / "photos")
    (root / "in").mkdir()
    for c in range(args.copies):
        for p in (root / "photos").iterdir():
            shutil.copy(p, root / "in" / f"{p.stem}-{c}{p.suffix}")
    estimator = DepthEstimator.from_pretrained(args.estimator)
    n = len(PHOTOS) * args.copies
    print(f"== {n} photos of 1024x683, estimator {args.estimator}, formats {' '.join(args.formats)}, "
          f"torch threads {torch.get_num_threads()}", flush=True)  # fmt: skip
    for rep in range(args.repeats + 1):  # the first round warms up
        started = time.perf_counter()
        report = run_depth([root / "in"], root / f"out-{rep}", estimator=estimator, formats=args.formats,
                           progress=False)  # fmt: skip
        took = time.perf_counter() - started
        assert report.ok and len(report.done) == n, report.failed
        if rep:
            print(f"depth: {took:.2f} s, {n * 3600 / took:,.0f} images/hour", flush=True)


if __name__ == "__main__":
    main()
