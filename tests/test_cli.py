"""The CLI: happy paths, stereo, and one line per bad input with exit status 2 and nothing partial."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from depth2img.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_and_usage_errors_do_not_import_torch():
    code = (
        "import sys\n"
        "from depth2img.cli import main\n"
        "for argv in (['--help'], ['depth'], ['transform', '--bogus'], []):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in res.stdout, res.stdout + res.stderr


def test_transform_help_names_every_backbone_and_scheduler(capsys):
    """The help had left out flux-depth-lora and the lcm, tcd and ddim-trailing schedulers it accepts."""
    import re

    from depth2img.backends import SCHEDULERS
    from depth2img.cli import build_parser
    from depth2img.registry import load_registry

    parser = build_parser()
    transform = next(
        a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("transform")
    )
    helps = {opt: action.help for action in transform._actions for opt in action.option_strings}

    def words(text):  # whole names: lcm is not found inside lcm-sd15, nor ddim inside ddim-trailing
        return set(re.findall(r"[\w.+-]+", text))

    assert set(load_registry()["backbones"]) <= words(helps["--model"])
    assert set(SCHEDULERS) <= words(helps["--scheduler"])
    # each backbone's default, said (README said unipc for all: a review of the backbones, 2026-11-28)
    from depth2img.backends import BACKENDS

    for name, entry in load_registry()["backbones"].items():
        said = f"{BACKENDS[entry.pipeline].default_scheduler} ({'Flux' if 'flux' in name else name})"
        assert said in helps["--scheduler"], said
    # the bench's list too (its SD backbones take every scheduler but Flux's), written out for the same reason:
    # the command line imports no model code at start-up
    bench = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("bench"))
    bench_help = next(a.help for a in bench._actions if "--scheduler" in a.option_strings)
    assert set(SCHEDULERS) - {"flow-euler"} <= words(bench_help)


def test_depth_happy_path(tmp_path, photos_dir, capsys):
    code, _, err = run(capsys, "depth", photos_dir, "-o", tmp_path / "out", "--estimator", "tiny", "-q")
    assert code == 0, err
    assert "2 done, 0 failed" in err
    for stem, size in (("chelsea", (451, 300)), ("coffee", (600, 400))):
        png = Image.open(tmp_path / "out" / f"{stem}_depth16.png")
        assert png.size == size and np.asarray(png).dtype == np.uint16
        assert np.load(tmp_path / "out" / f"{stem}_depth.npy").shape == size[::-1]
        assert Image.open(tmp_path / "out" / f"{stem}_depth_preview.png").mode == "RGB"


def test_eval_names_the_image_the_estimator_cannot_take(tmp_path, capsys):
    """A review of eval (2026-11-28): an image the estimator cannot resize (a 256x16 strip) was refused as
    "image: 256x16 cannot be resized ...", naming neither SOURCE nor OUTPUT nor its path."""
    source, output = tmp_path / "source.png", tmp_path / "output.png"
    for path, seed in ((source, 0), (output, 1)):
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 256, 3), np.uint8)).save(path)
    code, _, err = run(capsys, "eval", source, output, "--estimator", "tiny")
    said = "256x16 cannot be resized for estimator 'tiny'"
    assert (
        code == 2
        and err.count("\n") == 1
        and err.startswith(f"depth2img: error: SOURCE {source}: image: {said}")
    )
    # a source depth given, the source is not estimated: the output is the one named
    np.save(tmp_path / "d.npy", np.linspace(1, 50, 16 * 256).reshape(16, 256))
    code, _, err = run(capsys, "eval", source, output, "--estimator", "tiny", "--source-depth", tmp_path / "d.npy",
                       "--depth-polarity", "metric")  # fmt: skip
    assert (
        code == 2
        and err.count("\n") == 1
        and err.startswith(f"depth2img: error: OUTPUT {output}: image: {said}")
    )


def test_eval_says_when_edges_could_not_be_looked_for(tmp_path, capsys):
    """A source depth measured on every other row (a LiDAR's) has no all-valid window to look for edges in: edge F1
    is None, which eval printed as an internal error (TypeError from its format)."""
    y, x = np.mgrid[0:64, 0:96]
    rows = y % 2 == 0
    depth = np.where((abs(x - 48) < 20) & (abs(y - 32) < 12), 3.0, 20.0)
    np.savez(tmp_path / "rows.npz", depth=np.where(rows, depth, 0), valid=rows, kind="metric")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)).save(tmp_path / "p.png")
    code, out, _ = run(capsys, "eval", tmp_path / "p.png", tmp_path / "p.png", "--estimator", "tiny",
                       "--source-depth", tmp_path / "rows.npz")  # fmt: skip
    assert code == 0 and out.endswith("edge F1 n/a (too few valid pixels) (higher is better)\n")


@pytest.mark.parametrize("command", ["eval", "app"])
@pytest.mark.parametrize(
    ("device", "problem"),
    [("nope", "'nope' is not one of cpu, cuda, mps, xpu (cuda and xpu take an index, e.g. cuda:1)"),
     ("cuda:1", "'cuda:1' was asked for but CUDA is not available here")],
)  # fmt: skip
def test_eval_and_the_app_name_the_device_flag(tmp_path, capsys, monkeypatch, command, device, problem):
    """A review of the --device messages (2026-11-28): transform and depth named the flag, eval and the app
    (`depth2img app`, app.py) said "device 'nope' ...", the estimator's or Service's argument. Both now say
    --device, before a model is set up."""
    import torch

    from depth2img import estimators, service

    monkeypatch.setattr(
        torch.cuda, "is_available", lambda: False
    )  # (a GPU machine has cuda:1 or says it has not)

    def no_model(*args, **kwargs):
        raise AssertionError("a model was set up before --device was checked")

    monkeypatch.setattr(service.Service, "__init__", no_model)
    monkeypatch.setattr(estimators.DepthEstimator, "from_pretrained", no_model)
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (90, 120, 150)).save(image)
    argv = ["eval", image, image, "--estimator", "tiny"] if command == "eval" else ["app", "--model", "tiny"]
    code, out, err = run(capsys, *argv, "--device", device)
    assert (code, out, err) == (2, "", f"depth2img: error: --device {problem}\n")


def test_depth_writes_on_its_own_thread_count(tmp_path, photos_dir, capsys, monkeypatch):
    """Depth runs are write-bound (three products per input against a fast estimate): they write on
    CPU_THREADS threads (all cores up to 8), not the generation runs' WRITER_THREADS, unless DEPTH2IMG_WRITER_THREADS says."""
    from depth2img import depth_run, outputs

    made, original = [], outputs.BackgroundWriter.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self.threads)

    monkeypatch.setattr(outputs.BackgroundWriter, "__init__", spy)
    monkeypatch.setattr(outputs, "WRITER_THREADS", 1)
    monkeypatch.setattr(depth_run, "CPU_THREADS", 3)
    monkeypatch.delenv("DEPTH2IMG_WRITER_THREADS", raising=False)
    assert run(capsys, "depth", photos_dir, "-o", tmp_path / "a", "--estimator", "tiny", "-q")[0] == 0
    monkeypatch.setenv("DEPTH2IMG_WRITER_THREADS", "2")
    assert run(capsys, "depth", photos_dir, "-o", tmp_path / "b", "--estimator", "tiny", "-q")[0] == 0
    assert made == [3, 2]
    assert [p.read_bytes() for p in sorted((tmp_path / "a").iterdir())] == [
        p.read_bytes() for p in sorted((tmp_path / "b").iterdir())
    ]


