"""The ``depth2img`` command line: a thin shell over the Python API.

Only the standard library is imported at start-up, so ``--help`` and argument errors are instant;
torch, diffusers and transformers load inside the command that needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from functools import partial

from .knobs import COMPILE_MODES, DTYPES, MAX_IMAGES, OFFLOAD_MODES

EXIT_USAGE = 2  # bad input, as argparse uses it


def _rank() -> int:
    """This process's rank in a multi-process run (torchrun's, which accelerate launch sets too); 0 alone."""
    rank = os.environ.get("RANK", "0")
    return int(rank) if rank.isdigit() else 0


def _given(what: str):
    """An argparse type refusing an empty value: '' read as '.' (-o wrote into the current folder, --presets-file
    said "presets file .: cannot be read") or as no value at all (--model '' loaded the default backbone)."""

    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{what} is needed, got an empty value")
        return text

    return check


_folder = _given("an output folder")
_file = _given("a file")
_model = _given("a name, hub id or folder")


def _add_companion_args(p: argparse.ArgumentParser, app: str = "") -> None:
    """--lora, --lora-scale and --controlnet (transform; ``app``: the app's words for them)."""
    # (no _model type: in the app, an empty value turns DEPTH2IMG_LORA/DEPTH2IMG_CONTROLNET off)
    p.add_argument("--lora", metavar="NAME|ID|PATH",
                   help="few-step LoRA fused into the UNet: lcm-sd15, lcm-sdxl, hyper-sd15-8step (sets its scheduler, "
                   f"steps and guidance as defaults){app}")  # fmt: skip
    p.add_argument("--lora-scale", type=float, default=1.0, help="strength of --lora (default 1.0)")
    p.add_argument("--controlnet", metavar="ID|PATH",
                   help="a depth ControlNet instead of the backbone's own, for SD1.5 and SDXL backbones: a hub id or "
                   "a folder holding a diffusers ControlNetModel (a fine-tune; recorded in the manifest)" + app)  # fmt: skip


def _add_model_args(p: argparse.ArgumentParser, backbones: bool = True) -> None:
    """``backbones``: the command loads a backbone (Flux's default dtype is its own), not only depth models."""
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps or xpu (default: cuda, else mps, else cpu)")
    flux = ", bfloat16 for Flux" if backbones else ""
    p.add_argument(
        "--dtype", choices=DTYPES, help=f"weights dtype (default: float16 on GPU{flux}; float32 on CPU)"
    )
    p.add_argument("--local-files-only", action="store_true",
                   help="never contact the Hugging Face hub (also: HF_HUB_OFFLINE=1)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="depth2img",
        description="Change a photo's style, lighting, season or weather with a prompt while keeping its geometry.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"depth2img {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("depth", help="estimate depth maps and write 16-bit PNG, .npy and a preview per input",
                       description="Depth for each input image: from a monocular estimator, or from a rectified "
                       "stereo pair with --right. Writes NAME_depth16.png (near = bright, full 16-bit range, polarity "
                       "recorded), NAME_depth.npy (float32 raw values) and NAME_depth_preview.png.")  # fmt: skip
    _add_inputs_and_output(p)
    p.add_argument("--estimator", metavar="NAME|ID|PATH", type=_model,
                   help="registry name (default depth-anything-v2-small; see `depth2img models`), tiny, hub id or folder")  # fmt: skip
    p.add_argument("--right", action="append", metavar="RIGHT_IMAGE", type=_file,
                   help="right image of a rectified stereo pair (once per input, in order): SGBM disparity instead of an estimator")  # fmt: skip
    p.add_argument("--num-disparities", type=int, metavar="N",
                   help="with --right: disparity search range in px, a multiple of 16 below the width (default: "
                   "an eighth of the width, rounded up to 16); a warning says when near surfaces lie beyond "
                   "it")  # fmt: skip
    p.add_argument("--depth-format", default="png16,npy,preview", metavar="LIST",
                   help="comma-separated products among png16, npy, preview (default: all three)")  # fmt: skip
    p.add_argument(
        "--batch-size", type=int, metavar="N", help="images per estimator batch (default 8 on GPU, 1 on CPU)"
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar, no loading lines, no download bars"
    )
    _add_model_args(p, backbones=False)

    p = sub.add_parser("tiny-model", help="write tiny random-weight models (for tests and offline smoke runs)",
                       description="Write tiny random-weight models of every kind the registry knows into DIR, "
                       "one folder each, in the hub repos' layout. `--estimator tiny` uses $DEPTH2IMG_TINY_DIR "
                       "(default ~/.cache/depth2img/tiny), builds them there on first use and rebuilds a folder "
                       "that an older depth2img wrote.")  # fmt: skip
    p.add_argument("directory", metavar="DIR", type=_folder)  # '' wrote every model into the current folder

    sub.add_parser("models", help="list the registry: names, hub ids, licences, commercial use")

    p = sub.add_parser("transform", help="change style, lighting, season or weather by prompt, keeping the geometry",
                       description="For each input: depth (estimated, or --depth FILE), then a depth-conditioned "
                       "diffusion pass. Writes NAME[_PRESET]_sSEED.png at the input's exact size (metadata in the PNG "
                       "text chunk 'depth2img'), NAME_depth16.png, NAME_depth_preview.png, NAME_control.png and "
                       "manifest.jsonl.")  # fmt: skip
    _add_inputs_and_output(p)
    p.add_argument("--prompt", help="what to make of the scene (wrapped by presets when given)")
    p.add_argument("--preset", metavar="NAME[+NAME]", help="e.g. winter, rain+night; see `depth2img presets`")
    p.add_argument("--negative-prompt", help="what to avoid (added to the presets' negatives)")
    p.add_argument("--model", metavar="NAME|ID|PATH", type=_model,
                   help="backbone: sd15-depth (default), sd2-depth, sdxl-depth, "
                   "flux-depth, flux-depth-lora, tiny[/entry], a hub id or a folder")  # fmt: skip
    p.add_argument("--estimator", metavar="NAME|ID|PATH", type=_model,
                   help="depth estimator (default: the backbone's, depth-anything-v2-small; tiny for a tiny backbone)")  # fmt: skip
    p.add_argument("--depth", action="append", metavar="FILE", type=_file,
                   help="your own depth file instead of an estimator (16/8-bit PNG, float TIFF, .npy, .npz holding a "
                        "'depth' array or a single one): once per input, in the order of the inputs as expanded "
                        "(a folder's files sorted by name)")  # fmt: skip
    p.add_argument("--depth-polarity", choices=["near-bright", "far-bright", "metric"],
                   help="how --depth files run, for those that do not record it (depth2img's own 16-bit PNGs "
                        "and .npz files with a 'kind' entry keep theirs)")  # fmt: skip
    p.add_argument(
        "--seed", type=int, help="seed of the first image; image i uses seed+i (default: random, recorded)"
    )
    p.add_argument(
        "--num-images",
        type=int,
        default=1,
        metavar="N",
        help=f"images per input (1..{MAX_IMAGES}, default 1)",
    )
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="inputs per denoising batch (default 1; a few keep a GPU busier, at N x --num-images images' "
                        "memory)")  # fmt: skip
    p.add_argument("--steps", type=int, help="denoising steps (default 30)")
    p.add_argument(
        "--strength",
        type=float,
        help="(0, 1]: how far from the photo; 1 = from depth alone (sd2-depth: nearly) (default 0.8)",
    )
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5; Flux 10)")
    p.add_argument("--control-scale", type=float, help="ControlNet conditioning scale (default 1.0)")
    p.add_argument(
        "--control-start", type=float, help="fraction of steps before the ControlNet starts (default 0)"
    )
    p.add_argument("--control-end", type=float, help="fraction of steps after which it stops (default 1)")
    p.add_argument("--feature-cache", type=int, metavar="N",
                   help="speed for quality: run the UNet's deep blocks (and the ControlNet) on every N-th step only, "
                        "reusing their features in between (DeepCache-like; UNet backbones; default 1 = off)")  # fmt: skip
    p.add_argument(
        "--scheduler",
        help="unipc, ddim, pndm, euler, euler-a, dpm++, dpm++-karras, lms, lcm, tcd, ddim-trailing "
        "(Flux: flow-euler); default the backbone's: unipc (sd15-depth), euler (sdxl-depth), pndm (sd2-depth), "
        "flow-euler (Flux), a few-step LoRA's own",
    )
    _add_companion_args(p)
    p.add_argument("--offload", choices=list(OFFLOAD_MODES), default="none",
                   help="CPU offload to save GPU memory (a GPU only): " + "; ".join(f"{k}: {v}" for k, v in OFFLOAD_MODES.items()))  # fmt: skip
    p.add_argument("--compile", choices=COMPILE_MODES, metavar="MODE",
                   help="the fast path on a GPU: torch.compile of the UNet, ControlNet and VAE decoder (with channels-last "
                        "and fused QKV), mode one of " + ", ".join(COMPILE_MODES) + "; the first batch compiles "
                        "(a minute or more), the first at a second image size once more (for any size), the later "
                        "ones are faster (a smaller one is padded to a size run before rather than compiled "
                        "again). Outputs differ from eager within bf16/fp16 tolerance (default: off)")  # fmt: skip
    p.add_argument("--vae-tiling", action="store_true", help="decode in tiles (large images, less memory)")
    p.add_argument("--vae-slicing", action="store_true", help="decode one image at a time")
    p.add_argument("--native-size", type=int, metavar="N",
                   help="generate at the pixel count of N x N (each photo's aspect kept, outputs at its size); "
                        "default the backbone's: 512 (sd15-depth, sd2-depth), 1024 (sdxl-depth, Flux)")  # fmt: skip
    p.add_argument(
        "--attention", choices=["sdpa", "xformers"], default="sdpa", help="attention kernels (default sdpa)"
    )
    p.add_argument(
        "--presets-file", action="append", default=[], metavar="FILE", type=_file, help="extra presets YAML"
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars, no loading lines, no download bars"
    )
    _add_model_args(p)

    p = sub.add_parser("app", help="launch the web app (Gradio) on 127.0.0.1",
                       description="The web demo. Settings default to DEPTH2IMG_MODEL, DEPTH2IMG_ESTIMATOR, "
                       "DEPTH2IMG_HOST, DEPTH2IMG_PORT, DEPTH2IMG_MAX_UPLOAD_MB, DEPTH2IMG_QUEUE_SIZE, DEPTH2IMG_COMPILE, "
                       "DEPTH2IMG_LORA, DEPTH2IMG_CONTROLNET.")  # fmt: skip
    p.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (opt-in)")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="require a login")
    # (no _model type: an empty value sets the default over DEPTH2IMG_MODEL's, as '' turns DEPTH2IMG_LORA's off)
    p.add_argument("--model", metavar="NAME|ID|PATH", help="default backbone (default sd15-depth)")
    p.add_argument("--estimator", metavar="NAME|ID|PATH",
                   help="default depth estimator (default: the backbone's, depth-anything-v2-small)")  # fmt: skip
    p.add_argument("--max-upload-mb", type=int, help="largest upload accepted (default 20)")
    p.add_argument(
        "--queue-size", type=int, help="requests that may wait (default 32); jobs run one at a time"
    )
    p.add_argument("--compile", metavar="MODE",
                   help="the fast path on a GPU (as transform --compile): " + ", ".join(COMPILE_MODES)
                        + "; it is compiled before serving (--warm-up)")  # fmt: skip
    p.add_argument("--warm-up", action=argparse.BooleanOptionalAction, default=None,
                   help="load the model before serving and, with --compile, compile it for any size and number of "
                        "images (three short generations; minutes on a GPU; one image with guidance <= 1 still "
                        "compiles once), so visitors do not wait for the compiler (default: on with --compile)")  # fmt: skip
    p.add_argument(
        "--presets-file", action="append", default=[], metavar="FILE", type=_file, help="extra presets YAML"
    )
    _add_companion_args(p, app="; the page then offers --model alone")
    _add_model_args(p)

    p = sub.add_parser("batch", help="run a job file: variations of many sources, labels carried, geometry checked",
                       description="Run JOB.yaml (see configs/jobs/). Several GPUs or machines: "
                       "`accelerate launch --multi_gpu --num_processes N -m depth2img batch JOB.yaml`.")  # fmt: skip
    p.add_argument("job", metavar="JOB.yaml", type=_file)
    p.add_argument(
        "--resume", action="store_true", help="continue a run: skip the items its manifest lists as done"
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar, no loading lines, no download bars"
    )
    p.add_argument("--presets-file", action="append", default=[], metavar="FILE", type=_file,
                   help="extra presets YAML, after the job's presets_files")  # fmt: skip

    p = sub.add_parser("eval", help="score how well OUTPUT kept the geometry of SOURCE",
                       description="Estimate depth on both images with the same estimator, align in inverse depth "
                       "(least-squares scale and shift) and print AbsRel, delta<1.25 and depth-edge F1.")  # fmt: skip
    p.add_argument("source", metavar="SOURCE", type=_file)
    p.add_argument("output", metavar="OUTPUT", type=_file)
    p.add_argument(
        "--estimator",
        metavar="NAME|ID|PATH",
        type=_model,
        help="depth estimator (default depth-anything-v2-small)",
    )
    p.add_argument(
        "--source-depth", metavar="FILE", type=_file, help="the source's depth file instead of estimating it"
    )
    p.add_argument(
        "--depth-polarity", choices=["near-bright", "far-bright", "metric"], help="of --source-depth"
    )
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    _add_model_args(p, backbones=False)

    p = sub.add_parser("bench", help="benchmark plain diffusers against depth2img (SD1.5/SDXL + ControlNet depth)",
                       description="Interleaved runs on the same inputs: plain diffusers as its docs show it, "
                       "depth2img with the same settings, and depth2img's fast path. Full-size architectures "
                       "from configs/bench with random weights (timing does not depend on weights). Writes JSON "
                       "and a markdown table to benchmarks/. On CPU use --preset tiny (what CI runs).")  # fmt: skip
    p.add_argument(
        "--preset", choices=["full", "tiny"], default="full", help="architecture size (default full)"
    )
    p.add_argument("--backbone", choices=["sd15", "sdxl"], default="sd15", help="architecture (default sd15)")
    p.add_argument("--depth", action="store_true",
                   help="benchmark the depth estimators instead (Depth Anything V2 S/B/L, DPT-hybrid): transformers' "
                        "pipeline one image per call against depth2img (batches of 8 in bf16 on GPU) on --batch photos")  # fmt: skip
    p.add_argument("--size", type=int, help="image side in pixels (default 512; SDXL 1024)")
    p.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    p.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed interleaved repeats (default 3)")
    p.add_argument("--compile", metavar="MODE[,MODE]",
                   help="also time the fast path compiled, a row per mode: " + ", ".join(COMPILE_MODES))  # fmt: skip
    p.add_argument("--inductor", action="append", metavar="NAME=VALUE",
                   help="an inductor setting on top of each --compile mode's (repeatable; conv_1x1_as_mm=True; "
                        "VALUE read as a Python literal, True, 1.5, '90', else as a string), to measure it: its "
                        "figures go to files of their own")  # fmt: skip
    p.add_argument("--fast-dtype", choices=DTYPES,
                   help="the fast path's dtype (default bfloat16 on GPU, --dtype's on CPU); plain diffusers keeps --dtype's")  # fmt: skip
    p.add_argument("--compiled-only", action="store_true",
                   help="time only plain diffusers (batched) and the --compile rows, to measure a compiler setting in "
                        "less time (no API-overhead, eager or one-image-per-call rows)")  # fmt: skip
    p.add_argument("--profile", action="store_true",
                   help="also run one call of plain diffusers, each --compile row, and a --diffusers-unipc row and "
                        "the row it repeats, under torch.profiler and "
                        "report the share of it the GPU was busy (the rest it waited on the host) and how often the "
                        "host waited for the GPU (GPU only)")  # fmt: skip
    p.add_argument("--control-end", type=float, default=1.0, help="ControlNet guidance end (default 1.0)")
    p.add_argument("--scheduler", default="unipc",
                   help="the scheduler of every row: unipc (default, diffusers' ControlNet docs'), ddim, pndm, euler, "
                        "euler-a, dpm++, dpm++-karras, lms, lcm, tcd, ddim-trailing; another measures what UniPC's "
                        "own per-step work costs")  # fmt: skip
    p.add_argument("--diffusers-unipc", action="store_true",
                   help="also time the first --compile row (else the eager fast path) with diffusers' own UniPC, "
                        "which waits for the GPU at each step, in place of depth2img's: its gain, in one run")  # fmt: skip
    p.add_argument("--feature-cache", type=int, default=1, metavar="N",
                   help="also time the fast path with the DeepCache-like feature cache (a quality trade)")  # fmt: skip
    p.add_argument("--attention", choices=["sdpa", "sdpa-flash", "sdpa-cudnn", "xformers"], default="sdpa",
                   help="xformers: also time the fast path with xformers attention (needs the extra); sdpa-flash, "
                        "sdpa-cudnn: depth2img's rows try FlashAttention's or cuDNN's kernels first (a GPU "
                        "experiment)")  # fmt: skip
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="depth2img's rows run with cuDNN timing its convolution algorithms on their first "
                        "call (torch.backends.cudnn.benchmark), not a heuristic's pick (a GPU experiment)")  # fmt: skip
    p.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False,
                   help="fast path without channels-last (default: its compiled rows on GPUs), to measure what it brings")  # fmt: skip
    p.add_argument("--no-fused-qkv", dest="fuse_qkv", action="store_false",
                   help="fast path without fused QKV projections, to measure what they bring")  # fmt: skip
    p.add_argument("--low-vram", action="store_true",
                   help="also time model CPU offload and group offloading (each + VAE slicing/tiling) and report their peak GPU memory")  # fmt: skip
    p.add_argument(
        "--peak-tflops", type=float, help="peak TFLOP/s of the device (default: measured with a matmul)"
    )
    p.add_argument("-o", "--output", default="benchmarks", metavar="DIR", type=_folder,
                   help="where JSON and markdown go")  # fmt: skip
    _add_model_args(p, backbones=False)

    p = sub.add_parser("presets", help="list the prompt presets (combine them with +)")
    p.add_argument(
        "--presets-file", action="append", default=[], metavar="FILE", type=_file, help="extra presets YAML"
    )
    return parser


