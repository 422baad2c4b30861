"""The app's Variations grid (presets x seeds from one photo): seconds per grid by ``batch_size``, model loaded once.

    python benchmarks/variations_grid.py [--model tiny] [--sizes 1 4] [--repeats 3] [--steps 4] [--seeds 1]

One real photo from skimage (astronaut, 512x512), four presets that share knobs, the depth given (estimated
once, outside the timing). A warm-up round first, then the sizes interleaved; prints each grid's seconds and
images/hour. Any registry model works (``--model sd15-depth`` on a GPU, with its weights downloaded).
"""

import argparse
import time

PRESETS = ["winter", "rain", "fog", "night"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4], help="batch_size values to compare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=1, help="seeds per preset")
    args = parser.parse_args()

    from PIL import Image
    from skimage import data

    from depth2img import SceneTransformer

    st = SceneTransformer.from_pretrained(args.model)
    photo = Image.fromarray(data.astronaut()).convert("RGB")
    depth = st.depth_for(photo)
    seeds = list(range(args.seeds))
    n = len(PRESETS) * len(seeds)
    print(
        f"== {len(PRESETS)} presets x {len(seeds)} seed(s), 512x512, {args.steps} steps, model {args.model}"
    )
    for rep in range(args.repeats + 1):  # the first round warms up
        for size in args.sizes:
            started = time.perf_counter()
            st.variations(photo, presets=PRESETS, seeds=seeds, depth=depth, steps=args.steps, batch_size=size)
            took = time.perf_counter() - started
            if rep:
                print(
                    f"batch_size {size}: {took:.3f} s per grid, {n * 3600 / took:,.0f} images/hour",
                    flush=True,
                )


if __name__ == "__main__":
    main()