def test_depth_format_choice_and_glob(tmp_path, photos_dir, capsys):
    code, _, err = run(capsys, "depth", str(photos_dir / "*.png"), "-o", tmp_path, "--estimator", "tiny/zoedepth",
                       "--depth-format", "npy", "-q")  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chelsea_depth.npy"]


def test_inputs_of_one_name_never_share_an_output(tmp_path, chelsea, capsys):
    """A renamed repeat must not take another input's own name: a.png, a.jpg and a-2.png once wrote a-2 twice and
    reported 3 done for 2 outputs."""
    (tmp_path / "in").mkdir()
    small = chelsea.resize((48, 32))
    for name in ("a.png", "a.jpg", "a-2.png"):
        small.save(tmp_path / "in" / name)
    code, _, err = run(capsys, "depth", tmp_path / "in", "-o", tmp_path / "out", "--estimator", "tiny", "-q",
                       "--depth-format", "npy")  # fmt: skip
    assert code == 0 and "3 done, 0 failed" in err, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a-2_depth.npy", "a-3_depth.npy", "a_depth.npy"
    ]  # fmt: skip
    from depth2img.depth_run import _stems

    assert _stems([Path("x/a.png"), Path("y/A.png"), Path("z/a-2.png")]) == [
        "a",
        "A-3",
        "a-2",
    ]  # case-blind disks
    # a long name is cut, to its start and a hash of the whole (within 100 bytes, never half a character), so that
    # what outputs add to it stays a file name; two long names that share the start stay apart
    stems = _stems([Path("é" * 120 + "1.png"), Path("é" * 120 + "2.png"), Path("b" * 100 + ".png")])
    assert [len(s.encode()) for s in stems] == [99, 99, 100] and len(set(stems)) == 3
    assert stems[0].startswith("é" * 45 + "-") and stems[2] == "b" * 100
    # a name not in UTF-8 (Latin-1 "café" from an old archive; Python holds its byte as a surrogate) was an internal
    # error that stopped the whole run; it keeps its bytes, a long one cut on them (dropping what is not UTF-8)
    latin = os.fsdecode(b"caf\xe9")
    assert _stems([Path(latin + ".png"), Path(latin * 30 + ".png")]) == [latin, "caf" * 23 + "-8fb91ca8"]


