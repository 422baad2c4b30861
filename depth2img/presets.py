"""Prompt presets (``configs/presets.yaml`` plus user files): templates that wrap the user's words."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .knobs import DEFAULT_KNOBS, check_knobs
from .registry import configs_dir, read_yaml_file

PRESET_ENV = "DEPTH2IMG_PRESETS"
KNOBS = tuple(DEFAULT_KNOBS)
_KEYS = {"group", "prompt", "negative", "knobs"}


@dataclass(frozen=True)
class Preset:
    name: str
    prompt: str  # template holding {prompt}
    negative: str = ""
    group: str = ""
    knobs: dict = field(default_factory=dict)


def _load_file(path: Path, origin: str = "") -> dict[str, Preset]:
    """One presets YAML's presets; errors name the file, and ``origin`` (where its path came from) when given."""
    label = f"presets file {path}" + (f" (from {origin})" if origin else "")
    raw = read_yaml_file(path, label, "presets") or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("presets"), dict):
        raise InputError(f"{label}: must hold a 'presets:' mapping")
    out = {}
    for name, spec in raw["presets"].items():
        where = f"{label}: preset {name!r}"
        # a name no --preset could give: 'yes:' is read as True and 'null:' as None ("unknown preset 'yes'; known:
        # ..., True"), '+' joins presets ("unknown preset 'a'; known: a+b"), ' p ' is stripped where it is used
        if not isinstance(name, str) or not name.strip() or "+" in name or name != name.strip():
            raise InputError(
                f"{where}: a preset's name is text without '+' (which joins presets) or spaces at its ends; quote "
                "names YAML reads otherwise ('yes', 'on', 'null', numbers)"
            )
        if not isinstance(spec, dict):
            raise InputError(f"{where} must be a mapping")
        unknown = set(spec) - _KEYS
        if unknown:
            raise InputError(f"{where} has unknown keys {sorted(unknown)} (allowed: {sorted(_KEYS)})")
        for key in ("prompt", "negative", "group"):
            if spec.get(key) is not None and not isinstance(spec[key], str):
                raise InputError(f"{where}: {key} must be a string, got {spec[key]!r}")
        template = spec.get("prompt") or "{prompt}"
        if "{prompt}" not in template:
            raise InputError(f"{where}: prompt template must contain {{prompt}}, got {template!r}")
        knobs = spec.get("knobs") or {}
        if not isinstance(knobs, dict):
            raise InputError(f"{where}: knobs must be a mapping of knob names to values, got {knobs!r}")
        bad = set(knobs) - set(KNOBS)
        if bad:
            raise InputError(f"{where} has unknown knobs {sorted(bad)} (allowed: {', '.join(KNOBS)})")
        try:
            check_knobs({**DEFAULT_KNOBS, **knobs})
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
        out[str(name)] = Preset(
            str(name), template, spec.get("negative") or "", spec.get("group") or "", dict(knobs)
        )
    return out


def load_presets(extra_files=()) -> dict[str, Preset]:
    """Bundled presets, then $DEPTH2IMG_PRESETS files, then ``extra_files`` (one path or several); a later file
    overrides a name."""
    if isinstance(extra_files, (str, os.PathLike)):  # one file (a string was read letter by letter)
        extra_files = (extra_files,)
    elif extra_files is None:
        extra_files = ()
    files = [(configs_dir() / "presets.yaml", "")]
    files += [(Path(p), f"${PRESET_ENV}") for p in os.environ.get(PRESET_ENV, "").split(os.pathsep) if p]
    files += [(Path(p), "") for p in extra_files]
    presets: dict[str, Preset] = {}
    for f, origin in files:
        presets.update(_load_file(f, origin))
    return presets


