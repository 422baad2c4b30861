"""Tiny random-weight models of every kind the registry knows, built from configs (the real classes at
tiny size) and saved in the same on-disk layout as their hub repos, as safetensors.

``depth2img tiny-model DIR`` writes them; the registry names ``tiny`` / ``tiny/<entry>`` load them through
the same loader as real models. Weights are seeded, so two builds are identical.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .errors import InputError, ModelLoadError, first_line

SEED = 0
# What a tiny model holds changes with this code (build 2: ControlNets whose output convolutions are no longer
# zero; 3: Flux transformers embed the guidance; 4: files of the mode open() gives, safetensors' weights were 0600).
# Every folder carries the build it was written by; a folder of another build is rebuilt on use. One without it is
# not a tiny model (it was removed, a user's files with it).
BUILD = 4
STAMP = ".depth2img-tiny.json"


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


# ------------------------------------------------------------------------------------ diffusion backbones
# Configs follow diffusers' own pipeline tests (get_dummy_components) and ../shared/OFFLINE-MODELS.md.
TINY_NATIVE_SIZE = 64  # generation pixel budget for tiny backbones (64x64), instead of the entry's 512/1024


def _sd_unet(in_channels=4, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=extra.pop("cross_attention_dim", 32), attention_head_dim=(2, 4), use_linear_projection=True,
        **extra,
    )  # fmt: skip


def _sd_vae(**extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), **extra,
    )  # fmt: skip


def _clip_text(projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
        max_position_embeddings=77, projection_dim=32,
    )  # fmt: skip
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _sd_scheduler():
    from diffusers import PNDMScheduler

    # SD1.5 / SD2 repos ship this scheduler config.
    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                         steps_offset=1, set_alpha_to_one=False)  # fmt: skip


def _controlnet(unet):
    """A ControlNet for ``unet`` whose output convolutions are random. ``ControlNetModel.from_unet`` zeroes them
    (the "zero convolutions" and the conditioning embedding's last one, as training starts), so a tiny ControlNet
    built by it alone adds exactly nothing to the UNet: no test could see the depth, the control scale or the
    guidance window reach an image. A trained ControlNet's are not zero. The zero convolutions get PyTorch's
    default initialisation; the embedding's last one weights of std 1 and no bias, so that the embedded depth is
    about as large as the latents it is added to (mean |x| 0.49 against 0.46) and a different depth changes the
    residuals by about a fifth of their size (with a default initialisation: by 1 %)."""
    import torch
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        conv.reset_parameters()  # from the seeded generator
    embed = controlnet.controlnet_cond_embedding.conv_out
    torch.nn.init.normal_(embed.weight, std=1.0)
    torch.nn.init.zeros_(embed.bias)
    return controlnet


def write_sd15(kind: str, folder: Path) -> Path:
    """Hub layout of stable-diffusion-v1-5 (folder) plus lllyasviel's ControlNet repo (folder-controlnet)."""
    from diffusers import StableDiffusionPipeline

    _seed()
    unet = _sd_unet()
    pipe = StableDiffusionPipeline(
        unet=unet, vae=_sd_vae(), text_encoder=_clip_text(), tokenizer=clip_tokenizer(), scheduler=_sd_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    controlnet = _controlnet(unet)
    controlnet.save_pretrained(controlnet_folder(folder), safe_serialization=True)
    return folder


def write_sd2_depth(kind: str, folder: Path) -> Path:
    """Hub layout of stable-diffusion-2-depth: a 5-channel UNet and its DPT depth estimator."""
    from diffusers import StableDiffusionDepth2ImgPipeline

    depth_model, processor = dpt()
    _seed()
    pipe = StableDiffusionDepth2ImgPipeline(
        vae=_sd_vae(), text_encoder=_clip_text(), tokenizer=clip_tokenizer(), unet=_sd_unet(in_channels=5),
        scheduler=_sd_scheduler(), depth_estimator=depth_model, feature_extractor=processor,
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# SDXL micro-conditioning: 6 time ids x 8 + text_encoder_2's 32-d pooled projection = 80
SDXL_UNET_EXTRA = dict(addition_embed_type="text_time", addition_time_embed_dim=8,
                       projection_class_embeddings_input_dim=80, cross_attention_dim=64)  # fmt: skip


def write_sdxl(kind: str, folder: Path) -> Path:
    """Hub layout of stable-diffusion-xl-base-1.0 (folder) plus diffusers' SDXL depth ControlNet (folder-controlnet)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    _seed()
    unet = _sd_unet(**SDXL_UNET_EXTRA)
    pipe = StableDiffusionXLPipeline(
        vae=_sd_vae(force_upcast=True), text_encoder=_clip_text(), text_encoder_2=_clip_text(projection=True),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1, timestep_spacing="leading"),
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    controlnet = _controlnet(unet)
    controlnet.save_pretrained(controlnet_folder(folder), safe_serialization=True)
    return folder


def t5_tokenizer():
    """A character-level T5 tokenizer (pad 0, eos 1, unk 2) that loads offline, max length 512 as FLUX uses."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(chr(c), -1.0) for c in range(33, 127)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _flux_components(in_channels: int) -> dict:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    _seed()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,  # as FLUX.1-dev and FLUX.1-Depth-dev: the guidance knob reaches the model
    )  # fmt: skip
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip
    t5 = T5EncoderModel(T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                 decoder_start_token_id=0)).eval()  # fmt: skip
    return dict(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_clip_text(projection=False),
                tokenizer=clip_tokenizer(), text_encoder_2=t5, tokenizer_2=t5_tokenizer(), transformer=transformer)  # fmt: skip


def write_flux(kind: str, folder: Path) -> Path:
    """Hub layout of FLUX.1-Depth-dev: the transformer takes packed latents and packed control latents (2x channels)."""
    from diffusers import FluxControlPipeline

    FluxControlPipeline(**_flux_components(in_channels=8)).save_pretrained(folder, safe_serialization=True)
    return folder


LORA_RANK = 4


def write_flux_lora(kind: str, folder: Path) -> Path:
    """Hub layout of FLUX.1-dev (folder) plus a depth Control LoRA repo (folder-lora): like BFL's, the LoRA
    widens x_embedder to take the control latents and adapts attention."""
    import torch
    from diffusers import FluxPipeline
    from safetensors.torch import save_file

    FluxPipeline(**_flux_components(in_channels=4)).save_pretrained(folder, safe_serialization=True)
    g = torch.Generator().manual_seed(SEED)
    inner = 32  # heads 2 x head dim 16
    lora = {
        "transformer.x_embedder.lora_A.weight": torch.randn(LORA_RANK, 8, generator=g) * 0.1,
        "transformer.x_embedder.lora_B.weight": torch.randn(inner, LORA_RANK, generator=g) * 0.1,
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(LORA_RANK, inner, generator=g)
        * 0.1,
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(inner, LORA_RANK, generator=g)
        * 0.1,
    }
    companion_folder(folder, "lora").mkdir(parents=True, exist_ok=True)
    save_file(lora, companion_folder(folder, "lora") / "pytorch_lora_weights.safetensors")
    return folder


def write_speed_lora(kind: str, folder: Path) -> Path:
    """A few-step LoRA (LCM-LoRA's layout: UNet attention projections) for the tiny SD1.5 or SDXL UNet."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    _seed()
    unet = _sd_unet(**SDXL_UNET_EXTRA) if kind == "lcm-sdxl" else _sd_unet()
    # init_lora_weights=False: both factors random, so the LoRA visibly changes the output
    unet.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))  # fmt: skip
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    return folder


COMPANIONS = ("controlnet", "lora")  # separate hub repos that go with a base repo


def companion_folder(folder: str | Path, what: str) -> Path:
    """Where a tiny backbone's separate ControlNet or LoRA repo lives (beside the base repo, as on the hub)."""
    folder = Path(folder)
    return folder.with_name(f"{folder.name}-{what}")


def controlnet_folder(folder: str | Path) -> Path:
    return companion_folder(folder, "controlnet")


WRITERS = {name: write_estimator for name in ESTIMATOR_BUILDERS} | {
    "sd15-depth": write_sd15, "sd2-depth": write_sd2_depth, "sdxl-depth": write_sdxl, "flux-depth": write_flux,
    "flux-depth-lora": write_flux_lora, "lcm-sd15": write_speed_lora, "lcm-sdxl": write_speed_lora,
}  # fmt: skip
# The companions each kind's writer puts beside its folder (write_sd15, write_sdxl, write_flux_lora)
KIND_COMPANIONS = {"sd15-depth": ("controlnet",), "sdxl-depth": ("controlnet",), "flux-depth-lora": ("lora",)}


def folders(kind: str, folder: str | Path) -> list[Path]:
    """The folders ``write(kind, folder)`` fills: ``folder``, then its kind's companions."""
    return [Path(folder), *(companion_folder(folder, c) for c in KIND_COMPANIONS.get(kind, ()))]


def in_the_way(kind: str, folder: str | Path) -> str | None:
    """Why ``write(kind, folder)`` would have to remove something it did not write, or None. Only a folder holding
    the stamp (an older build's, or a companion beside a stamped folder) is replaced (a folder of the same name,
    a user's own files in it, was removed unasked)."""
    base = Path(folder)
    for path in folders(kind, folder):
        if path.is_symlink():
            return f"{path} is a link, not a folder depth2img wrote"
        if path.exists() and not path.is_dir():
            return f"{path} exists and is not a folder"
        if path.is_dir() and not (path / STAMP).is_file() and not (base / STAMP).is_file():
            return f"{path} exists and is not a tiny model depth2img wrote (no {STAMP})"
    return None


def write(kind: str, folder: str | Path) -> Path:
    """Write one tiny model (a registry entry's ``tiny`` folder name) into ``folder``, atomically. Raises InputError
    (nothing written) where a file or a folder depth2img did not write is in the way (see ``in_the_way``)."""
    import shutil

    folder = Path(folder)
    reason = in_the_way(kind, folder)
    if reason:
        raise InputError(reason)
    tmp = folder.with_name(f".{folder.name}.partial")
    partial = [tmp, *(companion_folder(tmp, c) for c in COMPANIONS)]
    try:
        for old in partial:
            shutil.rmtree(old, ignore_errors=True)
        WRITERS[kind](kind, tmp)
        stamp = {"build": BUILD, "kind": kind}
        for new in folders(kind, tmp):
            (new / STAMP).write_text(json.dumps(stamp))
            _as_open_makes_them(new)
        for new, final in zip(folders(kind, tmp), folders(kind, folder)):
            if final.exists():
                shutil.rmtree(final)
            new.rename(final)
    finally:
        # (a failed write left a whole model in .KIND.partial)
        for old in partial:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def _as_open_makes_them(folder: Path) -> None:
    """Every file under ``folder`` given the mode open() gives a new file (0666 less the umask), as its stamp has:
    safetensors writes its weights private (0600), and a tiny-model folder shared by a team or a CI cache could be
    read by its writer alone."""
    mode = (folder / STAMP).stat().st_mode & 0o777
    for path in folder.rglob("*"):
        if path.is_file() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)