def test_stereo_pair(tmp_path, capsys):
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    Image.fromarray(left).save(tmp_path / "left.png")
    Image.fromarray(right).save(tmp_path / "right.png")
    code, _, err = run(
        capsys, "depth", tmp_path / "left.png", "--right", tmp_path / "right.png", "-o", tmp_path / "o", "-q"
    )
    assert code == 0, err
    assert Image.open(tmp_path / "o" / "left_depth16.png").size == (741, 500)
    Image.fromarray(right[:, :700]).save(tmp_path / "narrow.png")
    code, _, err = run(
        capsys, "depth", tmp_path / "left.png", "--right", tmp_path / "narrow.png", "-o", tmp_path / "p", "-q"
    )
    assert code == 2 and "stereo pair sizes differ" in err and "Traceback" not in err
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())
    # the estimator's options do not apply to a stereo pair: they were ignored (exit 0 with no GPU for --device)
    code, _, err = run(capsys, "depth", tmp_path / "left.png", "--right", tmp_path / "right.png", "-o",
                       tmp_path / "q", "--estimator", "nosuch", "--device", "cuda", "-q")  # fmt: skip
    assert code == 2 and err == (
        "depth2img: error: --right matches stereo pairs (OpenCV SGBM, on the CPU): --estimator, --device do not "
        "apply to it\n"
    )
    assert not (tmp_path / "q").exists()
    # a missing left input: the pairs are unknown, and the message says why the counts differ
    code, _, err = run(capsys, "depth", tmp_path / "left.png", tmp_path / "gone.png", "--right",
                       tmp_path / "right.png", "--right", tmp_path / "right.png", "-o", tmp_path / "q", "-q")  # fmt: skip
    assert code == 2 and err.splitlines()[-1].endswith(
        "2 right images for 1 left inputs; give one per input (1 input not found, above: the pairs are unknown)"
    )
    # as many right images as the left inputs found (a review of 2026-11-28): the right image of the missing one was
    # matched with the next left input, exit 0
    code, _, err = run(capsys, "depth", tmp_path / "gone.png", tmp_path / "left.png", "--right", tmp_path / "right.png",
                       "-o", tmp_path / "q", "-q")  # fmt: skip
    assert code == 2 and err.splitlines()[-1].endswith(
        "1 right images for 1 left inputs; give one per input (1 input not found, above: the pairs are unknown)"
    )
    assert not (tmp_path / "q").exists()