def _quiet_libraries(downloads: bool = False) -> None:
    """Keep the terminal to our progress bars and lines (library warnings stay visible in the API); ``downloads``:
    keep the hub's download bars (a first run fetches gigabytes)."""
    import diffusers
    import transformers
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # (the hub's too: transformers switches them off with its own)
    (enable_progress_bars if downloads else disable_progress_bars)()


def _add_inputs_and_output(p) -> None:
    """The photos a command reads and the folder it writes (``depth``, ``transform``)."""
    p.add_argument("inputs", nargs="+", metavar="INPUT", type=_given("an image file, folder or glob"),
                   help="image files, directories or globs (quote a glob, "
                   "'photos/**/*.jpg'; a name that starts with '-' as ./-x.png)")  # fmt: skip
    p.add_argument("-o", "--output", required=True, metavar="DIR", type=_folder, help="output directory")


def _say_above_bar(msg: str) -> None:
    try:
        from .outputs import status_line
    except Exception:  # (the error said may be a broken dependency of outputs: tqdm, NumPy)
        from .errors import one_line

        print(one_line(f"depth2img: error: {msg}"), file=sys.stderr, flush=True)
        return
    status_line()(f"error: {msg}")


def _cmd_depth(args) -> int:
    from .io import check_depth_formats
    from .knobs import check_batch_size

    formats = [f.strip() for f in args.depth_format.split(",") if f.strip()]
    formats = check_depth_formats(formats, "--depth-format", at_least_one=True)
    if args.batch_size is not None:
        check_batch_size(args.batch_size, "--batch-size")
    _quiet_libraries(downloads=not args.quiet)
    from .depth_run import run_depth

    report = run_depth(
        args.inputs, args.output, estimator=args.estimator, right=args.right, formats=formats,
        num_disparities=args.num_disparities,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype,
        local_files_only=args.local_files_only, progress=not args.quiet, on_error=_say_above_bar, label=_flag,
    )  # fmt: skip
    return _summed_up("depth", report, args.output)


