"""The one place where models are found, fetched, loaded and verified, and where device and dtype are chosen.

Every model goes through ``snapshot_dir``: a local directory is used as it is; a hub id is looked up in
the local Hugging Face cache first, then fetched (safetensors and configs only) if the hub is reachable.
Offline (``local_files_only`` or ``HF_HUB_OFFLINE``) or unreachable hubs fail within seconds with a
one-line message that says how to provide the model locally. Pickle weights are never downloaded, and loaded
only from a local estimator or pipeline folder when DEPTH2IMG_ALLOW_PICKLE=1 says so; ``trust_remote_code`` is
never set.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shlex
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

from safetensors import SafetensorError

from .errors import Depth2ImgWarning, InputError, ModelLoadError, first_line
from .registry import ModelRef, is_tiny

HUB_PROBE_TIMEOUT_S = 3.0
# What a model snapshot needs: configs, tokenizer files and safetensors weights; never pickles.
ESTIMATOR_FILES = ["*.json", "*.txt", "model.safetensors", "model*.safetensors"]
PIPELINE_FILES = ["*.json", "*.txt", "*.model", "*/*.json", "*/*.txt", "*/*.safetensors"]
LORA_FILES = ["*.safetensors"]
SINGLE_MODEL_FILES = ["*.json", "diffusion_pytorch_model.safetensors", "*.safetensors"]
# Also the weights of pipeline parts never loaded (each backend passes None for them): SD1.5's safety checker (1.2 GB),
# SD2-depth's own DPT depth estimator, SDXL's spare VAE
IGNORED_FILES = ["*.bin", "*.ckpt", "*.pt", "*.pth", "*.pkl", "*fp16*", "*non_ema*", "*.onnx", "*.msgpack",
                 "safety_checker/*", "depth_estimator/*", "vae_1_0/*"]  # fmt: skip

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}  # fmt: skip


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def _available(device_type: str) -> bool:
    import torch

    if device_type == "cpu":
        return True
    if device_type == "mps":
        return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return getattr(torch, device_type).is_available()


def resolve_device(device=None, label: str = "device"):
    """Pick the device once: the user's choice (checked against what is here), else CUDA, else MPS, else CPU.
    ``label``: how the caller's user spells the argument (``--device``)."""
    import torch

    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            dev = None
        if dev is None or dev.type not in DEVICE_TYPES:
            raise InputError(f"{label} {device!r} is not one of {', '.join(DEVICE_TYPES)} (cuda and xpu take an "
                             "index, e.g. cuda:1)")  # fmt: skip
        if not _available(dev.type):
            raise InputError(f"{label} {device!r} was asked for but {dev.type.upper()} is not available here")
        count = getattr(torch, dev.type).device_count() if dev.type in ("cuda", "xpu") else 1
        if dev.index is not None and dev.index >= count:
            raise InputError(f"{label} {device!r} was asked for but {dev.type.upper()} devices here are numbered "
                             f"0..{count - 1}")  # fmt: skip
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype, device, accelerator_default: str = "float16"):
    """Pick the dtype once: the user's choice, else float32 on CPU and on accelerators ``accelerator_default``
    (the model's own where it has one: bfloat16 for Flux)."""
    import torch

    if dtype is None:
        return torch.float32 if device.type == "cpu" else getattr(torch, accelerator_default)
    name = dtype_name(dtype)
    if name is None:
        raise InputError(f"dtype {dtype!r} is not one of {', '.join(sorted(_DTYPES))}")
    return getattr(torch, name)


def dtype_name(dtype) -> str | None:
    """The name of a dtype given by name or alias ("fp16"), or as a torch or numpy dtype: of float32, float16 and
    bfloat16 only (torch.int8 failed as a ControlNet that could not be loaded); None for any other value."""
    import torch

    named = isinstance(dtype, (str, torch.dtype)) or type(dtype).__module__.startswith("numpy")
    return _DTYPES.get(str(dtype).lower().replace("torch.", "")) if named else None


