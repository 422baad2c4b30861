"""Tiny random-weight models of every kind the registry knows, built from configs (the real classes at
tiny size) and saved in the same on-disk layout as their hub repos, as safetensors.

``depth2img tiny-model DIR`` writes them; the registry names ``tiny`` / ``tiny/<entry>`` load them through
the same loader as real models. Weights are seeded, so two builds are identical.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

SEED = 0


def _byte_vocab() -> dict[str, int]:
    """GPT-2's byte-to-unicode table (256 symbols), rebuilt here (transformers 5 no longer exports it)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {ch: i for i, ch in enumerate(chars)}
    vocab.update({ch + "</w>": 256 + i for i, ch in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    return vocab


def clip_tokenizer():
    """A byte-level CLIP tokenizer (514 tokens) that loads offline with model_max_length 77."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(_byte_vocab()))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(
            str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=77
        )


def _seed():
    import torch

    torch.manual_seed(SEED)


def depth_anything():
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    _seed()
    backbone = Dinov2Config(
        image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=64, out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=False,
    )  # fmt: skip
    config = DepthAnythingConfig(
        backbone_config=backbone, patch_size=14, reassemble_hidden_size=32,
        neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
    )  # fmt: skip
    processor = DPTImageProcessor(
        do_resize=True, size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
        resample=3, do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )  # fmt: skip
    return DepthAnythingForDepthEstimation(config).eval(), processor


def dpt():
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    _seed()
    config = DPTConfig(
        image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=4, backbone_out_indices=(0, 1, 2, 3),
        num_attention_heads=4, intermediate_size=37, neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16,
    )  # fmt: skip
    processor = DPTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return DPTForDepthEstimation(config).eval(), processor


def zoedepth():
    from transformers import BeitConfig, ZoeDepthConfig, ZoeDepthForDepthEstimation, ZoeDepthImageProcessor

    _seed()
    backbone = BeitConfig(
        image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=37, use_relative_position_bias=True, reshape_hidden_states=False,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = ZoeDepthConfig(
        backbone_config=backbone, neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16,
        bottleneck_features=16, num_relative_features=8, bin_embedding_dim=16, num_attractors=[4, 4, 2, 1],
        bin_configurations=[{"n_bins": 8, "min_depth": 0.001, "max_depth": 80.0}],
        patch_transformer_hidden_size=16, patch_transformer_intermediate_size=16,
        patch_transformer_num_attention_heads=2, num_patch_transformer_layers=1,
    )  # fmt: skip
    processor = ZoeDepthImageProcessor(
        size={"height": 32, "width": 32}, keep_aspect_ratio=True, ensure_multiple_of=16
    )
    return ZoeDepthForDepthEstimation(config).eval(), processor


ESTIMATOR_BUILDERS = {"depth-anything": depth_anything, "dpt": dpt, "zoedepth": zoedepth}


def write_estimator(kind: str, folder: str | Path) -> Path:
    model, processor = ESTIMATOR_BUILDERS[kind]()
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


WRITERS = {name: write_estimator for name in ESTIMATOR_BUILDERS}


def write(kind: str, folder: str | Path) -> Path:
    """Write one tiny model (a registry entry's ``tiny`` folder name) into ``folder``, atomically."""
    import shutil

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    WRITERS[kind](kind, tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def write_all(root: str | Path, kinds=None) -> dict[str, Path]:
    """Write every tiny model under ``root`` (one folder each, hub layout); returns {folder name: path}."""
    return {kind: write(kind, Path(root) / kind) for kind in kinds or WRITERS}