def _cmd_tiny_model(args) -> int:
    from . import tiny
    from .errors import InputError

    _quiet_libraries()
    try:
        written = tiny.write_all(args.directory)
    except InputError as err:
        # (a folder named like a model, a user's files in it, was removed; a file named so failed half-way through)
        raise InputError(f"tiny-model: {err}; remove it or choose another DIR") from None
    except OSError as err:
        raise InputError(f"tiny-model: {args.directory} cannot be written ({err.strerror or err})") from None
    for kind, path in written.items():
        # the separate repos that go with it (a backbone's ControlNet, Flux's depth LoRA) went unnamed; then a folder
        # named like one was named too (flux-depth "with flux-depth-lora", another backbone)
        with_it = [str(c) for c in tiny.folders(kind, path)[1:]]
        print(f"{kind}: {path}" + (f" (with {', '.join(with_it)})" if with_it else ""))
    return 0


def _cmd_models(args) -> int:
    from .registry import load_registry

    reg = load_registry()
    for section in ("estimators", "backbones", "loras"):
        print(f"{section}:")
        for name, e in reg[section].items():
            default = " (default)" if name == reg.get("default_" + section[:-1]) else ""
            use = "commercial use ok" if e.commercial else "NON-COMMERCIAL"
            what = e.output or e.pipeline or f"for {e.for_pipeline}, scheduler {e.scheduler}"
            pinned = f"{e.id}@{e.revision[:7]}"  # the pinned hub commit (full SHA in configs/models.yaml)
            companion = e.controlnet or e.lora
            also = f"; + {companion}@{e.companion_revision[:7]}" if companion else ""
            gated = "; gated (accept its licence on huggingface.co)" if e.gated else ""
            print(f"  {name:<26} {pinned:<54} {e.licence:<26} {use:<18} {what}{default}{also}{gated}")
    return 0