def hub_offline(local_files_only: bool = False) -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return local_files_only or flag in {"1", "true", "yes", "on"}


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def download_command(ref: ModelRef, patterns, ignored=IGNORED_FILES) -> str:
    """The `hf download` that fetches what ``snapshot_dir(ref, allow_patterns=patterns)`` loads: the repository
    whole was SD1.5's pickles and full checkpoints beside its diffusers folders (tens of GB). Files named whole
    are passed as such; of the ``ignored`` patterns, those the included ones can match."""
    pin = f" --revision {ref.revision}" if ref.revision and ref.revision != "main" else ""
    if not any(c in p for p in patterns for c in "*?["):
        return f"hf download {ref.location}{pin} {' '.join(map(shlex.quote, patterns))}"
    # those another one takes whole: the hub's patterns are fnmatch's, whose '*' takes a '/' too ('*.json' takes
    # '*/*.json''s files; 'model*.safetensors' takes 'model.safetensors'). Read as a string, a pattern matched by
    # one whose only wildcard is '*' is taken whole by it ('?' or '[...]' would need more: not pruned)
    if not any(c in p for p in patterns for c in "?["):
        patterns = [p for p in patterns if not any(q != p and fnmatch.fnmatchcase(p, q) for q in patterns)]
    # ('*.bin' where no pattern can take a .bin file, each ending in a literal other suffix: nothing to exclude)
    kept = [p for p in ignored if not (p.startswith("*.") and
                                       not any(i.endswith(p[1:]) or i[-1] in "*?]" for i in patterns))]  # fmt: skip
    return " ".join([f"hf download {ref.location}{pin}", *(f'--include "{p}"' for p in patterns),
                     *(f'--exclude "{p}"' for p in kept)])  # fmt: skip


def _how_to_provide(ref: ModelRef, patterns, ignored=IGNORED_FILES) -> str:
    return (
        f"on a connected machine run `{download_command(ref, patterns, ignored)}` (it fills the cache with the "
        "files depth2img loads), or pass a local directory that holds it"
    )


def require_files(path: Path, what: str, ref: ModelRef, files, patterns) -> None:
    """Refuse the model ``what`` (``ref``'s, at ``path``) where one of ``files`` (relative to ``path``) is missing, in
    one line naming it, with how to fetch it again (a hub cache's `hf download` of ``patterns``, which fetches what
    its snapshot lacks): transformers built a text encoder of its default config and blamed its file, or said an
    estimator's folder was "Unrecognized model ... Should have a model_type key" or "Can't load image processor"."""
    for name in files:
        if not (path / name).is_file():
            advice = (
                "(an incomplete download or copy? fetch or copy it again)"
                if ref.is_local
                else f"(an incomplete download?); {_how_to_provide(ref, patterns)}"
            )
            raise ModelLoadError(f"{what}: {name} is missing {advice}")


def not_cached(ref: ModelRef, patterns, index: str | None = None) -> ModelLoadError:
    """``ref`` (whose loader fetches ``patterns``) is not in the cache, offline; ``index``: the file whose absence
    was found (a backbone's model_index.json), where the repository's snapshot may be there without it."""
    held = _cached_snapshot(ref) if index else None
    # a depth estimator's repository given as a backbone: `hf download`, which the advice below runs, cannot mend that
    estimator = depth_estimator_note(held) if held is not None and ref.kind == "model" else ""
    if estimator:
        return ModelLoadError(
            f"{ref.kind} {ref.label}: its cached download at {held} holds no {index}{estimator}"
        )
    # (a repository of another kind, or a partial download)
    if held is not None:
        return ModelLoadError(f"{ref.kind} {ref.label}: its cached download at {held} holds no {index} (a repository of "
                              f"another kind, or an incomplete download); {_how_to_provide(ref, patterns)}")  # fmt: skip
    # a branch's ref file written by hand with a newline ('echo SHA > refs/main'): huggingface_hub reads it whole, so
    # its snapshot was not found, and was said to hold no model_index.json, read by a lookup that stripped it
    ref_file = _cache_repo(ref) / "refs" / (ref.revision or "main")
    with contextlib.suppress(OSError, ValueError):
        commit = ref_file.read_text(encoding="utf-8")
        if commit != commit.strip() and (_cache_repo(ref) / "snapshots" / commit.strip()).is_dir():
            return ModelLoadError(
                f"{ref.kind} {ref.label}: the cache's {ref_file} holds commit {commit.strip()} with whitespace (a "
                "newline) around it, which huggingface_hub reads as part of the name, so it finds no download of it; "
                f"write the commit alone (`printf %s {commit.strip()} > {ref_file}`)"
            )
    # a mistyped folder of one '/' reads as a hub id: say there is no such folder either ('m/sd15-deptth' beside m/)
    parent = Path(ref.location).parent
    folder = f" (nor is there a folder {ref.location}: {parent} holds no {Path(ref.location).name})" if (
        not ref.is_local and parent.is_dir()) else ""  # fmt: skip
    return ModelLoadError(
        f"{ref.kind} {ref.label} is not in the local Hugging Face cache and the hub is offline "
        f"(local_files_only / HF_HUB_OFFLINE){folder}{_other_revisions(ref)}; {_how_to_provide(ref, patterns)}"
    )


