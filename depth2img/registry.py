"""The model registry: named estimators and diffusion backbones from ``configs/models.yaml``.

``resolve_estimator`` / ``resolve_backbone`` turn whatever the user typed (a registry name, ``tiny``
or ``tiny/<entry>``, a hub id, or a local directory) into a ``ModelRef``; the loader does the rest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError

ESTIMATOR_OUTPUTS = ("relative_inverse_depth", "metric_depth")
PIPELINE_KINDS = ("sd15-controlnet", "sd2-depth", "sdxl-controlnet", "flux-control")
TINY_ENV = "DEPTH2IMG_TINY_DIR"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: the YAML spec forbids it,
    and PyYAML keeps the last silently (a job's second ``variations:`` would drop the first's)."""

    def flatten_mapping(self, node):
        # Checked here, before the merge keys are resolved: flattening rewrites a merged anchor's node in place (its
        # own keys after those it merged), and a mapping merging an anchor that is built later made it look like a
        # duplicate. Every mapping passes here first (construct_mapping flattens it), each once.
        checked = self.__dict__.setdefault("_unique_checked", set())
        if id(node) not in checked:
            checked.add(id(node))
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base' keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # unhashable: the base class says so
                    break
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        super().flatten_mapping(node)


def read_yaml(text: str):
    """``yaml.safe_load`` refusing duplicate keys (``yaml.YAMLError`` with a ``problem`` and ``problem_mark``)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def read_yaml_file(path: Path, label: str, kind: str):
    """The YAML file ``path`` (``read_yaml``), each way it can fail one InputError starting with ``label``: missing,
    unreadable, not UTF-8 (``kind``: what the file should hold, "job" or "presets"), malformed (its line and
    column)."""
    try:
        return read_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{label}: no such file") from None
    except OSError as err:  # a folder, unreadable
        raise InputError(f"{label}: cannot be read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{label}: not UTF-8 text (byte {err.start}); is it a {kind} YAML?") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None)
        raise InputError(f"{label}: malformed YAML{where}" + (f": {problem}" if problem else "")) from None


def configs_dir() -> Path:
    """The folder holding the YAML configs: ``configs/`` in a checkout, ``depth2img/configs`` when installed."""
    here = Path(__file__).resolve().parent
    # the installed copy first: in an install, here.parent is site-packages, where another package's configs/ folder
    # was read as ours ("internal error: KeyError: 'default_estimator'")
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "models.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"depth2img configs not found next to {here}")


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    section: str  # "estimators" or "backbones"
    id: str
    revision: str = "main"
    licence: str = "unknown"
    commercial: bool = False
    tiny: str | None = None
    output: str | None = None  # estimators
    model_type: str | None = None  # estimators: the transformers config's model_type its files hold
    pipeline: str | None = None  # backbones
    controlnet: str | None = None
    lora: str | None = None  # a LoRA repo loaded on top of `id` (Flux depth Control LoRA)
    companion_revision: str = "main"  # revision of the controlnet / lora repo (each repo has its own history)
    for_pipeline: str | None = None  # loras: the pipeline family the LoRA was trained for
    scheduler: str | None = None  # loras: the scheduler it was distilled for
    weight_name: str | None = None  # loras: the file inside a repo holding several
    knobs: dict = field(default_factory=dict)  # loras: default knobs while loaded
    native_size: int | None = None
    gated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: where to load it from, and what the registry knows of it."""

    name: str  # what the user asked for
    location: str  # hub id or local directory
    revision: str | None
    is_local: bool
    entry: RegistryEntry | None = None
    kind: str = "model"  # what messages call it: model (a backbone), depth estimator, LoRA, ControlNet

    @property
    def label(self) -> str:
        return self.name if self.entry is None else f"{self.entry.name} ({self.location})"


_KNOWN_KEYS = set(RegistryEntry.__dataclass_fields__) - {"name", "section", "extra"}


@lru_cache(maxsize=1)
def load_registry() -> dict[str, Any]:
    path = configs_dir() / "models.yaml"
    raw = read_yaml(path.read_text(encoding="utf-8"))
    registry: dict[str, Any] = {"estimators": {}, "backbones": {}, "loras": {}}
    for section in ("estimators", "backbones", "loras"):
        for name, values in (raw.get(section) or {}).items():
            unknown = set(values) - _KNOWN_KEYS
            if unknown:
                raise ValueError(f"{path}: entry {name!r} has unknown keys {sorted(unknown)}")
            entry = RegistryEntry(name=name, section=section, **values)
            if section == "estimators" and entry.output not in ESTIMATOR_OUTPUTS:
                raise ValueError(f"{path}: estimator {name!r} output must be one of {ESTIMATOR_OUTPUTS}")
            if section == "estimators" and not entry.model_type:
                raise ValueError(f"{path}: estimator {name!r} has no model_type")
            if section == "loras" and entry.for_pipeline not in PIPELINE_KINDS:
                raise ValueError(f"{path}: lora {name!r} for_pipeline must be one of {PIPELINE_KINDS}")
            if section == "backbones" and entry.pipeline not in PIPELINE_KINDS:
                raise ValueError(f"{path}: backbone {name!r} pipeline must be one of {PIPELINE_KINDS}")
            registry[section][name] = entry
    registry["default_estimator"] = raw["default_estimator"]
    registry["default_backbone"] = raw["default_backbone"]
    return registry


def estimators() -> dict[str, RegistryEntry]:
    return load_registry()["estimators"]


def backbones() -> dict[str, RegistryEntry]:
    return load_registry()["backbones"]


def tiny_root() -> Path:
    """Where ``tiny`` models live: ``$DEPTH2IMG_TINY_DIR`` or ``~/.cache/depth2img/tiny``."""
    return Path(os.environ.get(TINY_ENV) or Path.home() / ".cache" / "depth2img" / "tiny")