def _cmd_presets(args) -> int:
    from .presets import load_presets

    by_group: dict[str, list] = {}
    for p in load_presets(args.presets_file).values():
        by_group.setdefault(p.group or "other", []).append(p)
    for group, items in by_group.items():
        print(f"{group}:")
        for p in items:
            # what else a preset adds: its negative prompt (merged into the run's) and knobs
            negative = f"  (negative: {p.negative})" if p.negative else ""
            knobs = f"  {p.knobs}" if p.knobs else ""
            print(f"  {p.name:<14} {p.prompt}{negative}{knobs}")
    return 0


def _flag(key: str) -> str:
    """transform's flag for a knob or argument of the API."""
    return {"guidance_scale": "--guidance"}.get(key, "--" + key.replace("_", "-"))


def _cmd_transform(args) -> int:
    # run_transform checks every argument (label=_flag) before a model loads
    knobs = {"steps": args.steps, "strength": args.strength, "guidance_scale": args.guidance,
             "control_scale": args.control_scale, "control_start": args.control_start,
             "control_end": args.control_end, "feature_cache": args.feature_cache}  # fmt: skip
    given = {k: v for k, v in knobs.items() if v is not None}
    if args.depth:
        # read once here too: a missing file, its polarity or (from the input's header) its aspect ratio was found
        # only after the models had loaded (the API goes on past such an input, as past any input that fails)
        import warnings

        from .errors import InputError
        from .io import depth_for_image, expand_inputs, header_size, read_depth_file

        with warnings.catch_warnings():  # (said by the run)
            warnings.simplefilter("ignore")
            paths, problems = expand_inputs([str(i) for i in args.inputs])
        # (inputs missing, or of another count: the run refuses the pairs)
        paired = len(paths) == len(args.depth) and not problems
        sizes = [header_size(p) for p in paths] if paired else [None] * len(args.depth)
        for path, size in zip(args.depth, sizes):
            try:
                with warnings.catch_warnings():  # a recorded polarity's warning comes with the run's own read
                    warnings.simplefilter("ignore")
                    if size is None:  # (its input unreadable, or inputs missing: the run says so)
                        read_depth_file(path, args.depth_polarity, polarity_option="--depth-polarity")
                    else:
                        depth_for_image(path, size, args.depth_polarity, "--depth-polarity")
            except InputError as err:
                raise InputError(f"--depth: {err}") from None
    _quiet_libraries(downloads=not args.quiet)
    from .transform_run import run_transform

    report = run_transform(
        args.inputs, args.output, model=args.model, estimator=args.estimator, depth=args.depth,
        depth_polarity=args.depth_polarity, prompt=args.prompt, preset=args.preset,
        negative_prompt=args.negative_prompt, seed=args.seed, num_images=args.num_images,
        scheduler=args.scheduler, knobs=given,
        load_options=dict(device=args.device, dtype=args.dtype, local_files_only=args.local_files_only,
                          offload=args.offload, compile=args.compile, vae_tiling=args.vae_tiling,
                          vae_slicing=args.vae_slicing, attention=args.attention, preset_files=args.presets_file,
                          lora=args.lora, lora_scale=args.lora_scale, native_size=args.native_size,
                          controlnet=args.controlnet),
        progress=not args.quiet, on_error=_say_above_bar, on_warning=_warn_above_bar, batch_size=args.batch_size,
        label=_flag,
    )  # fmt: skip
    return _summed_up("transform", report, args.output)


