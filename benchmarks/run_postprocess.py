"""``SceneTransformer.run`` on a batch of large photos: time outside the pipeline call (the GPU waits on it).

    python benchmarks/run_postprocess.py [--model tiny] [--photos 8] [--photo-size 1920x1080] [--repeats 5]

``--photos`` different photos (random pixels: only their size matters here) with their own depth, one request
each, in one denoising batch of 2 steps. Prints each run's milliseconds, sorted, and the part outside the
pipeline call: resizing the outputs back to the photos' sizes, metadata. With the tiny model the pipeline call
is short; on a GPU with a full model it is long, and this part is what the GPU waits on between batches.
"""

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--photo-size", default="1920x1080")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import numpy as np
    from PIL import Image

    from depth2img import SceneTransformer
    from depth2img.depthmap import DepthMap

    w, h = (int(v) for v in args.photo_size.split("x"))
    st = SceneTransformer.from_pretrained(args.model)
    rng = np.random.default_rng(0)
    requests = [
        st.prepare(Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)), "a street in the rain", seed=i,
                   depth=DepthMap(rng.random((h, w), np.float32) + 0.1, "relative_inverse_depth"), steps=2)
        for i in range(args.photos)
    ]  # fmt: skip
    st.run(requests)  # warm-up
    runs, outside = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        results = st.run(requests)
        runs.append(time.perf_counter() - started)
        outside.append(runs[-1] - sum(r.timings["diffusion_s"] for r in results))
    print(f"== {args.photos} photos of {args.photo_size}, model {args.model}, one batch")
    print(f"run: {' '.join(f'{t * 1000:.0f}' for t in sorted(runs))} ms; outside the pipeline call: "
          f"{' '.join(f'{t * 1000:.0f}' for t in sorted(outside))} ms")  # fmt: skip


if __name__ == "__main__":
    main()