def _resolve(name: str | os.PathLike, section: str) -> ModelRef:
    entries = load_registry()[section]
    # the argument that names it (in input errors), and what loading messages call it
    what, kind = {"estimators": ("estimator", "depth estimator"), "backbones": ("model", "model"),
                  "loras": ("lora", "LoRA")}[section]  # fmt: skip
    if name is None or (isinstance(name, str) and not name.strip()):
        name = load_registry()["default_" + section[:-1]]  # loras have no default: resolve_lora refuses empty
    name = _text(name, what, f"a registry name ({', '.join(entries)}), a hub id (owner/name) or a folder")
    if is_tiny(name):
        entry_name = load_registry().get("default_" + section[:-1]) if name == "tiny" else name[5:]
        if entry_name not in entries or entries[entry_name].tiny is None:
            known = ", ".join("tiny/" + n for n in entries if entries[n].tiny is not None)
            if entry_name is None:  # no default (loras)
                raise InputError(f"{what} 'tiny': there is no default tiny {what}; name one: {known}")
            raise InputError(f"{what} {name!r}: no tiny model for {entry_name!r}; known: {known}")
        entry = entries[entry_name]
        folder = tiny_root() / entry.tiny
        return ModelRef(name=name, location=str(folder), revision=None, is_local=True, entry=entry, kind=kind)
    if name in entries:
        entry = entries[name]
        return ModelRef(name=name, location=entry.id, revision=entry.revision, is_local=False, entry=entry,
                        kind=kind)  # fmt: skip
    ref = replace(_folder_or_hub_id(name, what, f"a registry name ({', '.join(entries)}), "), kind=kind)
    # A hub id; if it matches a registry entry, keep what the registry knows (licence, output kind).
    entry = None if ref.is_local else next((e for e in entries.values() if e.id == name), None)
    return replace(ref, revision=entry.revision, entry=entry) if entry else ref


def _text(name, what: str, takes: str) -> str:
    """``name`` as text: a str or a path, not empty; anything else refused, naming it (str() had made a hub id of
    ``["a/b"]`` and of bytes)."""
    if not isinstance(name, (str, os.PathLike)) or not str(name).strip():
        raise InputError(f"{what} must be {takes}, got {name!r}")
    return str(name)


def _folder_or_hub_id(name: str, what: str, known: str = "") -> ModelRef:
    """``name`` as an existing local folder or a hub id, which is exactly "owner/name"; anything else is refused
    (``known``: what else the caller takes, as the error lists it)."""
    path = Path(name).expanduser()
    if path.is_dir():
        # absolute: a relative folder ('m/sd15-depth') was recorded as typed, as a hub id would be
        return ModelRef(name=name, location=os.path.abspath(path), revision=None, is_local=True)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise InputError(
            f"{what} {name!r} is not {known}a hub id (owner/name) or an existing local directory"
        )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:  # 'me/sd15@main' was an internal error (HFValidationError) or the advice to `hf download me/sd15@main`
        validate_repo_id(name)
    except HFValidationError:
        raise InputError(
            f"{what} {name!r} is not {known}a valid hub id (owner/name, of letters, digits, '-', '_' and '.'; no "
            "revision in it) or an existing local directory"
        ) from None
    return ModelRef(name=name, location=name, revision=None, is_local=False)


def is_tiny(name) -> bool:
    """Whether ``name`` is a tiny random-weight model (``tiny`` or ``tiny/<entry>``): a folder whose name starts with
    "tiny" (tiny-sd, tinyfoo) is none (it got the tiny estimator, its LoRA checks skipped)."""
    return isinstance(name, str) and (name == "tiny" or name.startswith("tiny/"))


def default_estimator_for(model: str | os.PathLike | None) -> str:
    """The estimator a backbone uses unless told otherwise: tiny backbones get the tiny estimator."""
    return "tiny" if is_tiny(model) else load_registry()["default_estimator"]


def resolve_estimator(name: str | os.PathLike | None) -> ModelRef:
    return _resolve(name, "estimators")


def resolve_backbone(name: str | os.PathLike | None) -> ModelRef:
    return _resolve(name, "backbones")


def loras() -> dict[str, RegistryEntry]:
    return load_registry()["loras"]


def resolve_lora(name: str | os.PathLike) -> ModelRef:
    # (no default LoRA: an empty name is refused, not taken as the default)
    return _resolve(
        _text(name, "lora", f"a registry name ({', '.join(loras())}), a hub id or a folder"), "loras"
    )


def resolve_controlnet(name: str | os.PathLike) -> ModelRef:
    """A depth ControlNet given apart from its backbone (a fine-tune, a smaller one): a local folder holding a
    diffusers ``ControlNetModel`` or its hub id. A registry backbone's own ControlNet keeps its pinned revision."""
    name = _text(name, "controlnet", "a hub id (owner/name) or a folder holding a diffusers ControlNet")
    ref = replace(_folder_or_hub_id(name, "controlnet"), kind="ControlNet")
    if ref.is_local:
        return ref
    pinned = next((e for e in backbones().values() if e.controlnet == ref.location), None)
    return replace(ref, revision=pinned.companion_revision) if pinned else ref


def resolve_companions(lora=None, controlnet=None) -> tuple[ModelRef | None, ModelRef | None]:
    """A few-step ``lora`` and a ``controlnet`` given apart from the backbone, resolved; None where not given (an
    empty ``lora`` is none; an empty ``controlnet`` is refused). Serves from_pretrained, run_transform, run_job and
    the CLI (each resolved the pair itself)."""
    return (resolve_lora(lora) if lora else None), (
        resolve_controlnet(controlnet) if controlnet is not None else None
    )