def _summed_up(command: str, report, output) -> int:
    """The last line of a run, and its exit code; the output folder named only where this run wrote to it (a run whose
    every input failed named a folder it had removed again)."""
    where = f"; outputs in {output}" if report.done else ""
    print(f"depth2img {command}: {report.summary()}{where}", file=sys.stderr)
    return 0 if report.ok else EXIT_USAGE


def _companion_refs(lora, lora_scale, controlnet):
    """The app's --lora, --lora-scale and --controlnet checked and resolved: the refs, None where not given."""
    from .knobs import check_lora_scale
    from .registry import resolve_companions

    check_lora_scale(lora_scale, lora, "--lora-scale")
    return resolve_companions(lora, controlnet)


def _cmd_app(args) -> int:
    from .errors import InputError
    from .knobs import check_compile
    from .ui import settings_from_env

    env = settings_from_env()
    pick = {k: getattr(args, k) if getattr(args, k) is not None else env[k] for k in env}

    # the flag, or the variable where the value came from the environment (the flag was named, not given)
    def given_as(key):
        return _flag(key) if getattr(args, key) is not None else f"DEPTH2IMG_{key.upper()}"

    for key in ("max_upload_mb", "queue_size"):
        if pick[key] < 1:
            raise InputError(f"{given_as(key)} must be >= 1, got {pick[key]}")
    check_compile(pick["compile"], "--compile (or DEPTH2IMG_COMPILE)")
    if args.device is not None:  # (the Service said 'device', its argument's name, not the flag)
        from .loading import resolve_device

        resolve_device(args.device, "--device")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InputError("the web app needs the ui extra: pip install 'depth2img[ui]'") from None
    from .ui import check_serving

    # before the model loads and warms up (minutes when compiled)
    check_serving(pick["port"], args.auth, port_name=given_as("port"))
    from .registry import resolve_backbone, resolve_estimator

    # names that resolve to nothing, a LoRA or ControlNet that does not fit the model, and offline what is not in the
    # cache: before serving, not at the first Generate
    ref = resolve_backbone(pick["model"])
    resolve_estimator(pick["estimator"])
    for key in ("lora", "controlnet"):  # (--controlnet "" turns DEPTH2IMG_CONTROLNET off)
        pick[key] = pick[key] or None
    lora, controlnet = _companion_refs(pick["lora"], args.lora_scale, pick["controlnet"])
    from .backends import check_at_hand

    check_at_hand(ref, local_files_only=args.local_files_only, controlnet=controlnet, lora=lora,
                  label=lambda key: f"{_flag(key)} (or DEPTH2IMG_{key.upper()})")  # fmt: skip
    _quiet_libraries(downloads=True)
    from .service import Service
    from .ui import launch

    service = Service(model=pick["model"], estimator=pick["estimator"], device=args.device, dtype=args.dtype,
                      local_files_only=args.local_files_only, preset_files=args.presets_file,
                      compile=pick["compile"], lora=pick["lora"], lora_scale=args.lora_scale,
                      controlnet=pick["controlnet"])  # fmt: skip
    if args.warm_up if args.warm_up is not None else bool(pick["compile"]):
        seconds = service.warm_up(progress=lambda msg: print(f"depth2img app: {msg}", file=sys.stderr))
        print(f"depth2img app: warmed up in {seconds:.0f} s", file=sys.stderr)
    launch(service, host=pick["host"], port=pick["port"], share=args.share, auth=args.auth,
           max_upload_mb=pick["max_upload_mb"], queue_size=pick["queue_size"])  # fmt: skip
    return 0


