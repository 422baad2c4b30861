"""The ``depth2img`` command line: a thin shell over the Python API.

Only the standard library is imported at start-up, so ``--help`` and argument errors are instant;
torch, diffusers and transformers load inside the command that needs them.
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_USAGE = 2  # bad input, as argparse uses it


def _say(msg: str) -> None:
    print(f"depth2img: error: {msg}", file=sys.stderr, flush=True)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="torch device (default: cuda, else mps, else cpu)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help="weights dtype (default: float16 on GPU, float32 on CPU)")  # fmt: skip
    p.add_argument("--local-files-only", action="store_true",
                   help="never contact the Hugging Face hub (also: HF_HUB_OFFLINE=1)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="depth2img",
        description="Change a photo's style, lighting, season or weather with a prompt while keeping its geometry.",
    )
    parser.add_argument("--version", action="version", version="depth2img 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("depth", help="estimate depth maps and write 16-bit PNG, .npy and a preview per input",
                       description="Depth for each input image: from a monocular estimator, or from a rectified "
                       "stereo pair with --right. Writes NAME_depth16.png (near = bright, full 16-bit range, polarity "
                       "recorded), NAME_depth.npy (float32 raw values) and NAME_depth_preview.png.")  # fmt: skip
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, directories or globs")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    p.add_argument("--estimator", metavar="NAME|ID|PATH",
                   help="registry name (default depth-anything-v2-small; see `depth2img models`), tiny, hub id or folder")  # fmt: skip
    p.add_argument("--right", action="append", metavar="RIGHT_IMAGE",
                   help="right image of a rectified stereo pair (once per input, in order): SGBM disparity instead of an estimator")  # fmt: skip
    p.add_argument("--depth-format", default="png16,npy,preview", metavar="LIST",
                   help="comma-separated products among png16, npy, preview (default: all three)")  # fmt: skip
    p.add_argument(
        "--batch-size", type=int, default=4, metavar="N", help="images per estimator batch (default 4)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_model_args(p)

    p = sub.add_parser("tiny-model", help="write tiny random-weight models (for tests and offline smoke runs)",
                       description="Write tiny random-weight models of every kind the registry knows into DIR, "
                       "one folder each, in the hub repos' layout. `--estimator tiny` uses $DEPTH2IMG_TINY_DIR "
                       "(default ~/.cache/depth2img/tiny) and builds them there on first use.")  # fmt: skip
    p.add_argument("directory", metavar="DIR")

    sub.add_parser("models", help="list the registry: names, hub ids, licences, commercial use")
    return parser


def _quiet_libraries() -> None:
    """Keep the terminal to our progress bar and our error lines (library warnings stay visible in the API)."""
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    disable_progress_bars()


def _say_above_bar(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"depth2img: error: {msg}", file=sys.stderr)


def _cmd_depth(args) -> int:
    formats = [f.strip() for f in args.depth_format.split(",") if f.strip()]
    _quiet_libraries()
    from .depth_run import run_depth

    report = run_depth(
        args.inputs, args.output, estimator=args.estimator, right=args.right, formats=formats,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype,
        local_files_only=args.local_files_only, progress=not args.quiet, on_error=_say_above_bar,
    )  # fmt: skip
    print(f"depth2img depth: {report.summary()}; outputs in {args.output}", file=sys.stderr)
    return 0 if report.ok else EXIT_USAGE


def _cmd_tiny_model(args) -> int:
    from . import tiny

    for kind, path in tiny.write_all(args.directory).items():
        print(f"{kind}: {path}")
    return 0


def _cmd_models(args) -> int:
    from .registry import load_registry

    reg = load_registry()
    for section in ("estimators", "backbones"):
        print(f"{section}:")
        for name, e in reg[section].items():
            default = " (default)" if name == reg["default_" + section[:-1]] else ""
            use = "commercial use ok" if e.commercial else "NON-COMMERCIAL"
            what = e.output or e.pipeline
            print(f"  {name:<26} {e.id:<46} {e.licence:<26} {use:<18} {what}{default}")
    return 0


COMMANDS = {"depth": _cmd_depth, "tiny-model": _cmd_tiny_model, "models": _cmd_models}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from .errors import Depth2ImgError

    try:
        return COMMANDS[args.command](args)
    except Depth2ImgError as err:
        _say(str(err))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as err:  # one line for the user; the traceback only when asked for
        if os.environ.get("DEPTH2IMG_DEBUG"):
            raise
        _say(f"internal error: {type(err).__name__}: {err} (run with DEPTH2IMG_DEBUG=1 for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