def is_current(folder: str | Path, kind: str) -> bool:
    """Whether ``folder`` holds the tiny ``kind`` as this build writes it (see ``BUILD``)."""
    try:
        return json.loads((Path(folder) / STAMP).read_text()) == {"build": BUILD, "kind": kind}
    except (OSError, ValueError):
        return False


def ensure(kind: str, folder: str | Path) -> Path:
    """``folder`` holding this build's tiny ``kind``: written unless it is already there (then nothing is written,
    not even a lock: the folder may be read-only). A file lock beside the folder makes processes that start
    together (one per GPU under accelerate) write it once, not over each other."""
    from filelock import FileLock

    folder = Path(folder)
    if is_current(folder, kind):
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(folder.with_name(f".{folder.name}.lock")):
            if not is_current(folder, kind):
                write(kind, folder)
    except InputError as err:
        raise ModelLoadError(
            f"tiny model {kind!r}: {err}; remove it or set DEPTH2IMG_TINY_DIR to another folder"
        ) from None
    except OSError as err:
        raise ModelLoadError(
            f"tiny model {kind!r} cannot be written to {folder} ({first_line(err)}); "
            "set DEPTH2IMG_TINY_DIR to a folder you can write"
        ) from None
    return folder


def write_all(root: str | Path, kinds=None) -> dict[str, Path]:
    """Write every tiny model under ``root`` (one folder each, hub layout); returns {folder name: path}. Every
    folder is checked before any is written (a file in the way failed after other models were written)."""
    kinds = list(kinds or WRITERS)
    for kind in kinds:
        reason = in_the_way(kind, Path(root) / kind)
        if reason:
            raise InputError(reason)
    return {kind: write(kind, Path(root) / kind) for kind in kinds}