def _cmd_batch(args) -> int:
    from .batch import alike, load_job
    from .metrics import METRICS

    with alike():
        job = load_job(args.job, extra_presets_files=args.presets_file)  # checked before any model loads
    _quiet_libraries(downloads=not args.quiet)
    from .batch import run_job

    report = run_job(job, resume=args.resume, progress=not args.quiet, on_error=_say_above_bar)
    # one write: the processes of a multi-process run share the terminal
    sys.stderr.write(f"depth2img batch: {report.summary()}\n")
    # not one image in the dataset, this run's or an earlier one's
    if report.rejected and report.indexed == 0:
        g = job.geometry
        _say_above_bar(f"no image passed the geometry check ({g.metric} {'<=' if METRICS[g.metric] == 'lower' else '>='} "
             f"{g.threshold}); rejected items write no image")  # fmt: skip
        return EXIT_USAGE
    return 0 if not report.failed else EXIT_USAGE


def _cmd_eval(args) -> int:
    import json
    import warnings

    from .errors import Depth2ImgWarning, InputError
    from .io import check_polarity, depth_for_image, load_image

    check_polarity(
        args.depth_polarity, "--depth-polarity", missing=None if args.source_depth else "--source-depth"
    )
    if args.device is not None:  # (said as 'device', not the flag, once the estimator's loader read it)
        from .loading import resolve_device

        resolve_device(args.device, "--device")
    source, output = load_image(args.source), load_image(args.output)
    from .metrics import check_frames

    # before any model loads (it came once both depths were estimated, naming neither file)
    check_frames(source.size, output.size, f"SOURCE {args.source}", f"OUTPUT {args.output}")
    given = (
        depth_for_image(args.source_depth, source.size, args.depth_polarity, "--depth-polarity")
        if args.source_depth
        else None
    )
    _quiet_libraries(downloads=True)
    from .estimators import DepthEstimator
    from .metrics import NARROW_FLAT_DELTA1, RELATIVE_DEPTH_RANGE, geometry_reference, geometry_scores

    # the source's depth: the file given, or the estimator's
    named = f"--source-depth {args.source_depth}" if given is not None else f"SOURCE {args.source}'s depth"

    def reference(depth):  # a given flat depth is refused before any model loads
        ref = geometry_reference(depth)
        if ref.flat:
            raise InputError(
                f"{named} is flat (one value, or no valid pixel), so it has no geometry to score OUTPUT against"
            )
        return ref

    ref = reference(given) if given is not None else None
    if given is not None and given.kind == "relative_depth":
        warnings.warn(
            f"{named}: a far-bright depth has no scale and is read as a scene spanning "
            f"1:{RELATIVE_DEPTH_RANGE:g}; where it spans another range even a perfect OUTPUT scores below 1 (see "
            "README, Geometry check)",
            Depth2ImgWarning,
            stacklevel=1,
        )
    est = DepthEstimator.from_pretrained(args.estimator, device=args.device, dtype=args.dtype,
                                         local_files_only=args.local_files_only)  # fmt: skip

    def estimate(image, name):
        # an image the estimator cannot take was called "image", neither SOURCE nor OUTPUT nor its path
        try:
            return est(image)
        except InputError as err:
            raise InputError(f"{name}: {err}") from None

    ref = ref or reference(estimate(source, f"SOURCE {args.source}"))
    if ref.flat_delta1 >= NARROW_FLAT_DELTA1:
        warnings.warn(
            f"{named} spans a narrow range, so a flat OUTPUT would score delta1 "
            f"{ref.flat_delta1:.2f}; AbsRel and delta1 say little here, edge F1 does",
            Depth2ImgWarning,
            stacklevel=1,
        )
    scores = geometry_scores(ref, estimate(output, f"OUTPUT {args.output}"))
    if args.json:
        print(json.dumps(scores))
    else:
        # (None: too few of the source's pixels are valid around them to look for edges; it failed as an internal error)
        edge = "n/a (too few valid pixels)" if scores["edge_f1"] is None else f"{scores['edge_f1']:.4f}"
        print(f"AbsRel {scores['absrel']:.4f} (lower is better)  delta<1.25 {scores['delta1']:.4f}  "
              f"edge F1 {edge} (higher is better)")  # fmt: skip
    return 0