def test_stereo_disparity_range_is_an_option_and_a_range_too_small_is_said(tmp_path, capsys):
    """A review of stereo (2026-11-28): the search range was an eighth of the width, with no flag; a pair whose near
    surfaces lay beyond it was matched wrongly at its end (skimage's motorcycle pair, true disparities up to 60 px,
    searched to 32: a median error of 12.7 px over all pixels of known disparity, 55 % of them beyond 32 px, and
    0.23 px over those under 32 px; searched to 16: 28.5 px) and written without a word, exit 0. Searched to 64, the
    median error over all pixels of known disparity is 0.20 px."""
    from skimage import data

    from depth2img.stereo import stereo_depth

    left, right, truth = data.stereo_motorcycle()
    Image.fromarray(left).save(tmp_path / "left.png")
    Image.fromarray(right).save(tmp_path / "right.png")
    pair = ["depth", tmp_path / "left.png", "--right", tmp_path / "right.png", "-q", "--depth-format", "npy"]
    code, _, err = run(capsys, *pair, "-o", tmp_path / "o", "--num-disparities", "32")
    assert code == 0, err
    at_end = (r"left.png: stereo: (1\d|2\d)% of the matched pixels lie at the end of the 32-px disparity search: "
              r"nearer surfaces are beyond it and matched wrongly; raise --num-disparities")  # fmt: skip
    assert re.search(at_end, err)
    code, _, err = run(capsys, *pair, "-o", tmp_path / "p", "--num-disparities", "64")
    assert code == 0 and "Warning" not in err, err
    written = np.load(tmp_path / "p" / "left_depth.npy")
    assert np.array_equal(written, stereo_depth(left, right, num_disparities=64).values)
    known = np.isfinite(truth)
    assert np.median(np.abs(written - truth)[known]) < 0.5
    for given, said in (
        (["--num-disparities", "20"], "--num-disparities must be a positive multiple of 16, got 20"),
        (["--num-disparities", "752"], "--num-disparities must be a positive multiple of 16 below the width 741, "
                                       "got 752"),
    ):  # fmt: skip
        code, _, err = run(capsys, *pair, "-o", tmp_path / "q", *given)
        assert code == 2 and said in err and "Traceback" not in err, err
    code, _, err = run(
        capsys, "depth", tmp_path / "left.png", "-o", tmp_path / "q", "--num-disparities", "64"
    )
    assert code == 2 and err == (
        "depth2img: error: --num-disparities is the disparity range of stereo pairs: give --right too (an estimator "
        "was to be used, 64 ignored)\n"
    )
    assert not any((tmp_path / "q").iterdir()) if (tmp_path / "q").exists() else True


@pytest.mark.parametrize("command", ["depth", "transform"])
def test_a_run_whose_every_input_fails_leaves_no_output_folder(tmp_path, capsys, command):
    """Every input failing left an empty output folder behind; a folder the user made is kept."""
    (tmp_path / "bad.png").write_bytes(b"not a png")
    argv = (
        ["--estimator", "tiny"]
        if command == "depth"
        else ["--model", "tiny", "--prompt", "x", "--steps", "2"]
    )
    code, _, err = run(capsys, command, tmp_path / "bad.png", "-o", tmp_path / "o", *argv, "-q")
    assert code == 2 and "bad.png: not a readable image" in err and not (tmp_path / "o").exists()
    (tmp_path / "mine").mkdir()
    code, _, err = run(capsys, command, tmp_path / "bad.png", "-o", tmp_path / "mine", *argv, "-q")
    assert code == 2 and (tmp_path / "mine").is_dir()