def depth_estimator_note(folder: Path) -> str:
    """Where ``folder`` holds a depth estimator (its config.json names a known depth model type): a note that it is
    one, to be given as the estimator; else ""."""
    from .estimators import OUTPUT_BY_MODEL_TYPE  # (here: estimators imports this module)

    with contextlib.suppress(OSError, ValueError, AttributeError):
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
        if model_type in OUTPUT_BY_MODEL_TYPE:
            return (
                f": it is a depth estimator (a {model_type!r} model), not a diffusion backbone; give it as the "
                "estimator (--estimator)"
            )
    return ""


def _cache_repo(ref: ModelRef) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=ref.location, repo_type="model")


def _cached_snapshot(ref: ModelRef) -> Path | None:
    """The hub cache's snapshot folder of ``ref`` at its revision (a branch's through the cache's refs), if any."""
    repo, revision = _cache_repo(ref), ref.revision or "main"
    # read whole, as huggingface_hub reads it (stripped, a commit it cannot find was said to be here)
    with contextlib.suppress(OSError, ValueError):
        revision = (repo / "refs" / revision).read_text(encoding="utf-8")
    snapshot = repo / "snapshots" / revision
    return snapshot if snapshot.is_dir() else None


def _other_revisions(ref: ModelRef) -> str:
    """What the cache holds of ``ref``'s repository at other revisions (a plain `hf download ID` fetches main, not
    the revision the registry pins), and how to use one."""
    if ref.is_local or not ref.revision:
        return ""
    repo = _cache_repo(ref)
    snapshots = sorted(p for p in repo.glob("snapshots/*") if p.is_dir() and p.name != ref.revision)
    if not snapshots:
        return ""
    names = {}
    for ref_file in repo.glob("refs/*"):
        with contextlib.suppress(OSError):
            names[ref_file.read_text(encoding="utf-8").strip()] = ref_file.name
    held = ", ".join(p.name[:12] + (f" ({names[p.name]})" if p.name in names else "") for p in snapshots[:3])
    chosen = next((p for p in snapshots if names.get(p.name) == "main"), snapshots[0])
    return f"; the cache holds it at {held}, not at revision {ref.revision}: pass {chosen} to use that one"


_LICENCES_SAID: set[str] = set()


def say_licence(ref: ModelRef) -> None:
    """Once per process, a warning that a registry model about to be fetched or loaded from the hub is for
    non-commercial use only (Depth Anything V2 B/L, FLUX.1 [dev]...): said in `depth2img models` and the app's
    backbone list only, a dataset made with one carried no word of it."""
    e = ref.entry
    # (one process of a multi-process run says it: torchrun and accelerate set RANK)
    if e is None or e.commercial or e.name in _LICENCES_SAID or os.environ.get("RANK", "0") != "0":
        return
    _LICENCES_SAID.add(e.name)
    warnings.warn(f"{e.name} ({e.id}) is licensed {e.licence}: not marked for commercial use (`depth2img models` "
                  "lists each model's licence)", Depth2ImgWarning, stacklevel=3)  # fmt: skip


def with_commit(ref: ModelRef, path: Path) -> ModelRef:
    """``ref`` with the commit of the hub snapshot ``path`` (``snapshot_dir``'s) where it named none (a hub id outside
    the registry: its branch's): outputs recorded revision null, and once the branch moved nobody could tell which
    weights had made them. A registry entry's pinned revision, or a local folder, is kept as it is."""
    if ref.revision is None and not ref.is_local and path.parent.name == "snapshots":
        if re.fullmatch(r"[0-9a-f]{40}", path.name):
            from dataclasses import replace

            return replace(ref, revision=path.name)
    return ref