# --size: SDXL's native 1024 four times over; a typo (1000000) failed only after the models were built
BENCH_MAX_SIZE = 4096


def _cmd_bench(args) -> int:
    from .bench import MAX_BATCH
    from .errors import InputError
    from .knobs import DEFAULT_KNOBS, MAX_STEPS, check_knobs

    # before any model is built or folder made (--steps 1001 failed only after plain diffusers' warm-up, minutes of
    # GPU time at full size, and left an empty folder; --batch 100000 ran until killed)
    for flag, value, most in (("--steps", args.steps, MAX_STEPS), ("--batch", args.batch, MAX_BATCH)):
        if not 1 <= value <= most:
            raise InputError(f"{flag} must be an integer in 1..{most}, got {value}")
    if args.repeats < 1:
        raise InputError(f"--repeats must be >= 1, got {args.repeats}")
    if args.size is not None and not (16 <= args.size <= BENCH_MAX_SIZE and args.size % 16 == 0):
        raise InputError(f"--size must be a multiple of 16 in 16..{BENCH_MAX_SIZE}, got {args.size}")
    if args.depth:  # the depth bench takes none of the diffusion bench's settings: one given was ignored
        # a setting off the parser's own default (its literals, written here again, could drift from it)
        default = vars(build_parser().parse_args(["bench"]))
        ignored = [flag for flag, key in (
            ("--backbone", "backbone"), ("--size", "size"), ("--steps", "steps"), ("--compile", "compile"),
            ("--control-end", "control_end"), ("--feature-cache", "feature_cache"), ("--attention", "attention"),
            ("--no-channels-last", "channels_last"), ("--no-fused-qkv", "fuse_qkv"), ("--low-vram", "low_vram"),
            ("--peak-tflops", "peak_tflops"), ("--inductor", "inductor"), ("--fast-dtype", "fast_dtype"),
            ("--compiled-only", "compiled_only"), ("--profile", "profile"), ("--scheduler", "scheduler"),
            ("--diffusers-unipc", "diffusers_unipc"), ("--cudnn-benchmark", "cudnn_benchmark"),
        ) if getattr(args, key) != default[key]]  # fmt: skip
        if ignored:
            raise InputError(f"--depth benchmarks the depth estimators: {', '.join(ignored)} "
                             f"{'is' if len(ignored) == 1 else 'are'} for the diffusion bench")  # fmt: skip
    check_knobs(
        {**DEFAULT_KNOBS, "control_end": args.control_end, "feature_cache": args.feature_cache}, label=_flag
    )
    _quiet_libraries()
    from .bench import markdown, run_bench, run_depth_bench

    if args.depth:
        result = run_depth_bench(preset=args.preset, images=args.batch, repeats=args.repeats, device=args.device,
                                 dtype=args.dtype, out_dir=args.output,
                                 progress=lambda m: print(m, file=sys.stderr, flush=True))  # fmt: skip
        print(result["markdown"])
        print("written: " + ", ".join(result["written"]), file=sys.stderr)
        return 0
    result = run_bench(backbone=args.backbone, preset=args.preset, size=args.size, feature_cache=args.feature_cache,
                       attention=args.attention, low_vram=args.low_vram, steps=args.steps, batch=args.batch, repeats=args.repeats,
                       device=args.device, dtype=args.dtype, compile_mode=args.compile, control_end=args.control_end,
                       channels_last=args.channels_last, fuse_qkv=args.fuse_qkv, peak_tflops=args.peak_tflops,
                       inductor=args.inductor, fast_dtype=args.fast_dtype, compiled_only=args.compiled_only, profile=args.profile, scheduler=args.scheduler, diffusers_unipc=args.diffusers_unipc, cudnn_benchmark=args.cudnn_benchmark, out_dir=args.output, progress=lambda m: print(m, file=sys.stderr, flush=True))  # fmt: skip
    print(markdown(result))
    print("written: " + ", ".join(result["written"]), file=sys.stderr)
    return 0


