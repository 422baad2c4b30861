"""``run_transform``: transform many inputs and write their outputs (what ``depth2img transform`` calls)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from .depth_run import RunReport, _stems
from .errors import Depth2ImgError, Depth2ImgWarning, InputError
from .io import load_image
from .outputs import write_transform_result


def run_transform(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    prompt: str | None = None,
    preset: str | None = None,
    model=None,
    estimator=None,
    depth: Sequence[str | os.PathLike] | None = None,
    depth_polarity: str | None = None,
    negative_prompt: str | None = None,
    seed: int | None = None,
    num_images: int = 1,
    scheduler: str | None = None,
    knobs: dict | None = None,
    load_options: dict | None = None,
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> RunReport:
    """``model`` is a loaded SceneTransformer or a name for ``SceneTransformer.from_pretrained``."""
    from tqdm.auto import tqdm

    from .transformer import SceneTransformer

    report = RunReport(on_error=on_error)
    paths = report.collect(inputs)
    if depth is not None and len(depth) != len(paths):
        raise InputError(f"--depth: {len(depth)} depth files for {len(paths)} inputs; give one per input")
    if not paths:
        return report
    st = model if isinstance(model, SceneTransformer) else SceneTransformer.from_pretrained(
        model, estimator=estimator, **(load_options or {})
    )  # fmt: skip
    out_dir = Path(out_dir)
    stems = _stems(paths)
    bar = tqdm(paths, unit="img", desc="transform", disable=not progress or len(paths) == 1)
    for i, path in enumerate(bar):
        try:
            image = load_image(path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Depth2ImgWarning)  # forwarded below from result.warnings
                result = st.transform(
                    image, prompt, preset=preset, negative_prompt=negative_prompt,
                    depth=depth[i] if depth is not None else None, depth_polarity=depth_polarity,
                    seed=seed, num_images=num_images, scheduler=scheduler, progress=progress, **(knobs or {}),
                )  # fmt: skip
            for note in result.warnings if on_warning else ():
                on_warning(f"{path}: {note}")
            records = write_transform_result(result, out_dir, stems[i], source=str(path))
            report.done.append(path)
            report.written += [out_dir / r["output"] for r in records]
        except Depth2ImgError as err:
            msg = str(err)
            report.fail(msg if str(path) in msg else f"{path}: {msg}")
        except OSError as err:
            report.fail(f"{path}: cannot write to {out_dir} ({err.strerror or err})")
    return report