def snapshot_dir(ref: ModelRef, *, local_files_only: bool = False, allow_patterns=None) -> Path:
    """A local directory holding ``ref``'s files, fetching them from the hub only when allowed and reachable."""
    if ref.is_local:
        path = Path(ref.location)
        if is_tiny(ref.name) and ref.entry is not None:
            from . import tiny  # tiny models are deterministic: built on first use, rebuilt when stale

            tiny.ensure(ref.entry.tiny, path)
        if not path.is_dir():
            hint = " (write the tiny models with `depth2img tiny-model DIR`)" if is_tiny(ref.name) else ""
            raise ModelLoadError(f"{ref.kind} {ref.name!r}: directory {path} does not exist{hint}")
        return path
    say_licence(ref)

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = allow_patterns or ESTIMATOR_FILES
    kwargs = dict(
        repo_id=ref.location, revision=ref.revision, allow_patterns=patterns, ignore_patterns=IGNORED_FILES
    )
    try:
        return Path(snapshot_download(local_files_only=True, **kwargs))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as err:
        # (huggingface_hub's IncompleteSnapshotError: the snapshot is there, but the repository's cached file list
        # names files it lacks)
        incomplete = err if getattr(err, "snapshot_path", None) else None
    if hub_offline(local_files_only):
        if incomplete is None:
            raise not_cached(ref, patterns)
        fp16, fp16_incomplete = _fp16_download(ref, patterns)
        if fp16 is not None:
            return fp16
        advice = _how_to_provide(ref, patterns)
        if fp16_incomplete is not None:  # what a download of the variant misses, and how to complete it
            incomplete, advice = fp16_incomplete, _how_to_provide(ref, *_fp16_patterns(patterns))
        missing = re.search(r"is incomplete: (.*? are missing \(.*?\))\.", str(incomplete))
        raise ModelLoadError(
            f"{ref.kind} {ref.label}: the cached download at {incomplete.snapshot_path} is incomplete"
            f"{f', {missing.group(1)}' if missing else ''}; {advice}"
        )
    if not hub_reachable():
        raise ModelLoadError(
            f"{ref.kind} {ref.label} is not in the local cache and the Hugging Face hub cannot be reached; "
            f"{_how_to_provide(ref, patterns)}"
        )
    try:
        return Path(snapshot_download(**kwargs))
    except GatedRepoError:
        raise ModelLoadError(
            f"{ref.kind} {ref.label} is gated: accept its licence on huggingface.co and log in (`hf auth login`)"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ModelLoadError(f"{ref.kind} {ref.label}: no such repository or revision on the hub") from None
    except (HfHubHTTPError, OSError) as err:
        raise ModelLoadError(
            f"{ref.kind} {ref.label} could not be downloaded ({first_line(err)}); {_how_to_provide(ref, patterns)}"
        ) from None


def snapshot(ref: ModelRef, *, local_files_only: bool = False, allow_patterns=None) -> tuple[Path, ModelRef]:
    """``snapshot_dir``'s folder of ``ref``, and ``ref`` with the commit it holds (``with_commit``): every loader
    wants both, the files to load and what its outputs record of them."""
    path = snapshot_dir(ref, local_files_only=local_files_only, allow_patterns=allow_patterns)
    return path, with_commit(ref, path)


def _fp16_download(ref: ModelRef, patterns) -> tuple[Path | None, Exception | None]:
    """The cached snapshot of ``ref`` where it holds the fp16 variant of every weights file (``hf download
    --include "*fp16*"``; the variant is otherwise ignored): the hub's own cached file list then calls it complete
    for the variant's files alone. Else None, and the hub's word on what the variant's download misses where the
    snapshot holds some of its files."""
    from huggingface_hub import snapshot_download

    variant, ignored = _fp16_patterns(patterns)
    try:
        path = Path(snapshot_download(repo_id=ref.location, revision=ref.revision, local_files_only=True,
                                      allow_patterns=variant, ignore_patterns=ignored))  # fmt: skip
    except (OSError, ValueError) as err:  # (its LocalEntryNotFoundError, IncompleteSnapshotError too)
        held = getattr(err, "snapshot_path", None)
        return None, err if held and any(Path(held).rglob("*.fp16.safetensors")) else None
    return (path if weights_variant(path) == "fp16" else None), None


def _fp16_patterns(patterns) -> tuple[list[str], list[str]]:
    """The files (allowed, ignored) of a download of ``patterns``' weights in diffusers' fp16 variant alone."""
    variant = [p for p in patterns if not p.endswith(".safetensors")] + [
        "*.fp16.safetensors",
        "*/*.fp16.safetensors",
    ]
    return variant, [p for p in IGNORED_FILES if p != "*fp16*"]


ALLOW_PICKLE_ENV = "DEPTH2IMG_ALLOW_PICKLE"


def pickle_allowed() -> bool:
    """Pickle weights (.bin) run code when loaded; they are refused unless DEPTH2IMG_ALLOW_PICKLE=1 says otherwise."""
    return os.environ.get(ALLOW_PICKLE_ENV, "").strip() == "1"


def use_safetensors() -> bool | None:
    """What to pass as ``use_safetensors`` to from_pretrained: True (safetensors only) unless pickles are allowed."""
    return None if pickle_allowed() else True


PICKLE_PATTERNS = ("*.bin", "*.ckpt", "*.pt", "*.pth")


def require_safetensors(path: Path, ref: ModelRef, components=()) -> None:
    """Refuse a folder whose weights exist only as pickles (``.bin``/``.ckpt``/``.pt``), unless explicitly allowed;
    in a pipeline's folder, each of its ``components``' subfolders (from its model index: a ``vae/`` of pickles
    beside safetensors elsewhere passed, and failed in diffusers with its own message, printed twice, and no word
    of pickles). A model's subfolder (its ``config.json``) with no weights, or a link to a file gone from the hub
    cache, is an incomplete download (diffusers said "no file named diffusion_pytorch_model.safetensors")."""
    if pickle_allowed():
        return
    folders = [path / name for name in components if (path / name).is_dir()] or [path]
    for folder in folders:
        if any(p.exists() for p in folder.rglob("*.safetensors")):  # (a broken link's is_file() is False too)
            continue
        pickles = [p.name for pattern in PICKLE_PATTERNS for p in folder.rglob(pattern)]
        if not pickles and folder != path and not (folder / "config.json").is_file():
            continue  # a component with no weights (a scheduler, a tokenizer: no config.json)
        where = f"{path}" if folder == path else f"{path}, whose {folder.name}/"
        if not pickles:  # (nothing to convert: advice on pickles sent the user the wrong way)
            raise ModelLoadError(f"{ref.kind} {ref.name!r} at {where} has no weights (no .safetensors file): an "
                                 "incomplete download or copy? fetch or copy it again")  # fmt: skip
        raise ModelLoadError(
            f"{ref.kind} {ref.name!r} at {where} has only pickle weights ({', '.join(sorted(pickles)[:3])}); depth2img "
            f"loads .safetensors weights only (convert them with safetensors' `save_file`, or set "
            f"{ALLOW_PICKLE_ENV}=1 if you trust the file)"
        )


def weights_variant(path: Path) -> str | None:
    """``"fp16"`` where a folder's (or one of its components') safetensors weights are all diffusers' fp16 variant
    (``*.fp16.safetensors``, as a download of only those leaves it): from_pretrained looks for them only when asked
    for that variant (it said "no file named diffusion_pytorch_model.safetensors", beside them), and then takes a
    component's plain weights where it has no variant. They are cast to the dtype asked for."""
    folders = {f.parent for f in path.rglob("*.safetensors")}
    only_fp16 = (all(".fp16." in f.name for f in folder.glob("*.safetensors")) for folder in folders)
    return "fp16" if any(only_fp16) else None


@contextlib.contextmanager
def quiet_log(library: str, *, errors_too: bool = False):
    """``library``'s log (``diffusers`` or ``transformers``, both with the same logging helpers) at errors only for
    the block (``errors_too``: silent, for a block whose failure our own error says in one line), then back to the
    user's verbosity."""
    import importlib

    logging = importlib.import_module(f"{library}.utils.logging")
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.CRITICAL if errors_too else logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


# what diffusers logs at error level before it raises a missing weights file (our error says it, in one line)
FETCH_ERROR = "An error occurred while trying to fetch"


# what loading a model's files raises for a damaged or foreign folder: one line each (safetensors' own error, for a
# zero-byte or truncated text encoder or estimator file, which transformers does not wrap, was an internal error)
LOAD_ERRORS = (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError)


def unreadable_weights(path: Path, err: BaseException) -> str | None:
    """Where loading the model at ``path`` failed on a safetensors file's header (``err`` or its cause is safetensors'
    own error): which of its files (relative to ``path``) cannot be read, and why, for the message's end; else None.
    A zero-byte or truncated file was named by diffusers twice in full, and by transformers (a text encoder, an
    estimator) not at all: "could not be loaded: Error while deserializing header: header too small"."""
    chain, seen = err, set()
    while chain is not None and not isinstance(chain, SafetensorError) and id(chain) not in seen:
        seen.add(id(chain))
        chain = chain.__cause__ or chain.__context__
    if not isinstance(chain, SafetensorError):
        return None
    return damaged_weights(path)


def damaged_weights(path: Path, files=None) -> str | None:
    """Which of ``files`` (default: every ``.safetensors`` file under ``path``) is empty or cannot be read (its header),
    relative to ``path`` and with how to fetch it again; None where all read."""
    from safetensors import safe_open

    files = sorted(p for p in path.rglob("*.safetensors") if p.is_file()) if files is None else files
    for file in files:
        name = file.relative_to(path).as_posix()
        # (in a hub cache the snapshot's file is a link to a blob, both of which a new download takes as fetched)
        advice = (
            f"an incomplete download? delete it and the blob it links to ({file.resolve()}), then fetch it again"
            if file.is_symlink()
            else "an incomplete download or copy? fetch or copy it again"
        )
        if file.stat().st_size == 0:
            return f"{name} is empty (0 bytes): {advice}"
        try:
            with safe_open(file, framework="pt"):
                pass
        except (SafetensorError, OSError) as bad:
            return f"{name} cannot be read ({first_line(bad)}): {advice}"
    return None


@contextlib.contextmanager
def dropped_log(library: str, prefix: str):
    """``library``'s log records that start with ``prefix`` dropped for the block, the rest shown as ever (a
    verbosity would silence its warnings too: a checkpoint's unexpected keys)."""
    import logging

    class Drop(logging.Filter):
        def filter(self, record):
            return not record.getMessage().startswith(prefix)

    drop = Drop()
    handlers = list(logging.getLogger(library).handlers)  # (the library's own: it does not propagate)
    for handler in handlers:
        handler.addFilter(drop)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(drop)


def library_class(library: str, name: str):
    """``library``'s (diffusers' or transformers') class ``name``, imported with transformers' log quiet. Without
    torchvision (not a dependency), transformers warns at the first import of each image processor that it falls
    back to its PIL one, with advice to install torchvision: a pipeline module's import warned for the safety
    checker's and IP-Adapter's processors, which depth2img does not use, and loading SD2-depth or a depth estimator
    for the DPT and ZoeDepth ones, whose PIL versions the tests compare against transformers' pipeline. transformers
    warns once per class, so a quiet first import keeps it quiet."""
    import importlib

    module = importlib.import_module(library)
    with quiet_log("transformers"):
        return getattr(module, name)


# the share of a transformers model's weights its file may lack: more is another model's file or a damaged one, whose
# missing weights transformers fills at random (with a warning the CLI keeps quiet). A real checkpoint can lack a few
# harmless ones: DPT-hybrid's first fusion layer's unused residual block, ~1 % of it.
MAX_MISSING_SHARE = 0.05


def lacks_weights(what: str, missing, total: int) -> ModelLoadError:
    """The one-line refusal of a model file (``what``) without the weights ``missing`` of its ``total``."""
    missing = sorted(missing)
    return ModelLoadError(
        f"{what} lacks {len(missing)} of its {total} weights ({missing[0]}, ...): another model's file, or a "
        "damaged one?"
    )


def from_pretrained_checked(model_class, path: Path, what: str, **kwargs):
    """``model_class.from_pretrained(path, **kwargs)`` (a transformers model), refused when its file lacks more than
    ``MAX_MISSING_SHARE`` of its parameters (by size), or holding one of another shape."""
    # (a weight of another shape raised "... For details look at the above report!", a report the CLI keeps quiet)
    model, info = model_class.from_pretrained(
        path, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
    )
    if info["mismatched_keys"]:
        name, held, wanted = sorted(info["mismatched_keys"], key=lambda m: m[0])[0]
        raise ModelLoadError(
            f"{what} holds {len(info['mismatched_keys'])} weights of other shapes than the model's ({name}: "
            f"{tuple(held)} for {tuple(wanted)}, ...): another model's file, or a damaged one?"
        )
    missing = set(info["missing_keys"])
    sizes = dict(model.named_parameters())
    lacked = sum(sizes[name].numel() for name in missing if name in sizes)
    if lacked > MAX_MISSING_SHARE * sum(p.numel() for p in sizes.values()):
        raise lacks_weights(what, missing, len(sizes))
    # weights the model has no place for: a config of fewer layers than its file's ran a cut-down model, without a
    # word (said, not refused: a real file may hold a few that are not used)
    unexpected = sorted(info["unexpected_keys"])
    if len(unexpected) > MAX_MISSING_SHARE * len(sizes):
        warnings.warn(f"{what} holds {len(unexpected)} weights its model has no place for ({unexpected[0]}, ...): "
                      "is its config the file's (fewer layers)? They are not used", Depth2ImgWarning,
                      stacklevel=2)  # fmt: skip
    return model