def _warn_above_bar(msg: str) -> None:
    from .outputs import status_line

    status_line()(f"warning: {msg}")


COMMANDS = {"depth": _cmd_depth, "tiny-model": _cmd_tiny_model, "models": _cmd_models,
            "transform": _cmd_transform, "presets": _cmd_presets, "app": _cmd_app,
            "batch": _cmd_batch, "eval": _cmd_eval, "bench": _cmd_bench}  # fmt: skip


class _Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, docker stop, a scheduler's preemption), taken the way Ctrl-C is: temporary files removed,
    finished files kept with their manifest lines, one line said."""


def _on_sigterm(signum, frame):
    raise _Terminated


def _send_again(unraisable, then) -> None:
    """A ``sys.unraisablehook``: a SIGTERM or Ctrl-C whose exception was raised inside a finalizer (a ``__del__``, a
    garbage-collection callback), which Python ignores (a traceback printed, the run went on and exited 0), is sent
    again, to land in the run's own code; any other goes to ``then``, the hook before."""
    import _thread
    import signal
    import threading

    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        # a moment later, from another thread: sent at once its handler ran inside this hook, ignored there too
        again = signal.SIGTERM if isinstance(unraisable.exc_value, _Terminated) else signal.SIGINT
        timer = threading.Timer(0.01, _thread.interrupt_main, args=(again,))
        timer.daemon = True
        timer.start()
    else:
        then(unraisable)


def _wait_for_the_first(seconds: float = 10) -> None:
    """In a process other than the first, leaving on an error that the first prints (a bad job file): a launcher
    (torchrun, accelerate) stops every process once one exits, which cut the first one's line short ("terminated",
    or a traceback, in 3 runs of 6). Wait for that stop, then leave quietly, or ``seconds``."""
    import signal
    import time

    def stopped(signum, frame):
        raise SystemExit(EXIT_USAGE)

    signal.signal(signal.SIGTERM, stopped)
    time.sleep(seconds)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)  # a usage error: stdout stays for what a command prints
        return EXIT_USAGE
    import warnings

    from .errors import Depth2ImgError, Depth2ImgWarning

    shown = warnings.showwarning

    def show(message, category, *rest, **kwargs):  # ours as one line, above any progress bar
        if issubclass(category, Depth2ImgWarning):
            _warn_above_bar(str(message))
        else:
            shown(message, category, *rest, **kwargs)

    import signal
    import threading

    # only the main thread may set handlers; an ignored SIGTERM stays ignored; the app keeps the default (gradio's
    # server loop takes a KeyboardInterrupt as a normal stop: exit 0)
    ours = (
        threading.current_thread() is threading.main_thread()
        and args.command != "app"
        and signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, None)
    )
    before = signal.signal(signal.SIGTERM, _on_sigterm) if ours else None
    unraisable = sys.unraisablehook
    if ours:
        sys.unraisablehook = partial(_send_again, then=unraisable)
    try:
        from .io import pixel_limit

        if args.command in ("transform", "depth", "batch", "eval", "app"):  # the commands that read images
            pixel_limit()  # a bad DEPTH2IMG_MAX_PIXELS: once, before any model loads (it came per input, after)
        with warnings.catch_warnings():
            warnings.showwarning = show
            return COMMANDS[args.command](args)
    except Depth2ImgError as err:
        if not err.every_process or _rank() == 0:
            _say_above_bar(str(err))
        elif ours:
            _wait_for_the_first()
        return EXIT_USAGE
    except _Terminated:
        _say_above_bar("terminated")
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        _say_above_bar("interrupted")
        return 130
    except BrokenPipeError:
        # the reader of the output went away (`depth2img presets | head -1`): quiet, as a pipe's writer is (it was
        # an "internal error", exit 1); the output is pointed at nothing so that the exit's flush fails no more
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + getattr(signal, "SIGPIPE", 13)
    except Exception as err:  # one line for the user; the traceback only when asked for
        if os.environ.get("DEPTH2IMG_DEBUG"):
            raise
        _say_above_bar(
            f"internal error: {type(err).__name__}: {err} (run with DEPTH2IMG_DEBUG=1 for the traceback)"
        )
        return 1
    finally:
        if ours:
            signal.signal(signal.SIGTERM, before)
            sys.unraisablehook = unraisable


if __name__ == "__main__":
    sys.exit(main())
