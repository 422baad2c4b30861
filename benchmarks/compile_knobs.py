"""Seconds per request of a compiled model as the knobs change: which requests compile again.

    python benchmarks/compile_knobs.py [--model tiny] [--compile default] [--size 64] [--steps 4] [--repeats 1]
                                       [--other-sizes 96x64 64x96 128x64]

One model loaded with ``compile`` (the fast path), then requests on one rendered driving scene (its exact depth
given) that change one knob each: the first compiles; each later one should take a warm call's time, since a
prompt, seed, step count, strength (txt2img or img2img), guidance or control scale needs no new graph. Prints
each request's seconds and the number of graphs dynamo compiled. Any registry model works (``--model sd15-depth``
on a GPU, with its weights downloaded); ``--repeats`` runs the list again, warm. ``--other-sizes`` then asks for
scenes of other sizes: torch compiles the second size's graphs for any size (dynamic shapes), the later ones
none.
"""

import argparse
import time

REQUESTS = [
    ("txt2img, control scale 1.0 (the first: compiles)", dict(strength=1.0, control_scale=1.0)),
    ("txt2img, control scale 0.7", dict(strength=1.0, control_scale=0.7)),
    ("img2img, strength 0.8 (the default)", dict(strength=0.8, control_scale=0.7)),
    (
        "img2img, guidance 5, control scale 0.5, another prompt and seed",
        dict(strength=0.8, guidance_scale=5.0, control_scale=0.5, prompt="a snowy road", seed=2),
    ),
    ("txt2img again", dict(strength=1.0)),
]


def size_arg(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return width, height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--compile", default="default", help="torch.compile mode")
    parser.add_argument("--size", type=int, default=64, help="the scene's width and height")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the request list")
    parser.add_argument("--other-sizes", nargs="*", type=size_arg, default=[], metavar="WxH",
                        help="then one request at each size")  # fmt: skip
    args = parser.parse_args()

    import torch._dynamo

    from depth2img import SceneTransformer, render_driving_scene

    scene = render_driving_scene(args.size, args.size, seed=0)
    st = SceneTransformer.from_pretrained(args.model, compile=args.compile)
    print(f"== model {args.model}, --compile {args.compile}, {args.size}x{args.size}, {args.steps} steps")
    for round_ in range(args.repeats):
        for label, knobs in REQUESTS:
            knobs = {"prompt": "a road", "seed": 1, **knobs}
            started = time.perf_counter()
            st.transform(scene.image, depth=scene.depth, steps=args.steps, **knobs)
            print(f"round {round_ + 1}, {label}: {time.perf_counter() - started:.2f} s", flush=True)
    for width, height in args.other_sizes:
        other = render_driving_scene(width, height, seed=0)
        started = time.perf_counter()
        result = st.transform(
            other.image, "a road", depth=other.depth, seed=1, steps=args.steps, strength=1.0
        )
        size = f"{result.raw.shape[2]}x{result.raw.shape[1]}"
        print(
            f"a {width}x{height} scene (generated at {size}): {time.perf_counter() - started:.2f} s",
            flush=True,
        )
    print(f"graphs compiled: {torch._dynamo.utils.counters['stats']['unique_graphs']}")


if __name__ == "__main__":
    main()
