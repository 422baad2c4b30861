"""Regenerate the full-size architecture configs used by `depth2img bench` (random weights, real shapes).

Values are those of the public repos' config files (stable-diffusion-v1-5, lllyasviel/control_v11f1p_sd15_depth,
stable-diffusion-xl-base-1.0 (incl. its text_encoder_2 and vae), diffusers/controlnet-depth-sdxl-1.0,
openai/clip-vit-large-patch14,
depth-anything/Depth-Anything-V2-{Small,Base,Large}-hf, Intel/dpt-hybrid-midas). Run: python benchmarks/make_bench_configs.py
and check the parameter counts it prints against the model cards.
"""

import json
from pathlib import Path

# configs/bench: the package ships the JSON files, never this script (in an install it would write into the package)
HERE = Path(__file__).resolve().parents[1] / "configs" / "bench"

SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 768, "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "in_channels": 4, "out_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 64, "flip_sin_to_cos": True, "freq_shift": 0,
}  # fmt: skip
SD15_CONTROLNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "conditioning_embedding_out_channels": [16, 32, 96, 256], "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "in_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "flip_sin_to_cos": True, "freq_shift": 0,
}  # fmt: skip
SD_VAE = {
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
}  # fmt: skip
CLIP_L_TEXT = {
    "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
    "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768, "hidden_act": "quick_gelu",
    "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
}  # fmt: skip
# SDXL's text_encoder_2 (OpenCLIP ViT-bigG/14 text tower, with projection) and its VAE (same shapes as SD's)
CLIP_G_TEXT = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
    "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 1280, "hidden_act": "gelu",
    "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
}  # fmt: skip
SDXL_VAE = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SDXL_UNET = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "in_channels": 4,
    "out_channels": 4, "layers_per_block": 2, "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True, "norm_num_groups": 32,
}  # fmt: skip
SDXL_CONTROLNET = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "conditioning_embedding_out_channels": [16, 32, 96, 256], "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "in_channels": 4,
    "layers_per_block": 2, "projection_class_embeddings_input_dim": 2816, "transformer_layers_per_block": [1, 2, 10],
    "use_linear_projection": True, "norm_num_groups": 32,
}  # fmt: skip


def depth_anything(hidden, layers, heads, inter, out_indices, neck, fusion):
    return {
        "backbone_config": {"model_type": "dinov2", "hidden_size": hidden, "num_hidden_layers": layers,
                            "num_attention_heads": heads, "intermediate_size": inter, "image_size": 518,
                            "patch_size": 14, "out_indices": out_indices, "reshape_hidden_states": False},
        "patch_size": 14, "reassemble_hidden_size": hidden, "reassemble_factors": [4, 2, 1, 0.5],
        "neck_hidden_sizes": neck, "fusion_hidden_size": fusion, "head_hidden_size": 32, "head_in_index": -1,
        "depth_estimation_type": "relative", "max_depth": 1,
    }  # fmt: skip


CONFIGS = {
    "sd15_unet": SD15_UNET, "sd15_controlnet": SD15_CONTROLNET, "sd_vae": SD_VAE, "clip_l_text": CLIP_L_TEXT,
    "sdxl_unet": SDXL_UNET, "sdxl_controlnet": SDXL_CONTROLNET, "clip_g_text": CLIP_G_TEXT, "sdxl_vae": SDXL_VAE,
    "depth_anything_v2_small": depth_anything(384, 12, 6, 1536, [3, 6, 9, 12], [48, 96, 192, 384], 64),
    "depth_anything_v2_base": depth_anything(768, 12, 12, 3072, [3, 6, 9, 12], [96, 192, 384, 768], 128),
    "depth_anything_v2_large": depth_anything(1024, 24, 16, 4096, [5, 12, 18, 24], [256, 512, 1024, 1024], 256),
    "dpt_hybrid": {
        "is_hybrid": True, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "image_size": 384, "patch_size": 16, "backbone_out_indices": [2, 5, 8, 11],
        "neck_hidden_sizes": [256, 512, 768, 768], "fusion_hidden_size": 256, "readout_type": "project",
        "reassemble_factors": [1, 1, 1, 0.5], "backbone_featmap_shape": [1, 1024, 24, 24],
        "neck_ignore_stages": [0, 1],
        "backbone_config": {"model_type": "bit", "global_padding": "same", "layer_type": "bottleneck",
                            "depths": [3, 4, 9], "out_features": ["stage1", "stage2", "stage3"],
                            "embedding_dynamic_padding": True},
    },
}  # fmt: skip

if __name__ == "__main__":
    for name, cfg in CONFIGS.items():
        (HERE / f"{name}.json").write_text(json.dumps(cfg, indent=1) + "\n")
    from depth2img.bench import build, count_parameters

    for name in CONFIGS:
        print(f"{name}: {count_parameters(build(name, device='meta')) / 1e6:.1f} M parameters")
