"""Writing generation results: PNGs carrying their metadata, depth products, and ``manifest.jsonl``.

Files are written atomically (temp file + rename); a manifest line is appended only after its files exist.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .io import PNG_COMPRESS_LEVEL, atomic_path, write_depth_products

METADATA_KEY = "depth2img"  # PNG text chunk holding the JSON metadata
MANIFEST = "manifest.jsonl"


def save_png(image, path, metadata: dict | None = None) -> Path:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if metadata is not None:
        info.add_text(METADATA_KEY, json.dumps(metadata, sort_keys=True))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return Path(path)


def read_png_metadata(path) -> dict:
    from PIL import Image

    with Image.open(path) as img:
        return json.loads(img.info[METADATA_KEY])


def append_manifest(path, records: list[dict]) -> None:
    """Append one JSON line per record to the manifest file ``path`` and flush them to disk."""
    with open(path, "a", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def safe_name(text: str) -> str:
    """A file-name fragment: letters, digits, '+', '-' and '_' only."""
    return re.sub(r"[^A-Za-z0-9+_-]+", "-", text).strip("-")[:60] or "x"


def write_transform_result(
    result, out_dir, stem: str, *, source: str = "", depth_formats=("png16", "preview")
) -> list[dict]:
    """Images (metadata in their PNG text), depth products and the control image; then manifest lines."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    records = []
    try:
        written += write_depth_products(result.depth, out_dir, stem, depth_formats)
        written.append(save_png(result.control_image, out_dir / f"{stem}_control.png"))
        for img, meta in zip(result.images, result.metadata):
            tag = f"_{safe_name(meta['preset'])}" if meta.get("preset") else ""
            path = out_dir / f"{stem}{tag}_s{meta['seed']}.png"
            meta = {**meta, "source": source, "output": path.name}
            written.append(save_png(img, path, meta))
            records.append(meta)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    append_manifest(out_dir / MANIFEST, records)
    return records