def test_bad_inputs_are_reported_and_others_still_processed(tmp_path, chelsea, capsys):
    src = tmp_path / "in"
    src.mkdir()
    chelsea.save(src / "good.png")
    (src / "zero.png").write_bytes(b"")
    (src / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    chelsea.save(src / "full.jpg")
    (src / "cut.jpg").write_bytes((src / "full.jpg").read_bytes()[:3000])
    (src / "full.jpg").unlink()
    chelsea.convert("CMYK").save(src / "cmyk.jpg")
    chelsea.convert("P").save(src / "pal.png")
    rgba = chelsea.convert("RGBA")
    rgba.save(src / "rgba.png")
    Image.fromarray(np.asarray(chelsea.convert("L")).astype(np.uint16) * 257).save(src / "grey16.png")
    out = tmp_path / "out"
    code, _, err = run(capsys, "depth", src, src / "missing.png", "-o", out, "--estimator", "tiny", "-q")
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("depth2img: error:")]
    assert len(lines) == 4, err
    for name, problem in (("zero.png", "empty file"), ("noise.jpg", "not a readable image"),
                          ("cut.jpg", "truncated or corrupt"), ("missing.png", "no such file")):  # fmt: skip
        assert any(name in line and problem in line for line in lines), (name, err)
    assert "Traceback" not in err and "4 failed" in err and "5 done" in err
    written = {p.name.split("_depth")[0] for p in out.iterdir()}
    assert written == {"good", "cmyk", "pal", "rgba", "grey16"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    assert err.endswith(f"depth2img depth: 5 done, 4 failed; outputs in {out}\n")
    # every input failed: no folder is made, and none is named (the summary named the one it had removed)
    code, _, err = run(
        capsys, "depth", src / "zero.png", "-o", tmp_path / "none", "--estimator", "tiny", "-q"
    )
    assert (
        code == 2 and err.endswith("depth2img depth: 0 done, 1 failed\n") and not (tmp_path / "none").exists()
    )


def test_a_folders_subfolders_of_images_are_named(tmp_path, chelsea, capsys):
    """A folder's own images are read; those under its subfolders were left out without a word (a review of messy
    photo folders). A warning names the subfolders that hold images, and the pattern that reads them."""
    src = tmp_path / "photos"
    for folder in (src / "sub", src / "sub2" / "deeper", src / "empty", src / ".hidden"):
        folder.mkdir(parents=True)
    small = chelsea.resize((32, 24))
    for path in (
        src / "a.png",
        src / "sub" / "b.png",
        src / "sub2" / "deeper" / "c.jpg",
        src / ".hidden" / "d.png",
    ):
        small.save(path)
    (src / "empty" / "notes.txt").write_text("x")
    code, _, err = run(capsys, "depth", src, "-o", tmp_path / "o", "--estimator", "tiny", "-q")
    pattern = f"{src}/**/*.png"
    assert code == 0 and err.startswith(f"depth2img: warning: {src}: the images in 2 subfolder(s) (sub, sub2) are not "
                                        f"read; give '{pattern}' or '{pattern[:-4]}.jpg' for them\n"), err  # fmt: skip
    assert "1 done" in err
    code, _, err = run(capsys, "depth", pattern, "-o", tmp_path / "o2", "--estimator", "tiny", "-q")
    assert code == 0 and "warning" not in err and "2 done" in err, err  # (a glob skips hidden folders)
    for _ in range(2):  # the run's own output folder is not named (once it holds images)
        code, _, err = run(capsys, "depth", src, "-o", src / "out", "--estimator", "tiny", "-q")
        assert code == 0 and "(sub, sub2) are not read" in err, err


def test_a_line_break_in_a_file_name_keeps_each_message_on_one_line(tmp_path, chelsea, capsys):
    """A corrupt photo named with a line break split its error in two lines (a review of file names); one named with
    an escape sequence wrote it to the terminal (here: red text from then on)."""
    src = tmp_path / "photos"
    src.mkdir()
    chelsea.resize((32, 24)).save(src / "good.png")
    (src / "bad\nname.png").write_bytes(b"not an image")
    (src / "red\x1b[31m\x85\u202e.png").write_bytes(b"not an image")
    code, _, err = run(capsys, "depth", src, "-o", tmp_path / "o", "--estimator", "tiny", "-q")
    assert code == 2 and err.count("\n") == 3, err  # the errors, the summary
    assert err.startswith(f"depth2img: error: {src}/bad\\nname.png: ") and "1 done, 2 failed" in err, err
    assert f"depth2img: error: {src}/red\\x1b[31m\\x85\\u202e.png: " in err and "\x1b" not in err, err


def test_an_error_is_said_when_what_says_it_is_broken(monkeypatch, capsys, tmp_path, photos_dir):
    """The error line goes through outputs (tqdm, NumPy): with one of them broken, the internal-error handler failed
    again with a traceback (a review of 5f0e3f0). A non-path output folder was a TypeError from the input scan."""
    import sys

    from depth2img import cli
    from depth2img.depth_run import run_depth
    from depth2img.errors import InputError

    monkeypatch.setitem(sys.modules, "depth2img.outputs", None)  # (its import raises ImportError)
    cli._say_above_bar("a\nb")
    assert capsys.readouterr().err == "depth2img: error: a\\nb\n"
    monkeypatch.undo()
    with pytest.raises(InputError, match="output folder"):
        run_depth([photos_dir], out_dir=123, estimator="tiny")


def test_model_and_argument_errors_are_one_line(tmp_path, photos_dir, capsys):
    code, _, err = run(capsys, "depth", photos_dir, "-o", tmp_path / "a", "--estimator", "not-a-model")
    assert code == 2 and err.count("\n") == 1 and "estimator 'not-a-model' is not a registry name" in err
    assert not (tmp_path / "a").exists()  # made for the run, removed again once the model failed to load
    code, _, err = run(capsys, "depth", photos_dir, "-o", tmp_path, "--depth-format", "png16,exr")
    assert (
        code == 2
        and err
        == "depth2img: error: --depth-format must be a list of png16, npy, preview, got ['png16', 'exr']\n"
    )
    # options that say how to read a depth file no one gave did nothing
    code, _, err = run(
        capsys, "transform", photos_dir, "-o", tmp_path / "c", "--prompt", "x", "--depth-polarity", "metric"
    )
    assert code == 2 and err == (
        "depth2img: error: --depth-polarity metric says how to read --depth files; none was given\n"
    )
    code, _, err = run(
        capsys, "eval", photos_dir / "chelsea.png", photos_dir / "chelsea.png", "--depth-polarity", "metric"
    )
    assert code == 2 and err == (
        "depth2img: error: --depth-polarity metric says how to read --source-depth; none was given\n"
    )
    # no command: the help is the usage error's message, on stderr
    code, out, err = run(capsys)
    assert code == 2 and out == "" and err.startswith("usage: depth2img")
    code, _, err = run(capsys, "depth", photos_dir, "-o", tmp_path, "--right", "a.png")
    assert code == 2 and "1 right images for 2 left inputs" in err
    code, _, err = run(capsys, "depth", photos_dir, "-o", tmp_path / "b", "--batch-size", "0")
    assert code == 2 and err == "depth2img: error: --batch-size must be an integer >= 1, got 0\n"
    assert not (tmp_path / "b").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["depth", "x.png"])
    assert exit_info.value.code == 2


