"""`depth2img bench` smoke test on CPU with the tiny architecture (figures are reported, never asserted)."""

import json

import pytest

from depth2img.bench import _config, build, count_parameters, markdown, run_bench


def test_bench_runs_and_writes_json_and_markdown(tmp_path):
    result = run_bench(preset="tiny", size=64, steps=2, repeats=1, out_dir=tmp_path, progress=lambda m: None)
    assert set(result["results"]) == {"diffusers", "depth2img", "depth2img-fast"}
    assert result["results"]["depth2img"]["max_abs_diff_vs_diffusers"] == 0.0  # same components, same result
    assert (
        result["results"]["depth2img-fast"]["max_abs_diff_vs_diffusers"] < 1e-3
    )  # fp32 here: fused QKV only
    assert result["flops_per_call_tflop"] > 0 and "CPU" in result["device"]
    saved = json.loads((tmp_path / result["written"][0].split("/")[-1]).read_text())
    assert saved["results"].keys() == result["results"].keys()
    assert "| depth2img-fast |" in (tmp_path / result["written"][1].split("/")[-1]).read_text()
    assert "API overhead" in markdown(result)


@pytest.mark.parametrize("name, millions", [("sd15_unet", 859.5), ("sd15_controlnet", 361.3), ("sd_vae", 83.7),
                                            ("clip_l_text", 123.1), ("sdxl_unet", 2567.5), ("sdxl_controlnet", 1251.0),
                                            ("depth_anything_v2_small", 24.8), ("depth_anything_v2_large", 335.3),
                                            ("dpt_hybrid", 122.4)])  # fmt: skip
def test_full_size_configs_have_the_published_sizes(name, millions):
    assert round(count_parameters(build(name, device="meta")) / 1e6, 1) == millions
    assert isinstance(_config(name), dict)


def test_bench_argument_errors(capsys):
    from depth2img.cli import main

    assert main(["bench", "--size", "100"]) == 2
    assert "--size must be a multiple of 16" in capsys.readouterr().err
    assert main(["bench", "--control-end", "1.5"]) == 2
    assert "0 <= start < end <= 1, got 0.0 and 1.5" in capsys.readouterr().err