def _phrases(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def add_phrases(text: str, before: str = "", after: str = "") -> str:
    """``text`` kept as written (a user's "1,000 lanterns" or a phrase repeated for weight), with the comma-separated
    phrases of ``before`` and ``after`` that it does not hold already joined on with ", " (``winter+snow`` then
    says "snow-covered ground" once). A piece touching ``text`` (a template's "a photo of " before its
    ``{prompt}``) is glued on as written, never dropped."""
    have = set(_phrases(text))

    def new(pieces):
        kept = []
        for p in pieces:
            p = p.strip()
            if p and p not in have:
                have.add(p)
                kept.append(p)
        return kept

    pre, post = before.split(","), after.split(",")
    core = (pre[-1] + text.strip() + post[0]).strip()
    return ", ".join(new(pre[:-1]) + ([core] if core else []) + new(post[1:]))


_NEGATIONS = ("no", "not", "without", "never", "zero")


def contradictions(prompt: str, negative: str) -> list[str]:
    """The negative prompt's phrases that the prompt says too, as whole words (``winter+summer``: "snow", "bare
    trees", "summer"; ``spring+night``: "daylight"), which steer the model towards and away from one thing. A
    phrase the prompt only says negated ("no people", "without snow") agrees with the negative prompt."""
    import re

    text = prompt.casefold()
    negated = re.compile(rf"(?<!\w)(?:{'|'.join(_NEGATIONS)})\s+$")

    def said(phrase):
        # whole words where a phrase has them at its ends: "(worst quality)" and "c++" have none there for \b
        for m in re.finditer(rf"(?<!\w){re.escape(phrase.casefold())}(?!\w)", text):
            if not negated.search(text, 0, m.start()):
                return True
        return False

    return [p for p in dict.fromkeys(_phrases(negative)) if said(p)]


SUBJECT = "the scene"  # what a template that names a subject gets where the user gives no words


def check_presets(presets, name: str = "presets") -> dict[str, Preset]:
    """``presets`` as ``load_presets`` returns them (a dict of a str to a str was taken, and failed at its first use
    with an AttributeError)."""
    if not isinstance(presets, dict) or not all(
        isinstance(k, str) and isinstance(v, Preset) for k, v in presets.items()
    ):
        raise InputError(f"{name} must be a dict of presets (presets.load_presets), got {presets!r}")
    return presets


def check_words(prompt, preset, negative_prompt=None, label=str) -> None:
    """The words of a transform: strings where given, and a prompt or a preset."""
    for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt), ("preset", preset)):
        if text is not None and not isinstance(text, str):
            raise InputError(f"{label(name)} must be a string, got {type(text).__name__} {text!r}")
    if (prompt is None or not prompt.strip()) and not preset:
        raise InputError(
            f"give a {label('prompt')} or a {label('preset')} (see `depth2img presets`); both are empty"
        )


def resolve(prompt: str | None, preset: str | None, presets: dict[str, Preset] | None = None):
    """(final prompt, preset negative prompt, preset knobs) for the user's words and ``a+b`` presets."""
    presets = load_presets() if presets is None else presets
    text = (prompt or "").strip()
    negative, knobs = "", {}
    names = [n.strip() for n in preset.split("+")] if preset else []
    if "" in names:  # ("unknown preset ''", naming neither the value given nor what was wrong with it)
        raise InputError(
            f"preset {preset!r} has an empty name between or beside its '+'; join names as winter+night"
        )
    # a template whose words lead into the user's ("a watercolor painting of {prompt}") with none given: of the scene
    # (the prompt was "a watercolor painting of, soft washes", or "... of in winter, ..." after winter)
    if not text and any(presets[n].prompt.partition("{prompt}")[0].split(",")[-1].strip()
                        for n in names if n in presets):  # fmt: skip
        text = SUBJECT
    for name in names:
        if name not in presets:
            raise InputError(
                f"unknown preset {name!r}; known: {', '.join(presets)} (see `depth2img presets`)"
            )
        p = presets[name]
        pre, _, post = p.prompt.partition("{prompt}")
        text = add_phrases(text, pre, post.replace("{prompt}", text))
        negative = add_phrases(negative, after=", " + p.negative)
        knobs.update(p.knobs)
    return text, negative, knobs