def test_the_version_is_written_once(capsys):
    """pyproject, the package and the CLI each wrote it (they agreed by care); the metadata is read from the package."""
    from importlib.metadata import version

    import depth2img

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out == f"depth2img {depth2img.__version__}\n"
    assert version("depth2img") == depth2img.__version__
    assert 'dynamic = ["version"]' in (Path(__file__).parents[1] / "pyproject.toml").read_text()


def test_models_and_tiny_model_commands(tmp_path, capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "depth-anything-v2-large" in out and "NON-COMMERCIAL" in out
    assert "depth-anything/Depth-Anything-V2-Small-hf@5426e4f " in out  # the pinned commit is shown
    # a backbone's ControlNet or LoRA repo, at its own pin, and a gated repo (they were not shown)
    assert "+ lllyasviel/control_v11f1p_sd15_depth@539f991" in out
    flux = next(line for line in out.splitlines() if line.lstrip().startswith("flux-depth-lora "))
    assert "+ black-forest-labs/FLUX.1-Depth-dev-lora@" in flux and "gated" in flux
    hyper = next(line for line in out.splitlines() if line.lstrip().startswith("hyper-sd15-8step "))
    assert "NON-COMMERCIAL" in hyper  # its own licence, not read by this project
    code, out, _ = run(capsys, "tiny-model", tmp_path)
    assert code == 0 and (tmp_path / "zoedepth" / "model.safetensors").is_file()
    # as open() makes a file, config.json's mode (safetensors wrote the weights 0600: its writer's alone)
    modes = {p.stat().st_mode & 0o777 for p in tmp_path.rglob("*") if p.is_file()}
    assert modes == {(tmp_path / "zoedepth" / "config.json").stat().st_mode & 0o777}
    # every folder written is named (13 folders; the companions went unsaid)
    named = {
        Path(p)
        for line in out.splitlines()
        for p in line.replace(" (with ", ", ").rstrip(")").split(": ")[1].split(", ")
    }
    assert named == set(tmp_path.iterdir()) and len(named) == 13
    assert f"sd15-depth: {tmp_path / 'sd15-depth'} (with {tmp_path / 'sd15-depth-controlnet'})\n" in out
    # (flux-depth was said to come with flux-depth-lora, another backbone that happens to be named like its LoRA)
    assert f"flux-depth: {tmp_path / 'flux-depth'}\n" in out
    (tmp_path / "afile").write_text("x")
    code, _, err = run(capsys, "tiny-model", tmp_path / "afile")
    assert (
        code == 2
        and err.count("\n") == 1
        and f"{tmp_path / 'afile'} cannot be written (Not a directory)" in err
    )


def test_tiny_model_keeps_a_folder_it_did_not_write(tmp_path, capsys):
    """A review of tiny-model (2026-11-28): `depth2img tiny-model DIR` removed any folder in DIR named like a model
    (sd15-depth, sdxl-depth-controlnet, ...), a user's files with it, and exited 0. Such a folder is refused now,
    before anything is written; a folder depth2img wrote (its stamp) is still replaced, and so is the ControlNet
    beside it, which older builds wrote with no stamp of its own."""
    import json

    from depth2img import tiny

    for name in ("sd15-depth", "sdxl-depth-controlnet"):
        root = tmp_path / name
        (root / name).mkdir(parents=True)
        (root / name / "precious.txt").write_text("precious")
        code, out, err = run(capsys, "tiny-model", root)
        assert code == 2 and out == ""
        assert err == (
            f"depth2img: error: tiny-model: {root / name} exists and is not a tiny model depth2img wrote "
            "(no .depth2img-tiny.json); remove it or choose another DIR\n"
        )
        assert [p.name for p in root.iterdir()] == [name]
        assert (root / name / "precious.txt").read_text() == "precious"
    old = tmp_path / "old"
    tiny.write_all(old, ["sd15-depth"])
    (old / "sd15-depth" / tiny.STAMP).write_text(json.dumps({"build": tiny.BUILD - 1, "kind": "sd15-depth"}))
    (old / "sd15-depth-controlnet" / tiny.STAMP).unlink()
    for folder in ("sd15-depth", "sd15-depth-controlnet"):
        (old / folder / "left-over").write_text("")
    tiny.write_all(old, ["sd15-depth"])
    assert tiny.is_current(old / "sd15-depth", "sd15-depth")
    assert sorted(p.name for p in old.iterdir()) == ["sd15-depth", "sd15-depth-controlnet"]
    assert not any((folder / "left-over").exists() for folder in old.iterdir())


def test_tiny_model_names_the_file_in_the_way_and_leaves_no_partial_model(tmp_path, capsys, monkeypatch):
    """A review of tiny-model (2026-11-28): a file DIR/dpt made `tiny-model DIR` fail with "DIR cannot be written (Not
    a directory)", DIR being a folder, after depth-anything was written, and left a whole model in DIR/.dpt.partial.
    The file is named now, before anything is written; a write that fails removes its partial folders."""
    from depth2img import tiny

    (tmp_path / "dpt").write_text("")
    code, out, err = run(capsys, "tiny-model", tmp_path)
    assert code == 2 and out == ""
    assert err == (
        f"depth2img: error: tiny-model: {tmp_path / 'dpt'} exists and is not a folder; "
        "remove it or choose another DIR\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["dpt"]

    def full_disk(kind, folder):  # the base and its ControlNet written, then the disk is full
        tiny.write_sd15(kind, folder)
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(tiny.WRITERS, "sd15-depth", full_disk)
    with pytest.raises(OSError, match="No space left"):
        tiny.write("sd15-depth", tmp_path / "sd15-depth")
    assert [p.name for p in tmp_path.iterdir()] == ["dpt"]


def test_console_script_exit_status(tmp_path):
    res = subprocess.run([sys.executable, "-m", "depth2img", "depth", str(tmp_path / "none.png"), "-o", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (
        res.returncode == 2
        and "none.png: no such file or directory" in res.stderr
        and "Traceback" not in res.stderr
    )


def test_a_closed_pipe_ends_a_listing_quietly(tmp_path, capsys):
    """`depth2img presets | head -1`: the reader gone, the write's BrokenPipeError was an "internal error", exit 1.
    An empty tiny-model DIR wrote every model into the current folder."""
    from depth2img.cli import main

    child = subprocess.Popen([sys.executable, "-m", "depth2img", "presets"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)  # fmt: skip
    child.stdout.close()  # before the child writes (it starts Python first)
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141 and err == "", err
    with pytest.raises(SystemExit) as code:
        main(["tiny-model", ""])
    assert code.value.code == 2 and "argument DIR: an output folder is needed, got an empty value" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "argv, said",
    [
        (["presets", "--presets-file", ""], "argument --presets-file: a file is needed"),
        (["batch", " "], "argument JOB.yaml: a file is needed"),
        (["eval", "", "b.png"], "argument SOURCE: a file is needed"),
        (["eval", "a.png", "b.png", "--source-depth", ""], "argument --source-depth: a file is needed"),
        (
            ["transform", "", "-o", "out", "--prompt", "x"],
            "argument INPUT: an image file, folder or glob is needed",
        ),
        (
            ["transform", "a.png", "-o", "o", "--prompt", "x", "--model", ""],
            "argument --model: a name, hub id or",
        ),
        (
            ["transform", "a.png", "-o", "o", "--prompt", "x", "--depth", ""],
            "argument --depth: a file is needed",
        ),
        (
            ["depth", "a.png", "-o", "o", "--estimator", ""],
            "argument --estimator: a name, hub id or folder is",
        ),
        (["depth", "a.png", "-o", "o", "--right", ""], "argument --right: a file is needed"),
    ],
)
def test_an_empty_path_or_model_is_refused_by_name(argv, said, capsys):
    """'' was read as '.' ("presets file .: cannot be read (Is a directory)", "job file .", "--depth: .: depth files
    must be one of ...", an INPUT '' as ": directory has no files ...") or as no value (--model '' loaded the
    default backbone), before any model loads. (The app's --model, --estimator, --lora and --controlnet take ''
    to turn the environment's value off.)"""
    from depth2img.cli import main

    with pytest.raises(SystemExit) as code:
        main(argv)
    err = capsys.readouterr().err
    assert code.value.code == 2 and said in err and "got an empty value" in err, err


def test_progress_bars_writing_to_a_log_refresh_every_30_seconds():
    """With stderr in a file, 8 inputs x 60 steps wrote 234 refreshes and 215 cursor movements of the nested bars."""
    import io

    from depth2img.outputs import LOG_REFRESH_S, progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert LOG_REFRESH_S == 30
    with progress_bar(total=5, file=Terminal()) as bar:
        assert bar.mininterval == 0.1  # tqdm's own
    log = io.StringIO()
    with progress_bar(total=500, file=log) as bar:
        for _ in range(500):
            bar.update(1)
            time.sleep(0.001)  # 0.5 s: five refreshes at tqdm's 0.1 s
    assert bar.mininterval == LOG_REFRESH_S
    assert log.getvalue().count("\r") == 2 and "500/500" in log.getvalue()  # its start and its end


def test_a_notebooks_progress_bars_keep_their_refresh(monkeypatch):
    """In Jupyter, tqdm.auto's class is its own, derived from tqdm.notebook's widget bar; its stream is no terminal,
    and it was taken for a log file."""
    import io

    import tqdm.auto
    import tqdm.std

    from depth2img.outputs import progress_bar

    widget = type("tqdm_notebook", (tqdm.std.tqdm,), {"__module__": "tqdm.notebook"})
    monkeypatch.setattr(tqdm.auto, "tqdm", type("tqdm", (widget,), {"__module__": "tqdm.auto"}))
    with progress_bar(total=3, file=io.StringIO()) as bar:
        assert bar.mininterval == 0.1
