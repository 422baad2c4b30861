"""Batch jobs: job-file validation, labels carried pixel-aligned, geometry retries, resume after SIGKILL,
two processes equal to one."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from depth2img.batch import Job, load_job, read_manifest, run_job, variations
from depth2img.errors import Depth2ImgWarning, InputError
from depth2img.scene import CLASSES, render_driving_scene

W, H = 96, 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three procedural driving frames with COCO, YOLO and semantic-mask labels."""
    root = tmp_path_factory.mktemp("driving")
    for sub in ("frames", "yolo", "semantic"):
        (root / sub).mkdir()
    coco = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": n} for i, n in enumerate(CLASSES)],
    }
    for k in range(3):
        s = render_driving_scene(W, H, seed=k)
        s.image.save(root / "frames" / f"f{k}.png")
        Image.fromarray(s.semantic).save(root / "semantic" / f"f{k}.png")
        coco["images"].append({"id": 10 + k, "file_name": f"f{k}.png", "width": W, "height": H})
        lines = []
        for b in s.boxes:
            x, y, w, h = b["bbox"]
            c = CLASSES.index(b["label"])
            coco["annotations"].append({"id": 100 * k + b["id"], "image_id": 10 + k, "category_id": c,
                                        "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
            lines.append(f"{c} {(x + w / 2) / W:.6f} {(y + h / 2) / H:.6f} {w / W:.6f} {h / H:.6f}")
        (root / "yolo" / f"f{k}.txt").write_text("\n".join(lines) + "\n")
    (root / "coco.json").write_text(json.dumps(coco))
    return root


def write_job(root: Path, name="job.yaml", **overrides) -> Path:
    job = {"inputs": "frames", "output": "out", "model": "tiny", "presets": ["rain", "snow"], "seeds": 2,
           "knobs": {"steps": 2, "strength": 0.5}, "layout": "coco",
           "labels": {"coco": "coco.json", "yolo": "yolo", "masks": {"semantic": "semantic"}}}  # fmt: skip
    job.update(overrides)
    path = root / name
    path.write_text(yaml.safe_dump(job))
    return path


def test_labels_are_carried_and_stay_pixel_aligned(dataset, tmp_path):
    job = write_job(dataset, output=str(tmp_path / "out"))
    report = run_job(job, progress=False)
    out = tmp_path / "out"
    assert report.done == 12 and not report.failed and report.rejected == 0
    coco = json.loads((out / "annotations.json").read_text())
    src = json.loads((dataset / "coco.json").read_text())
    assert len(coco["images"]) == 12 and coco["categories"] == src["categories"]
    by_source = {im["file_name"]: im["id"] for im in src["images"]}
    for im in coco["images"]:
        img = Image.open(out / im["file_name"])
        assert img.size == (W, H) == (im["width"], im["height"])  # same size: labels stay aligned
        ours = [(a["category_id"], a["bbox"]) for a in coco["annotations"] if a["image_id"] == im["id"]]
        theirs = [
            (a["category_id"], a["bbox"])
            for a in src["annotations"]
            if a["image_id"] == by_source[im["source_file_name"]]
        ]
        assert ours == theirs and ours
        stem = Path(im["file_name"]).stem
        source_stem = im["source_file_name"][:-4]
        assert (out / "labels" / f"{stem}.txt").read_text() == (
            dataset / "yolo" / f"{source_stem}.txt"
        ).read_text()
        assert np.array_equal(np.asarray(Image.open(out / "masks" / "semantic" / f"{stem}.png")),
                              np.asarray(Image.open(dataset / "semantic" / f"{source_stem}.png")))  # fmt: skip
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    lines = read_manifest(out / "manifest.jsonl")
    assert len(lines) == 12 and all(r["final"] and r["accepted"] and r["attempt"] == 0 for r in lines)
    assert {"absrel", "delta1", "edge_f1"} <= set(lines[0]["geometry"]) and lines[0]["backbone"]["id"]
    assert sorted(p.name for p in (out / "depth").iterdir()) == [
        f"f{k}_depth{e}" for k in range(3) for e in (".npy", "16.png")
    ]
    assert yaml.safe_load((out / "job.resolved.yaml").read_text())["seed_list"] == [0, 1]


def test_geometry_retries_and_rejections_are_recorded(dataset, tmp_path):
    job = write_job(dataset, output=str(tmp_path / "o"), presets=["fog"], seeds=1, labels={},
                    geometry={"metric": "absrel", "threshold": 0.0, "retries": 2})  # fmt: skip
    report = run_job(job, progress=False)
    assert report.done == 0 and report.rejected == 3 and report.retried == 6
    lines = read_manifest(tmp_path / "o" / "manifest.jsonl")
    assert len(lines) == 9
    for item in {r["item"] for r in lines}:
        tries = sorted((r["attempt"], r["final"], r["seed"]) for r in lines if r["item"] == item)
        assert [(a, f) for a, f, _ in tries] == [(0, False), (1, False), (2, True)]
        assert len({s for *_, s in tries}) == 3  # each retry used another seed
    assert not (tmp_path / "o" / "images").exists()


def test_a_flat_source_is_rejected_at_once(dataset, tmp_path, monkeypatch):
    """A source whose depth is flat has no geometry to score: it scored AbsRel 0, delta1 1 (any output passed); its
    scores are null, no gate passes, and no retry is made (none could pass)."""
    import dataclasses

    from depth2img import metrics

    reference = metrics.geometry_reference
    monkeypatch.setattr(metrics, "geometry_reference", lambda d: dataclasses.replace(reference(d), flat=True))
    job = write_job(dataset, output=str(tmp_path / "o"), presets=["fog"], seeds=1, labels={},
                    geometry={"metric": "delta1", "threshold": 0.0, "retries": 2})  # fmt: skip
    report = run_job(job, progress=False)
    assert report.done == 0 and report.rejected == 3 and report.retried == 0
    lines = read_manifest(tmp_path / "o" / "manifest.jsonl")
    assert [(r["attempt"], r["final"], r["accepted"]) for r in lines] == [(0, True, False)] * 3
    assert all(
        r["geometry"] == dict.fromkeys(("absrel", "delta1", "edge_f1", "scale", "shift")) for r in lines
    )


def test_an_edge_gate_where_no_edge_can_be_looked_for_is_not_retried(dataset, tmp_path, monkeypatch):
    """Edge F1 is None where too few of a source's pixels are valid around them (a LiDAR's rows): a gate on it fails
    whatever a retry makes, and a job retried each item (only a flat source's were rejected at once)."""
    from depth2img import metrics

    scores = metrics.geometry_scores
    monkeypatch.setattr(metrics, "geometry_scores", lambda ref, out: {**scores(ref, out), "edge_f1": None})
    job = write_job(dataset, output=str(tmp_path / "o"), presets=["fog"], seeds=1, labels={},
                    geometry={"metric": "edge_f1", "threshold": 0.0, "retries": 2})  # fmt: skip
    report = run_job(job, progress=False)
    assert report.done == 0 and report.rejected == 3 and report.retried == 0


@pytest.mark.parametrize(
    "geometry", [{"metric": "delta1", "threshold": 0.0}, {"metric": "edge_f1", "threshold": 0.0}, {}]
)
def test_a_gate_on_delta1_over_narrow_range_sources_is_said_once(dataset, tmp_path, monkeypatch, geometry):
    """Against a source spanning a narrow depth range (10-13 m) a flat output scores delta1 near 1: a job gating on
    delta1 or AbsRel passed such outputs without a word (eval warned, batch did not)."""
    import dataclasses
    import warnings

    from depth2img import metrics
    from depth2img.errors import Depth2ImgWarning

    reference = metrics.geometry_reference
    monkeypatch.setattr(
        metrics, "geometry_reference", lambda d: dataclasses.replace(reference(d), flat_delta1=0.9)
    )
    job = write_job(
        dataset, output=str(tmp_path / "o"), presets=["fog"], seeds=1, labels={}, geometry=geometry
    )
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        run_job(job, progress=False)
    narrow = [
        str(w.message)
        for w in said
        if issubclass(w.category, Depth2ImgWarning) and "narrow" in str(w.message)
    ]
    if geometry.get("metric") == "delta1":
        assert narrow == ["3 source(s) span a narrow depth range (f0.png, f1.png, f2.png): a flat output scores "
                          "delta1 >= 0.5 against them, so the gate on delta1 says little there; gate on edge_f1 for "
                          "such scenes"]  # fmt: skip
    else:
        assert narrow == []


def test_the_narrow_depth_warning_is_said_once_for_a_job_of_several_processes(dataset, tmp_path, monkeypatch):
    """A review of multi-process runs (2026-11-28): each process warned of the narrow-range sources of its own share
    ("2 source(s) ..." and "4 source(s) ..." for a job of 6); the first says it once, for all, as one process does."""
    import dataclasses
    import warnings

    from depth2img import batch, metrics
    from depth2img.errors import Depth2ImgWarning

    reference = metrics.geometry_reference
    monkeypatch.setattr(
        metrics, "geometry_reference", lambda d: dataclasses.replace(reference(d), flat_delta1=0.9)
    )
    shares = []

    def gathered(items):  # every process's share, the other's as the first run gave it
        shares.append(items)
        return items + shares[0] if len(shares) > 1 else items

    monkeypatch.setattr(batch, "_gathered", gathered, raising=False)
    said = []
    # one source a chunk: process 0 makes f0 and f2, process 1 makes f1
    for rank, out in ((1, "p1"), (0, "p0")):
        monkeypatch.setattr(batch, "_distributed", lambda rank=rank: (rank, 2, None, lambda: None))
        job = write_job(dataset, output=str(tmp_path / out), presets=["fog"], seeds=1, labels={}, batch_size=1,
                        depth_batch_size=1, geometry={"metric": "delta1", "threshold": 0.0})  # fmt: skip
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_job(job, progress=False)
        said.append([str(w.message) for w in caught
                     if issubclass(w.category, Depth2ImgWarning) and "narrow" in str(w.message)])  # fmt: skip
    assert said[0] == [] and len(said[1]) == 1
    assert said[1][0].startswith("3 source(s) span a narrow depth range (f0.png, f1.png, f2.png): ")
    assert [[Path(p).name for p in share] for share in shares] == [["f1.png"], ["f0.png", "f2.png"]]


def test_imagefolder_layout_and_matrix(dataset, tmp_path):
    job = write_job(dataset, output=str(tmp_path / "hf"), presets=[], seeds=[7], layout="imagefolder", labels={},
                    matrix={"template": "a street, {time}, {weather}", "axes": {"time": ["at night"], "weather": ["rain", "fog"]}})  # fmt: skip
    report = run_job(job, progress=False)
    assert report.done == 6
    meta = [json.loads(x) for x in (tmp_path / "hf" / "train" / "metadata.jsonl").read_text().splitlines()]
    assert len(meta) == 6 and all((tmp_path / "hf" / "train" / m["file_name"]).is_file() for m in meta)
    assert {m["prompt"] for m in meta} == {"a street, at night, rain", "a street, at night, fog"}
    assert {m["variation"] for m in meta} == {"at-night-rain", "at-night-fog"}


def test_denoising_batches_span_sources_and_variations(dataset, tmp_path, monkeypatch):
    from depth2img.backends import Backend

    calls, original = [], Backend.__call__

    def counted(self, **kwargs):
        calls.append(
            (len(kwargs["generators"]), len(set(kwargs["prompts"])), len({id(d) for d in kwargs["depths"]}))
        )
        return original(self, **kwargs)

    monkeypatch.setattr(Backend, "__call__", counted)
    matrix = {"template": "a street, {weather}", "axes": {"weather": ["rain", "fog"]}}
    made = {}
    for size in (4, 1):
        out = tmp_path / f"b{size}"
        job = write_job(
            dataset, output=str(out), presets=[], matrix=matrix, seeds=[5], labels={}, batch_size=size
        )
        calls.clear()
        assert run_job(job, progress=False).done == 6
        made[size] = (
            list(calls),
            {p.name: np.asarray(Image.open(p), np.int16) for p in (out / "images").glob("*")},
        )
    # 3 sources x 2 prompts: batches of 4 (f0 and f1, both prompts; each photo's depth passed once) and 2 (f2),
    # against six single-image calls
    assert made[4][0] == [(4, 2, 2), (2, 2, 1)] and made[1][0] == [(1, 1, 1)] * 6
    assert made[4][1].keys() == made[1][1].keys() and len(made[1][1]) == 6
    for name, image in made[4][1].items():
        assert np.abs(image - made[1][1][name]).max() <= 1  # the same images, up to batched-kernel rounding


@pytest.mark.parametrize("command", ["batch", "transform"])
def test_sources_are_resized_to_generation_size_in_the_depth_thread(dataset, tmp_path, monkeypatch, command):
    """The main thread, which the denoising waits on, never resizes a source (~26 ms per 1080p photo at SD1.5 size)."""
    import threading

    from depth2img.transform_run import run_transform
    from depth2img.transformer import SceneTransformer

    threads, original = [], SceneTransformer.at_generation_size

    def spy(self, image, depth):
        threads.append(threading.current_thread().name.split("_")[0])
        return original(self, image, depth)

    monkeypatch.setattr(SceneTransformer, "at_generation_size", spy)
    # nor normalises a depth (the control images are made from depths the depth thread has normalised)
    from depth2img import conditioning

    normalized, normalize = [], conditioning.normalize
    monkeypatch.setattr(
        conditioning,
        "normalize",
        lambda *a: normalized.append(threading.current_thread().name) or normalize(*a),
    )
    if command == "batch":
        job = write_job(dataset, output=str(tmp_path / "o"), presets=["rain", "snow"], seeds=1, labels={})
        assert run_job(job, progress=False).done == 6
    else:
        report = run_transform([dataset / "frames"], tmp_path / "o", preset="rain", model="tiny", progress=False,
                               knobs={"steps": 2})  # fmt: skip
        assert len(report.done) == 3
    assert threads == ["depth2img-depth"] * 3  # once per source, whatever the number of variations
    assert normalized and "MainThread" not in normalized


def test_a_batch_job_never_makes_control_images(dataset, tmp_path, monkeypatch):
    """The input-size control image (~20-40 ms per 1080p depth) is made only when a result is asked for it."""
    from depth2img.depthmap import DepthMap

    def refuse(self):
        raise AssertionError("a control image was made")

    monkeypatch.setattr(DepthMap, "control_pil", property(refuse))
    job = write_job(dataset, output=str(tmp_path / "o"), presets=["rain"], seeds=2, labels={}, batch_size=4)
    assert run_job(job, progress=False).done == 6


def test_one_variation_still_fills_a_denoising_batch(dataset, tmp_path, monkeypatch):
    from depth2img.backends import Backend
    from depth2img.estimators import DepthEstimator

    calls, estimated = [], []
    original_call, original_estimate = Backend.__call__, DepthEstimator.__call__

    def denoise(self, **kwargs):
        calls.append(len(kwargs["generators"]))
        return original_call(self, **kwargs)

    def estimate(self, images, batch_size=None, **kwargs):
        estimated.append((len(images), batch_size))
        return original_estimate(self, images, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(Backend, "__call__", denoise)
    monkeypatch.setattr(DepthEstimator, "__call__", estimate)
    job = write_job(dataset, output=str(tmp_path / "o"), presets=["rain"], seeds=1, labels={}, batch_size=3,
                    depth_batch_size=1)  # fmt: skip
    assert run_job(job, progress=False).done == 3
    # one chunk of batch_size sources: one denoising call of 3 (it was three calls of 1), while the estimator
    # still runs batches of depth_batch_size: the 3 sources, then the 3 outputs
    assert calls == [3] and estimated == [(3, 1), (3, 1)]


def test_geometry_check_of_a_batch_runs_while_the_next_is_denoised(dataset, tmp_path, monkeypatch):
    import threading

    from depth2img import metrics
    from depth2img.backends import Backend

    second_batch_started, calls, seen = threading.Event(), [], []
    original_call, original_scores = Backend.__call__, metrics.geometry_scores

    def denoise(self, **kwargs):
        calls.append(len(kwargs["generators"]))
        if len(calls) == 2:
            second_batch_started.set()
        return original_call(self, **kwargs)

    def scores(reference, output):
        # the first batch's check waits for the second batch's denoising: it would time out if run in between
        seen.append((threading.current_thread().name, second_batch_started.wait(timeout=30)))
        return original_scores(reference, output)

    monkeypatch.setattr(Backend, "__call__", denoise)
    monkeypatch.setattr(metrics, "geometry_scores", scores)
    job = write_job(dataset, output=str(tmp_path / "g"), presets=["rain"], seeds=2, labels={}, batch_size=4)
    report = run_job(job, progress=False)
    assert report.done == 6 and calls == [4, 2]
    assert len(seen) == 6 and all(
        name.startswith("depth2img-depth") and overlapped for name, overlapped in seen
    )
    assert all(r["geometry"]["delta1"] >= 0 for r in read_manifest(tmp_path / "g" / "manifest.jsonl"))


def test_parallel_writer_threads_give_the_same_dataset(dataset, tmp_path, monkeypatch):
    from depth2img import outputs

    made = {}
    for threads in (1, 3):
        monkeypatch.setattr(outputs, "WRITER_THREADS", threads)
        out = tmp_path / f"w{threads}"
        job = write_job(dataset, output=str(out), presets=["rain"], seeds=2, batch_size=4, depth_batch_size=2)
        assert run_job(job, progress=False).done == 6
        made[threads] = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert made[1].keys() == made[3].keys() and len([n for n in made[1] if n.startswith("images/")]) == 6
    for name, data in made[
        1
    ].items():  # byte-identical: images, labels, depth, manifest lines in the same order
        if name != "job.resolved.yaml":
            assert made[3][name] == data, name


def test_next_chunks_depth_is_estimated_while_this_chunk_is_denoised(dataset, tmp_path, monkeypatch):
    import threading

    from depth2img.backends import Backend
    from depth2img.estimators import DepthEstimator

    estimated, next_chunk_started, waits = [], threading.Event(), []
    original_call, original_estimate = Backend.__call__, DepthEstimator.__call__

    def estimate(self, images, *args, **kwargs):
        estimated.append((threading.current_thread().name, [im.size for im in images]))
        if len(estimated) == 2:  # the second chunk's source depth (the first chunk's check comes after it)
            next_chunk_started.set()
        return original_estimate(self, images, *args, **kwargs)

    def denoise(self, **kwargs):
        if not waits:  # the first chunk's first batch: the next chunk's depth must start meanwhile
            waits.append(next_chunk_started.wait(timeout=20))
        return original_call(self, **kwargs)

    monkeypatch.setattr(Backend, "__call__", denoise)
    monkeypatch.setattr(DepthEstimator, "__call__", estimate)
    job = write_job(
        dataset,
        output=str(tmp_path / "n"),
        presets=["rain"],
        seeds=1,
        labels={},
        depth_batch_size=2,
        batch_size=2,
    )
    report = run_job(job, progress=False)
    assert report.done == 3 and waits == [True]
    # chunks [f0, f1] and [f2]: every estimate (sources and outputs) runs in the one depth thread
    assert {name.split("_")[0] for name, _ in estimated} == {"depth2img-depth"}
    assert [len(sizes) for _, sizes in estimated][:2] == [2, 1]
    assert len(estimated) == 4 and all(sizes == [(W, H)] * len(sizes) for _, sizes in estimated)


def test_resume_skips_finished_and_refuses_to_mix_runs(dataset, tmp_path):
    job = write_job(dataset, output=str(tmp_path / "r"), presets=["dusk"], seeds=1, labels={})
    assert run_job(job, progress=False).done == 3
    resolved = (tmp_path / "r" / "job.resolved.yaml").read_text()
    job.write_text(job.read_text().replace("dusk", "dawn"))
    with pytest.raises(InputError, match="already holds a run; pass --resume"):
        run_job(job, progress=False)
    assert (
        tmp_path / "r" / "job.resolved.yaml"
    ).read_text() == resolved  # the earlier run's record is untouched
    job.write_text(job.read_text().replace("dawn", "dusk"))
    again = run_job(job, resume=True, progress=False)
    assert again.done == 0 and again.skipped == 3
    assert len(read_manifest(tmp_path / "r" / "manifest.jsonl")) == 3
    # what makes the images must not change under --resume (new items would be made another way)
    text = job.read_text()
    stale = tmp_path / "r" / "images" / ".f0__dusk__s0.png.1a2b3c4d.part.png"
    stale.write_bytes(b"half")
    for edit, changed in [
        (text.replace("model: tiny", "model: tiny/sd2-depth"), "model"),
        (text.replace("strength: 0.5", "strength: 0.6"), "knobs"),
        (text + "dtype: bfloat16\n", "dtype"),
    ]:  # fmt: skip
        job.write_text(edit)
        with pytest.raises(InputError, match=f"^--resume \\(resume=True\\): this job's {changed} differs from the run in .*r "
                           r"\(job.resolved.yaml\); its earlier images were made otherwise"):  # fmt: skip
            run_job(job, resume=True, progress=False)
    assert (tmp_path / "r" / "job.resolved.yaml").read_text() == resolved and stale.exists()  # left untouched
    # a knob stated at the value the images ran with (its default) makes them again: it was 'knobs differs'
    job.write_text(text.replace("strength: 0.5", "strength: 0.5\n  guidance_scale: 7.5"))
    assert run_job(job, resume=True, progress=False).skipped == 3
    # with no record to check a job against, a changed one went on, mixing two runs' images in one dataset
    (tmp_path / "r" / "job.resolved.yaml").unlink()
    job.write_text(text.replace("strength: 0.5", "strength: 0.6"))
    gone = r"^--resume \(resume=True\): the run in .*r has no readable job.resolved.yaml, the record of the settings"
    with pytest.raises(
        InputError, match=gone + " a batch run's images were made with \\(a transform run writes none\\); "
    ):
        run_job(job, resume=True, progress=False)


def test_resume_refuses_a_preset_whose_definition_changed(dataset, tmp_path, monkeypatch):
    """job.resolved.yaml recorded a preset's name only: a presets file changed between runs made the resumed images
    from another prompt, in one dataset."""
    import yaml as yaml_

    presets = tmp_path / "mine.yaml"
    presets.write_text("presets:\n  mine:\n    prompt: '{prompt}, mine'\n")
    monkeypatch.setenv("DEPTH2IMG_PRESETS", str(presets))
    job = write_job(dataset, output=str(tmp_path / "r"), presets=["mine"], seeds=1, labels={})
    assert run_job(job, progress=False).done == 3
    record = tmp_path / "r" / "job.resolved.yaml"
    (variation,) = yaml_.safe_load(record.read_text())["variations"]
    assert variation["expanded"] == {"prompt": "mine", "negative": "", "knobs": {}}  # the job gives no prompt
    presets.write_text("presets:\n  mine:\n    prompt: '{prompt}, CHANGED'\n")
    with pytest.raises(
        InputError, match="^--resume \\(resume=True\\): this job's variation 'mine' differs from the run in "
    ):
        run_job(job, resume=True, progress=False)
    # a record written before the expansions were: compared without them, as before
    earlier = yaml_.safe_load(record.read_text())
    del earlier["variations"][0]["expanded"]
    record.write_text(yaml_.safe_dump(earlier, sort_keys=False))
    assert run_job(job, resume=True, progress=False).skipped == 3


def test_presets_files_from_the_job_and_the_command_line(dataset, tmp_path, monkeypatch, capsys):
    """A job's presets came only from $DEPTH2IMG_PRESETS: now also from its presets_files (from the job file's
    folder) and from batch --presets-file (from the current directory, after the job's: a later file overrides a
    name, as everywhere else). A file that cannot be read is refused before anything is written."""
    from depth2img.cli import main

    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "own.yaml").write_text(
        "presets:\n  mine:\n    prompt: '{prompt}, from the job'\n    negative: 'mine-negative'\n"
    )
    (tmp_path / "cli.yaml").write_text("presets:\n  mine:\n    prompt: '{prompt}, from the command line'\n")
    job = write_job(tmp_path / "job", inputs=str(dataset / "frames" / "f0.png"), output="out", presets=["mine"],
                    presets_files="own.yaml", seeds=1, labels={})  # fmt: skip
    monkeypatch.chdir(tmp_path)
    from depth2img import presets as presets_mod

    read, load = [], presets_mod._load_file
    monkeypatch.setattr(
        presets_mod, "_load_file", lambda path, *a: read.append(Path(path).name) or load(path, *a)
    )
    assert main(["batch", str(job), "-q"]) == 0
    assert (
        read.count("own.yaml") == 1
    )  # checked, recorded and used: one read (the model read the files again)
    (line,) = read_manifest(tmp_path / "job" / "out" / "manifest.jsonl")
    assert line["prompt"] == "from the job" and line["negative_prompt"] == "mine-negative"
    # another expansion: no resume
    assert main(["batch", str(job), "-q", "--resume", "--presets-file", "cli.yaml"]) == 2
    assert "variation 'mine' differs" in capsys.readouterr().err
    job.write_text(job.read_text().replace("output: out", "output: out2"))
    assert main(["batch", str(job), "-q", "--presets-file", "cli.yaml"]) == 0
    (line,) = read_manifest(tmp_path / "job" / "out2" / "manifest.jsonl")
    assert line["prompt"] == "from the command line" and line["negative_prompt"] == ""
    assert load_job(job).presets_files == [str(tmp_path / "job" / "own.yaml")]
    job.write_text(job.read_text().replace("presets_files: own.yaml", "presets_files: [own.yaml, gone.yaml]"))
    with pytest.raises(InputError, match=r"^job file .*: presets file .*gone\.yaml: no such file$"):
        load_job(job)
    # where the path came from, never 'job key presets_files' for a file the job does not name
    job.write_text(job.read_text().replace("[own.yaml, gone.yaml]", "own.yaml"))
    monkeypatch.setenv("DEPTH2IMG_PRESETS", "env-gone.yaml")
    with pytest.raises(
        InputError, match=r"presets file env-gone\.yaml \(from \$DEPTH2IMG_PRESETS\): no such file$"
    ):
        load_job(job)
    monkeypatch.delenv("DEPTH2IMG_PRESETS")
    (tmp_path / "twice.yaml").write_text(
        "presets:\n  a:\n    prompt: '{prompt}, 1'\n  a:\n    prompt: '{prompt}, 2'\n"
    )
    with pytest.raises(
        InputError, match=r"^presets file twice\.yaml: malformed YAML at line 4, column 3: duplicate key 'a'$"
    ):
        load_job(job, extra_presets_files=["twice.yaml"])
    with pytest.raises(InputError, match="^job key presets_files must be a path or a list of paths, got 3$"):
        Job(inputs="x", output="o", prompt="p", presets_files=3)
    assert (
        Job(inputs="x", output="o", prompt="p", presets_files=None).presets_files == []
    )  # `presets_files:` empty


def test_resume_of_a_run_that_recorded_a_lora_scale_without_a_lora(tmp_path):
    """Such a job was accepted, the scale ignored; now refused, and with the key removed --resume said the earlier
    images were made otherwise (they were not: the scale scaled nothing)."""
    import yaml as yaml_

    from depth2img.batch import _check_same_run, _resolved, load_job

    (tmp_path / "job.yaml").write_text("inputs: x\noutput: out\nprompt: p\nmodel: tiny\n")
    job = load_job(tmp_path / "job.yaml")
    earlier = yaml_.safe_load(yaml_.safe_dump({**_resolved(job), "lora_scale": 0.5}))
    record = tmp_path / "out" / "job.resolved.yaml"
    _check_same_run(job, earlier, record)  # the same images: no error
    earlier["lora"] = "tiny/lcm-sd15"  # a LoRA at 0.5 then, none now
    with pytest.raises(
        InputError, match="^--resume \\(resume=True\\): this job's lora, lora_scale differ from the run"
    ):
        _check_same_run(job, earlier, record)


def test_a_jobs_controlnet_runs_and_a_resume_with_another_is_refused(dataset, tmp_path, tiny_dir):
    """``controlnet``: a folder beside the job file, as ``transform --controlnet``; an earlier run's images were
    made with the ControlNet it recorded (a run from before the key: the model's own)."""
    import shutil

    shutil.copytree(tiny_dir / "sd15-depth-controlnet", dataset / "my-controlnet", dirs_exist_ok=True)
    job = write_job(dataset, name="cn.yaml", output=str(tmp_path / "out"), presets=["rain"], seeds=1, labels={},
                    layout="files", controlnet="my-controlnet")  # fmt: skip
    assert run_job(job, progress=False).done == 3
    lines = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert {r["backbone"]["controlnet"] for r in lines} == {str(dataset / "my-controlnet")}
    record = tmp_path / "out" / "job.resolved.yaml"
    assert yaml.safe_load(record.read_text())["controlnet"] == str(dataset / "my-controlnet")
    # a Service given loads its own ControlNet: the images would not be what job.resolved.yaml records
    from depth2img.service import Service

    with pytest.raises(
        InputError, match=r"^service: its controlnet differs from the job's; the images would not"
    ):
        run_job(job, progress=False, service=Service(model="tiny"))
    # the same settings spelt otherwise: a folder relative to the current directory, the scale as an int
    mine = os.path.relpath(dataset / "my-controlnet")
    same = Service(model="tiny", controlnet=mine, lora_scale=1)
    assert run_job(job, resume=True, progress=False, service=same).skipped == 3
    with pytest.raises(InputError, match=r"^service: its dtype, presets differ from the job's"):
        run_job(
            job, progress=False, service=Service(model="tiny", controlnet=mine, presets={}, dtype="float32")
        )

    again = write_job(dataset, name="own.yaml", output=str(tmp_path / "out"), presets=["rain"], seeds=1, labels={},
                      layout="files")  # fmt: skip
    with pytest.raises(InputError, match="this job's controlnet differs? from the run"):
        run_job(again, resume=True, progress=False)
    # the model's own ControlNet, named or not, makes the same images: a resume either way is the same run, and a
    # Service without it serves a job naming it
    own = write_job(dataset, name="named.yaml", output=str(tmp_path / "own"), presets=["rain"], seeds=1,
                    labels={}, layout="files", controlnet=str(tiny_dir / "sd15-depth-controlnet"))  # fmt: skip
    assert run_job(own, progress=False, service=Service(model="tiny")).done == 3
    unnamed = write_job(dataset, name="unnamed.yaml", output=str(tmp_path / "own"), presets=["rain"], seeds=1,
                        labels={}, layout="files")  # fmt: skip
    assert run_job(unnamed, resume=True, progress=False).skipped == 3
    # a job naming no model: the Service's makes the images, so its own ControlNet is the one compared (the
    # registry's default backbone's was: a review, 2026-11-27)
    for name, named in (("m1.yaml", str(tiny_dir / "sd15-depth-controlnet")), ("m2.yaml", None)):
        modelless = yaml.safe_load(own.read_text())
        del modelless["model"]
        modelless.update(output=str(tmp_path / "modelless"), controlnet=named)
        (dataset / name).write_text(yaml.safe_dump(modelless))
        report = run_job(
            dataset / name, resume=name == "m2.yaml", progress=False, service=Service(model="tiny")
        )
        assert (report.done, report.skipped) == ((3, 0) if named else (0, 3))
    older = yaml.safe_load(record.read_text())
    del older["controlnet"]  # a run from before the key used the model's own
    record.write_text(yaml.safe_dump(older))
    with pytest.raises(InputError, match="this job's controlnet differs? from the run"):
        run_job(job, resume=True, progress=False)
    assert run_job(again, resume=True, progress=False).skipped == 3


def test_a_folder_outside_the_registry_counts_the_controlnet_it_loads_as_its_own(tmp_path):
    """A local folder of a registry pipeline kind that holds no ControlNet loads the registry's depth ControlNet of
    that kind (the loader's fallback): named, it is the model's own, the same images as none (it was compared as
    another: a resume naming it refused)."""
    from depth2img.registry import backbones
    from depth2img.service import controlnet_source

    folder = tmp_path / "finetune"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    own = next(e for e in backbones().values() if e.pipeline == "sd15-controlnet" and e.controlnet)
    assert controlnet_source(own.controlnet, str(folder)) is None
    assert controlnet_source("someone/depth-controlnet", str(folder)) == ("someone/depth-controlnet", None)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert controlnet_source(own.controlnet, str(folder)) == (own.controlnet, own.companion_revision)


def test_a_model_not_at_hand_is_named_before_any_model_loads_or_folder_is_made(dataset, tmp_path, tiny_dir,
                                                                               monkeypatch):  # fmt: skip
    from depth2img.errors import ModelLoadError
    from depth2img.estimators import DepthEstimator

    def no_load(*args, **kwargs):
        raise AssertionError("a model started loading")

    monkeypatch.setattr(DepthEstimator, "from_pretrained", no_load)
    for key, given, message in (
        ("controlnet", str(tiny_dir / "sd15-depth" / "unet"), "holds UNet2DConditionModel, not a diffusers ControlNet"),
        ("controlnet", "someone/depth-controlnet", "ControlNet someone/depth-controlnet is not in the local Hugging"),
        ("model", "someone/sd15-finetune", "model someone/sd15-finetune is not in the local Hugging Face cache"),
    ):  # fmt: skip
        job = write_job(dataset, name="bad.yaml", output=str(tmp_path / "o"), presets=["rain"], seeds=1, labels={},
                        layout="files", **{key: given})  # fmt: skip
        with pytest.raises(ModelLoadError, match=message):
            run_job(job, progress=False)
        assert not (tmp_path / "o").exists()


def test_resume_of_a_moved_project_compares_its_own_folders(tmp_path, tiny_dir):
    """A job's ./models/x became an absolute path in job.resolved.yaml: a project moved (or another HOME) was
    refused on --resume as another model."""
    import yaml as yaml_

    from depth2img.batch import _check_same_run, _earlier_record, _resolved, load_job

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "models").symlink_to(tiny_dir)
    (tmp_path / "a" / "job.yaml").write_text(
        "inputs: x\noutput: out\nprompt: p\nmodel: ./models/sd15-depth\n"
    )
    record = tmp_path / "a" / "out" / "job.resolved.yaml"
    record.parent.mkdir()
    record.write_text(yaml_.safe_dump(_resolved(load_job(tmp_path / "a" / "job.yaml")), sort_keys=False))
    (tmp_path / "a").rename(tmp_path / "b")
    moved = load_job(tmp_path / "b" / "job.yaml")
    assert moved.model == str(tmp_path / "b" / "models" / "sd15-depth")
    record = tmp_path / "b" / "out" / "job.resolved.yaml"
    _check_same_run(moved, _earlier_record(record), record)  # the same run: no error
    (tmp_path / "b" / "job.yaml").write_text("inputs: x\noutput: out\nprompt: p\nmodel: ./models/sd2-depth\n")
    with pytest.raises(
        InputError, match="^--resume \\(resume=True\\): this job's model differs from the run in "
    ):
        _check_same_run(load_job(tmp_path / "b" / "job.yaml"), _earlier_record(record), record)


def test_resume_compares_knobs_as_the_backbone_and_lora_resolve_them(tmp_path):
    """Knobs are compared as each variation ran them; a few-step LoRA's (lcm-sd15: 4 steps, guidance 1) and Flux's
    guidance sit over a preset's, so stating the generic defaults is a change: it was let through (4c07297's first
    comparison knew no model layer), 4-step images beside 30-step ones in one dataset."""
    import yaml as yaml_

    from depth2img.batch import _check_same_run, _earlier_record, _resolved, load_job

    job = tmp_path / "job.yaml"
    record = tmp_path / "out" / "job.resolved.yaml"
    record.parent.mkdir()
    for model, lora, stated in (("tiny", "lcm-sd15", "{steps: 30, guidance_scale: 7.5}"),
                                ("tiny/flux-depth", None, "{guidance_scale: 7.5}")):  # fmt: skip
        body = f"inputs: x\noutput: out\nprompt: p\nmodel: {model}\n" + (f"lora: {lora}\n" if lora else "")
        job.write_text(body)
        record.write_text(yaml_.safe_dump(_resolved(load_job(job)), sort_keys=False))
        job.write_text(body + f"knobs: {stated}\n")
        with pytest.raises(
            InputError, match="^--resume \\(resume=True\\): this job's knobs differs from the run"
        ):
            _check_same_run(load_job(job), _earlier_record(record), record)
        # the values the model ran with, stated: the same images
        ran = load_job(tmp_path / "job.yaml")._model_knobs
        job.write_text(body + f"knobs: {ran}\n")
        _check_same_run(load_job(job), _earlier_record(record), record)


def test_resume_takes_a_label_folder_however_its_path_is_spelt(tmp_path):
    """The labels' paths were compared as typed: the same folder spelt ./ds/labels or absolute was refused as
    'this job's labels differs'."""
    import yaml as yaml_

    from depth2img.batch import _check_same_run, _earlier_record, _resolved, load_job

    job = tmp_path / "job.yaml"
    body = "inputs: x\noutput: out\nprompt: p\nlabels: {{yolo: {}, masks: {{sem: {}}}}}\n"
    job.write_text(body.format("ds/labels", "ds/sem"))
    record = tmp_path / "out" / "job.resolved.yaml"
    record.parent.mkdir()
    record.write_text(yaml_.safe_dump(_resolved(load_job(job)), sort_keys=False))
    for folder in ("labels", "sem"):
        (tmp_path / "ds" / folder).mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "ds")  # the same folders through a link
    for yolo, sem in (("./ds/labels/", "ds/x/../sem"), (str(tmp_path / "ds" / "labels"), "ds/sem/"),
                      ("link/labels", "link/sem")):  # fmt: skip
        job.write_text(body.format(yolo, sem))
        _check_same_run(load_job(job), _earlier_record(record), record)  # the same folders: no error
    for yolo, sem in (("ds/other", "ds/sem"), ("ds/labels", "sem")):
        job.write_text(body.format(yolo, sem))
        with pytest.raises(
            InputError, match="^--resume \\(resume=True\\): this job's labels differs from the run"
        ):
            _check_same_run(load_job(job), _earlier_record(record), record)


def test_a_job_of_unreadable_sources_loads_no_model(dataset, tmp_path, monkeypatch):
    from depth2img.service import Service

    loaded = []
    monkeypatch.setattr(Service, "estimator", lambda self, *a, **k: loaded.append("estimator"))
    monkeypatch.setattr(Service, "transformer", lambda self, *a, **k: loaded.append("model"))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "zero.jpg").write_bytes(b"")
    job = write_job(dataset, output=str(tmp_path / "m"), presets=["fog"], seeds=2, labels={},
                    inputs=[str(tmp_path / "broken.png"), str(tmp_path / "zero.jpg")])  # fmt: skip
    report = run_job(job, progress=False)
    assert loaded == [] and report.done == 0 and len(report.failed) == 2
    assert any("broken.png: not a readable image" in f for f in report.failed)
    assert any("zero.jpg: empty file" in f for f in report.failed)


def test_a_resume_with_only_unreadable_sources_left_loads_no_model(dataset, tmp_path, monkeypatch):
    """--resume reads the model's dtype to compare it with the earlier run's: only where a source left loads."""
    from depth2img.service import Service

    (tmp_path / "broken.png").write_bytes(b"not a png")
    job = write_job(dataset, output=str(tmp_path / "m"), presets=["fog"], seeds=1, labels={},
                    inputs=[str(dataset / "frames" / "f0.png"), str(tmp_path / "broken.png")])  # fmt: skip
    assert run_job(job, progress=False).done == 1
    loaded = []
    monkeypatch.setattr(Service, "estimator", lambda self, *a, **k: loaded.append("estimator"))
    monkeypatch.setattr(Service, "transformer", lambda self, *a, **k: loaded.append("model"))
    report = run_job(job, resume=True, progress=False)
    assert loaded == [] and report.done == 0 and report.skipped == 1
    assert len(report.failed) == 1 and "broken.png: not a readable image" in report.failed[0]


def test_missing_inputs_are_listed_and_skipped(dataset, tmp_path):
    (tmp_path / "list.txt").write_text(f"{dataset / 'frames' / 'f0.png'}\nnope.png\n")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    # readable, but the tiny estimator's 56 px input would give it a side of 0 px; it shares a depth batch with f0
    Image.new("RGB", (256, 16)).save(tmp_path / "strip.png")
    job = write_job(dataset, output=str(tmp_path / "m"), presets=["fog"], seeds=1, labels={},
                    inputs=[str(tmp_path / "list.txt"), str(tmp_path / "broken.png"), str(tmp_path / "strip.png")])  # fmt: skip
    report = run_job(job, progress=False)
    assert report.done == 1 and len(report.failed) == 3
    assert any("nope.png: no such file" in f for f in report.failed)
    assert any("broken.png: not a readable image" in f for f in report.failed)
    assert any("strip.png: image: 256x16 cannot be resized for estimator" in f for f in report.failed)


def test_manifest_lines_are_read_as_asked():
    """Readers that need a few fields of each line (resume, the index) held whole records, ~10 KB a line: a
    --resume of a 60k-line manifest peaked at 1.5 GB of RSS (528 MB now)."""
    from depth2img.outputs import manifest_records

    data = b'{"a": 1, "b": 2}\nnot json\n{"a": 3}\n[1]\n\n{"a": 4, "b": 5}\n{"a": 6, "b'  # the last line torn
    assert manifest_records(data) == [{"a": 1, "b": 2}, {"a": 3}, {"a": 4, "b": 5}]
    assert manifest_records(data, keep=lambda r: "b" in r, fields=("a", "c")) == [{"a": 1}, {"a": 4}]


def test_a_merge_copies_the_lines_it_keeps(tmp_path):
    """The merge of a multi-process run's rank files parsed and held every whole record (~10 KB a line: ~10 GB for a
    1M-image run) to write them out again; it reads a few fields of each line and copies the lines it keeps byte
    for byte (so a line written otherwise, keys unsorted or spaced, stays as written). A torn last line is cut."""
    from depth2img.batch import _settle_manifests
    from depth2img.outputs import locked_manifest, manifest_index

    (tmp_path / "i").mkdir()
    for name in "abc":
        (tmp_path / "i" / f"{name}.png").write_bytes(b"png")
    rank0 = b'{"output": "i/a.png", "item": "a", "source": "x", "z": [1,  2]}\nnot json\n'
    rank1 = b'{"item":"b","output":"i/b.png","source":"y"}\n{"item": "gone", "output": "i/gone.png"}\n{"item": "c", "ou'
    (tmp_path / "manifest.rank0.jsonl").write_bytes(rank0)
    (tmp_path / "manifest.rank1.jsonl").write_bytes(rank1)
    with locked_manifest(tmp_path / "manifest.rank1.jsonl", "r+b") as fh:
        index = manifest_index(fh, ("item", "output"))
    assert [{k: v for k, v in r.items() if k != "_at"} for r in index] == [
        {"item": "b", "output": "i/b.png"}, {"item": "gone", "output": "i/gone.png"}]  # fmt: skip
    assert [r["_at"][1:] for r in index] == [(0, 45), (45, 41)]
    assert (tmp_path / "manifest.rank1.jsonl").read_bytes() == rank1[:86]  # the torn line cut off
    _settle_manifests(tmp_path, {"y": 0, "x": 1})
    assert (tmp_path / "manifest.jsonl").read_bytes() == rank1[:45] + rank0.split(b"\n")[0] + b"\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i", "manifest.jsonl"]


def test_a_job_with_no_source_found_writes_nothing(dataset, tmp_path):
    """Every source missing: the run wrote its output folder and job.resolved.yaml, then failed each source."""
    job = write_job(dataset, output=str(tmp_path / "m"), presets=["fog"], seeds=1, labels={},
                    inputs=[str(tmp_path / "nope.png"), str(tmp_path / "gone")])  # fmt: skip
    with pytest.raises(InputError, match=r"^job key inputs: no source image found: .*nope\.png: no such file or "
                                         r"directory \(and 1 more\)$"):  # fmt: skip
        run_job(job, progress=False)
    assert not (tmp_path / "m").exists()


def test_missing_inputs_are_reported_by_one_process_of_several(dataset, tmp_path, monkeypatch):
    """Every process found the missing input and reported it: one line per process, counted once each."""
    from depth2img import batch

    (tmp_path / "list.txt").write_text(f"{dataset / 'frames' / 'f0.png'}\nnope.png\n")
    job = write_job(dataset, output=str(tmp_path / "m"), presets=["fog"], seeds=1, labels={},
                    inputs=str(tmp_path / "list.txt"))  # fmt: skip
    monkeypatch.setattr(batch, "_distributed", lambda: (1, 2, None, lambda: None))  # f0's chunk is rank 0's
    second = run_job(job, progress=False)
    assert second.failed == [] and second.done == 0
    assert second.summary().startswith("process 1 of 2: 0 done, 0 failed")
    monkeypatch.setattr(batch, "_distributed", lambda: (0, 2, None, lambda: None))
    # more processes than chunks: the idle one said (by the first only), not left to a summary of 0 done
    idle = r"^2 processes, but the job's 1 source\(s\) make 1 chunk\(s\) of up to 8 \(batch_size, depth_batch_size\): 1"
    with pytest.warns(Depth2ImgWarning, match=idle):
        first = run_job(job, resume=True, progress=False)
    assert first.done == 1 and len(first.failed) == 1 and "nope.png: no such file" in first.failed[0]
    # the first process, which merged the manifests, gives the job-wide count (each summary is its share)
    assert first.summary().endswith("; the dataset holds 1 image") and "dataset" not in second.summary()


def test_an_error_every_process_meets_is_printed_by_the_first_only(dataset, tmp_path, monkeypatch, capsys):
    """A bad job file, or an output folder holding a run, was printed by each process (8 GPUs: 8 lines). The others
    wait for the launcher to stop them once the first has left: leaving at once, they made it stop the first
    mid-line ("terminated", or a traceback, in 3 runs of 6)."""
    import signal
    import time

    from depth2img import batch
    from depth2img.cli import main

    waits = []

    def sleep(seconds):  # the first process has said it and left: the launcher stops this one
        waits.append(seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(time, "sleep", sleep)

    job = write_job(dataset, output=str(tmp_path / "m"), presets=["fog"], seeds=1, labels={})
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.jsonl").write_text("")  # an earlier run's
    monkeypatch.setattr(batch, "_distributed", lambda: (int(os.environ["RANK"]), 2, None, lambda: None))
    for rank, shown in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        for argv, message in (
            (["batch", str(tmp_path / "gone.yaml")], "gone.yaml"),
            (["batch", str(job)], "already holds a run; pass --resume"),
        ):
            if shown:
                assert main(argv) == 2 and waits == []
            else:
                with pytest.raises(SystemExit) as stopped:
                    main(argv)
                assert stopped.value.code == 2 and waits.pop() == 10  # every process exits 2, quietly
            err = capsys.readouterr().err
            assert (message in err) is shown and (err == "") is not shown, (rank, err)
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    # an error of this process's own: printed whatever its rank
    monkeypatch.setenv("RANK", "1")
    assert main(["transform", str(tmp_path / "gone.png"), "-o", str(tmp_path / "t")]) == 2
    assert "give a --prompt or a --preset" in capsys.readouterr().err


def test_a_chunks_last_geometry_check_runs_while_the_next_chunk_is_denoised(dataset, tmp_path, monkeypatch):
    """With no threshold no retry can come of a check, yet each chunk's last one was waited for before the next
    chunk's first batch: the GPU idle for one check per chunk (per batch, in a job of one variation and seed)."""
    import threading

    from depth2img import batch, metrics

    scores, generate = metrics.geometry_scores, batch._generate
    second_chunk, overlapped = threading.Event(), []

    def first_waits_for_the_second_chunk(*args, **kwargs):  # in the depth thread
        if not overlapped:
            overlapped.append(second_chunk.wait(timeout=10))
        return scores(*args, **kwargs)

    def denoise(st, units, report):
        if units[0].source.stem == "f1":
            second_chunk.set()
        return generate(st, units, report)

    class Writer(batch.BackgroundWriter):  # its room: two batches' writes
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            rooms.append(self.max_pending)

    rooms = []
    monkeypatch.setattr(metrics, "geometry_scores", first_waits_for_the_second_chunk)
    monkeypatch.setattr(batch, "_generate", denoise)
    monkeypatch.setattr(batch, "BackgroundWriter", Writer)
    job = write_job(dataset, output=str(tmp_path / "c"), presets=["fog"], seeds=1, labels={}, depth_batch_size=1,
                    batch_size=1)  # fmt: skip
    report = run_job(job, progress=False)
    assert overlapped == [True] and report.done == 3
    run_job(write_job(dataset, output=str(tmp_path / "d"), inputs="frames/f0.png", presets=["fog"], seeds=1,
                      labels={}, batch_size=24), progress=False)  # fmt: skip
    assert rooms == [8, 48]
    lines = read_manifest(tmp_path / "c" / "manifest.jsonl")
    assert [r["item"] for r in lines] == ["f0/fog/s0", "f1/fog/s0", "f2/fog/s0"] and all(
        r["geometry"] for r in lines
    )


def test_processes_wait_a_day_for_each_other_at_a_barrier(monkeypatch):
    """A process done with its chunks waits at the last barrier for the others, a chunk or more of work: torch's
    default timeout (30 minutes for gloo) stopped the whole run."""
    import datetime

    import accelerate

    from depth2img import batch

    made = {}

    import signal

    class State:
        def __init__(self, **kwargs):
            made.update(kwargs, handlers=(signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)))
            self.process_index, self.num_processes, self.device = 1, 2, "cpu"

        def wait_for_everyone(self):
            pass

    monkeypatch.setattr(accelerate, "PartialState", State)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # (as the launcher sets it)
    own = signal.signal(signal.SIGTERM, lambda *a: None)
    try:
        assert batch._distributed()[:3] == (1, 2, "cpu")
        # the rendezvous, blocked in C until the peers come, ends on SIGTERM or Ctrl-C (a Python handler never
        # ran there: a process whose peers never came could not be stopped but by SIGKILL; a re-verification of
        # 2026-11-28); the handlers are back after it
        assert made["handlers"] == (signal.SIG_DFL, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, own)
    assert made["timeout"] == datetime.timedelta(hours=24)
    monkeypatch.setenv("WORLD_SIZE", "0")  # (it ran one process without a word)
    with pytest.raises(InputError, match="^WORLD_SIZE must be a number of processes, got '0'"):
        batch._distributed()


@pytest.mark.parametrize("rank", [0, 1])
def test_the_processes_whose_barrier_fails_as_another_stopped_say_so_in_one_line(
    dataset, tmp_path, monkeypatch, capsys, rank
):
    """A review of multi-process failures (2026-11-28): when one process stopped (its own error, a kill), another
    waiting at a barrier got gloo's RuntimeError ("Connection closed by peer"), printed as an internal error, exit 1;
    a process's own status is 2. Then every waiting process said "another process of the job stopped" (8 GPUs:
    7 lines); now the first says it, the others leave quietly, and every one exits 2."""
    import signal
    import time

    import accelerate

    from depth2img.cli import main

    class State:
        def __init__(self, **kwargs):
            self.process_index, self.num_processes, self.device = rank, 2, "cpu"

        def wait_for_everyone(self):
            raise RuntimeError(
                "[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:29650"
            )

    waits = []

    def sleep(
        seconds,
    ):  # (as the other processes' wait for the launcher to stop them, with the first's line said)
        waits.append(seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(accelerate, "PartialState", State)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # (as the launcher sets it)
    monkeypatch.setenv("RANK", str(rank))
    job = write_job(dataset, output=str(tmp_path / "m"), presets=["fog"], seeds=1, labels={})
    if rank == 0:
        assert main(["batch", str(job), "-q"]) == 2 and waits == []
        err = capsys.readouterr().err
        assert err == "depth2img: error: process 0 of 2: another process of the job stopped; see its error\n"
    else:
        with pytest.raises(SystemExit) as stopped:
            main(["batch", str(job), "-q"])
        assert stopped.value.code == 2 and waits == [10]
        assert capsys.readouterr().err == ""


def test_a_stray_world_size_is_one_line_naming_it(dataset, tmp_path, monkeypatch, capsys):
    """A review of multi-process failures (2026-11-28): WORLD_SIZE=2 without MASTER_ADDR (a variable left from a
    launcher's shell) was accelerate's ValueError, printed as an internal error, exit 1; a WORLD_SIZE that is no
    number was int()'s."""
    from depth2img.cli import main

    monkeypatch.delenv("MASTER_ADDR", raising=False)
    job = write_job(dataset, output=str(tmp_path / "m"), presets=["fog"], seeds=1, labels={})
    for value, said in (
        ("2", "WORLD_SIZE is 2 but MASTER_ADDR is not set"),
        ("two", "WORLD_SIZE must be a number"),
    ):
        monkeypatch.setenv("WORLD_SIZE", value)
        assert main(["batch", str(job), "-q"]) == 2
        err = capsys.readouterr().err
        assert said in err and "unset WORLD_SIZE to run one process" in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_a_sources_manifest_lines_follow_its_depth_files(dataset, tmp_path, monkeypatch):
    """The depth write was not ordered with the image writes: with several writer threads a source's manifest lines
    were appended before its depth files existed, and a run killed then, resumed, never wrote them (its items were
    finished). A kill between the depth files' two writes left one, and a resume never wrote the other."""
    from depth2img import batch

    monkeypatch.setenv("DEPTH2IMG_WRITER_THREADS", "3")
    real_write, real_append = batch.write_depth_products, batch.append_manifest
    missing = []

    def slow_write(*args):
        time.sleep(0.5)  # a slow disk, a large .npy
        return real_write(*args)

    def append(path, records, files=()):
        for r in records:
            stem = r["item"].split("/")[0]
            missing.extend(f for f in (f"{stem}_depth16.png", f"{stem}_depth.npy")
                           if not (tmp_path / "d" / "depth" / f).exists())  # fmt: skip
        return real_append(path, records, files)

    monkeypatch.setattr(batch, "write_depth_products", slow_write)
    monkeypatch.setattr(batch, "append_manifest", append)
    job = write_job(
        dataset, output=str(tmp_path / "d"), inputs="frames/f0.png", presets=["fog"], seeds=1, labels={}
    )
    assert run_job(job, progress=False).done == 1
    assert missing == []
    # each line names them: the depth its image is made again from (a review of reproducibility, 2026-11-28)
    (line,) = [json.loads(t) for t in (tmp_path / "d" / "manifest.jsonl").read_text().splitlines()]
    assert line["depth_files"] == ["depth/f0_depth16.png", "depth/f0_depth.npy"]
    depth = tmp_path / "d" / "depth"
    npy = (depth / "f0_depth.npy").read_bytes()
    (depth / "f0_depth.npy").unlink()  # killed between the depth files, before the image's line
    (tmp_path / "d" / "manifest.jsonl").write_text("")
    assert run_job(job, resume=True, progress=False).done == 1
    assert (depth / "f0_depth.npy").read_bytes() == npy


def test_a_replaced_sources_depth_files_are_its_new_photos(tmp_path):
    """A source replaced, a seed added, resumed: its new image was the new photo's, its depth files stayed the
    earlier photo's (written only where missing), at the earlier size. (A resume now refuses a source replaced beside
    its kept images; with them removed, all of its images and its depth files are the new photo's.)"""
    (tmp_path / "src").mkdir()
    render_driving_scene(W, H, seed=0).image.save(tmp_path / "src" / "a.png")
    common = dict(inputs="src/a.png", output="d", presets=["fog"], labels={}, layout="files")
    assert run_job(write_job(tmp_path, seeds=1, **common), progress=False).done == 1
    render_driving_scene(2 * W, H, seed=5).image.save(tmp_path / "src" / "a.png")
    with pytest.raises(InputError, match=r"1 source\(s\) changed since their images were made"):
        run_job(write_job(tmp_path, seeds=2, **common), resume=True, progress=False)
    # refused before the record is written: it still names the images made
    assert yaml.safe_load((tmp_path / "d" / "job.resolved.yaml").read_text())["seed_list"] == [0]
    (tmp_path / "d" / "images" / "a__fog__s0.png").unlink()
    assert run_job(write_job(tmp_path, seeds=2, **common), resume=True, progress=False).done == 2
    depth = tmp_path / "d" / "depth"
    assert np.load(depth / "a_depth.npy").shape == (H, 2 * W)
    assert Image.open(depth / "a_depth16.png").size == (2 * W, H)


def test_a_failed_depth_write_lets_no_later_manifest_line_through(dataset, tmp_path, monkeypatch):
    """The run stops at the failed write; the lines of the images after it (written meanwhile by other threads)
    were still appended, so a resume took those items as done and never wrote the source's depth."""
    import errno

    from depth2img import batch

    monkeypatch.setenv("DEPTH2IMG_WRITER_THREADS", "3")

    def full(*args):
        time.sleep(0.5)  # the image writes finish first
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(batch, "write_depth_products", full)
    job = write_job(dataset, output=str(tmp_path / "d"), inputs="frames/f0.png", presets=["fog", "rain"], seeds=2,
                    labels={})  # fmt: skip
    with pytest.raises(InputError, match=r"write failed for .*f0\.png \(No space left on device\)"):
        run_job(job, progress=False)
    assert read_manifest(tmp_path / "d" / "manifest.jsonl") == []


def test_an_outputs_image_and_label_copies_are_written_all_or_none(dataset, tmp_path, monkeypatch):
    """A review of batch writes (2026-11-28): an item whose label copy failed (a folder where labels/X.txt goes) left
    its image, and a later item's image written meanwhile, with no manifest line, and the message named neither the
    input nor the file ("write failed (Is a directory)")."""
    monkeypatch.setenv("DEPTH2IMG_WRITER_THREADS", "3")
    out = tmp_path / "d"
    (out / "labels" / "f1__fog__s0.txt").mkdir(parents=True)
    job = write_job(dataset, output=str(out), presets=["fog", "rain"], seeds=1, labels={"yolo": "yolo"},
                    layout="files")  # fmt: skip
    with pytest.raises(
        InputError, match=r"write failed for .*f1\.png \(Is a directory: .*f1__fog__s0\.txt\); no "
    ):
        run_job(job, progress=False)
    listed = {Path(r["output"]).stem for r in read_manifest(out / "manifest.jsonl")}
    assert "f0__fog__s0" in listed and "f1__fog__s0" not in listed
    assert {p.stem for p in (out / "images").iterdir()} == listed  # no image without its line
    assert {p.stem for p in (out / "labels").glob("*.txt") if p.is_file()} == listed


def test_disk_full_stops_with_a_clear_message_and_no_partial_file(dataset, tmp_path, monkeypatch):
    import depth2img.outputs

    def full(image, path, metadata=None):
        with depth2img.io.atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(28, "No space left on device")

    monkeypatch.setattr("depth2img.batch.save_png", full)
    job = write_job(dataset, output=str(tmp_path / "d"), presets=["fog"], seeds=1, labels={})
    with pytest.raises(
        InputError, match=r"write failed for .*f0\.png \(No space left on device: .*f0__fog__s0\.png\); no "
    ):
        run_job(job, progress=False)
    assert not [p for p in (tmp_path / "d").rglob("*") if ".part" in p.name]  # no partial file
    assert not list((tmp_path / "d" / "images").iterdir())  # and no image: the first write failed


def test_disk_full_at_the_index_is_one_line_too(dataset, tmp_path, monkeypatch):
    """A review of file-system errors (2026-11-28): a disk full when annotations.json was written, once every image
    was made, was an internal error (exit 1); it is the run's one line, and a resume writes the index."""
    import errno

    from depth2img import batch

    real = batch.atomic_path
    calls = []

    def full(path, *args, **kwargs):
        if path.name == "annotations.json" and not calls:
            calls.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(batch, "atomic_path", full)
    job = write_job(
        dataset, output=str(tmp_path / "d"), inputs="frames/f0.png", presets=["fog"], seeds=1, labels={}
    )
    with pytest.raises(
        InputError, match=r"^output directory .*d: write failed \(No space left on device\); no "
    ):
        run_job(job, progress=False)
    assert calls and not (tmp_path / "d" / "annotations.json").exists()
    assert run_job(job, resume=True, progress=False).skipped == 1
    assert json.loads((tmp_path / "d" / "annotations.json").read_text())["images"][0]["file_name"].endswith(
        ".png"
    )


def test_a_file_where_the_jobs_folders_go_is_refused_before_any_model_loads(dataset, tmp_path, monkeypatch):
    """A review of file-system errors (2026-11-28): a file at out/images failed as 'write failed (File exists)', naming
    neither, once both models had loaded, leaving job.resolved.yaml and depth/ behind; a file as the output folder
    was 'cannot be written (File exists)'."""
    from depth2img import service

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(service.Service, "transformer", no_loading)
    monkeypatch.setattr(service.Service, "estimator", no_loading)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "images").write_text("x")
    (tmp_path / "afile").write_text("x")
    for out, said in (("o", r"o: .*o/images is a file, where the job writes a folder$"),
                      ("afile", r"afile: .*afile is a file, where the job writes a folder$")):  # fmt: skip
        job = write_job(dataset, output=str(tmp_path / out), inputs="frames/f0.png", presets=["fog"], seeds=1,
                        labels={})  # fmt: skip
        with pytest.raises(InputError, match=rf"^output directory .*{said}"):
            run_job(job, progress=False)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["images"]


@pytest.mark.parametrize("name", ["job.resolved.yaml", "annotations.json"])
def test_a_folder_where_the_job_writes_a_file_is_refused_naming_it(dataset, tmp_path, monkeypatch, name):
    """A review of batch writes (2026-11-28): job.resolved.yaml as a folder failed as "output directory O: cannot be
    written (Is a directory)", naming no file; annotations.json as one failed once every image was made."""
    from depth2img import service

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(service.Service, "transformer", no_loading)
    monkeypatch.setattr(service.Service, "estimator", no_loading)
    (tmp_path / "o" / name).mkdir(parents=True)
    job = write_job(dataset, output=str(tmp_path / "o"), inputs="frames/f0.png", presets=["fog"], seeds=1,
                    labels={})  # fmt: skip
    with pytest.raises(
        InputError, match=rf"^output directory .*o: .*o/{name} is a folder, where the job writes a file$"
    ):
        run_job(job, progress=False)


def test_output_names_cannot_escape(dataset, tmp_path):
    from depth2img.batch import _inside

    with pytest.raises(InputError, match="would escape the output directory"):
        _inside(tmp_path, tmp_path / "images" / ".." / ".." / "evil.png")
    f = tmp_path / "p.yaml"
    f.write_text("presets:\n  ../../evil:\n    prompt: '{prompt}, evil'\n")
    os.environ["DEPTH2IMG_PRESETS"] = str(f)
    try:
        job = Job(inputs=str(dataset / "frames" / "f0.png"), output=str(tmp_path / "safe"), model="tiny",
                  presets=["../../evil"], prompt="x", knobs={"steps": 2, "strength": 0.5})  # fmt: skip
        assert variations(job)[0].name == "evil"
        run_job(job, progress=False)
    finally:
        del os.environ["DEPTH2IMG_PRESETS"]
    assert [p.name for p in (tmp_path / "safe" / "images").iterdir()] == ["f0__evil__s0.png"]
    assert not (tmp_path / "evil.png").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("inputs: a\noutput: b\nprompt: x\ncolour: red\n", "unknown key 'colour'"),
        ("inputs: a\nprompt: x\n", "missing key 'output'"),
        (
            "inputs: a\noutput: b\nprompt: x\nlayout: parquet\n",
            "layout must be one of files, imagefolder, coco, got 'parquet'",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\ngeometry: {metric: delta1, treshold: 0.5}\n",
            "geometry.treshold is unknown",
        ),
        ("inputs: a\noutput: b\nprompt: x\ngeometry: {metric: rmse}\n", "geometry.metric must be one of"),
        ("inputs: a\noutput: b\nprompt: x\nknobs: {stepz: 3}\n", "knobs.stepz is unknown"),
        (
            "inputs: a\noutput: b\nprompt: x\nseeds: [1, -2]\n",
            "job key seeds: seed must be an integer in 0..2\\*\\*63-1, got -2",
        ),
        (
            "inputs: a\noutput: b\nmatrix: {template: '{x}', axes: {y: [1]}}\n",
            "template names 'x' which is not an axis",
        ),
        # a review's cases: a format spec was tried on the first value only (an internal error on the second), an
        # attribute put a method's memory address in every prompt, an index failed on numbers
        (
            "inputs: a\noutput: b\nmatrix: {template: 'a {t:d} cars', axes: {t: [5, many]}}\n",
            r"job key matrix.template field \{t:d\}: give an axis by its name alone, as \{name\}; an index, attr",
        ),
        (
            "inputs: a\noutput: b\nmatrix: {template: 'a {t.upper}', axes: {t: [noon]}}\n",
            r"field \{t.upper\}: give",
        ),
        (
            "inputs: a\noutput: b\nmatrix: {template: 'a {t[0]}', axes: {t: [noon, 5]}}\n",
            r"field \{t\[0\]\}: give",
        ),
        ("inputs: a\noutput: b\nmatrix: {template: 'a {t!r}', axes: {t: [noon]}}\n", r"field \{t!r\}: give"),
        # True, None and lists became "True", "None" and "['a', 'b']" in the prompts
        (
            "inputs: a\noutput: b\nmatrix: {template: 'a {l}', axes: {l: [on, off]}}\n",
            r"matrix.axes.l: True is not a w",
        ),
        (
            "inputs: a\noutput: b\nmatrix: {template: 'a {l}', axes: {l: [a, null]}}\n",
            r"matrix.axes.l: None is not a w",
        ),
        (
            "inputs: a\noutput: b\nmatrix: {template: 'a {l}', axes: {l: [[a, b]]}}\n",
            r"l: \['a', 'b'\] is not a word",
        ),
        # 10**9 combinations filled memory with no word
        (
            "inputs: a\noutput: b\nmatrix: {template: '{a}{b}{c}{d}{e}', axes: {a: [0,1,2,3,4,5,6,7,8,9], b: [0,1,2,3,4,5,6,7,"
            "8,9], c: [0,1,2,3,4,5,6,7,8,9], d: [0,1,2,3,4,5,6,7,8,9], e: [0,1,2,3,4,5,6,7,8,9]}}\n",
            r"job key matrix.axes make 100,000 variations \(the product of the axes' lengths\), over 10,000; split",
        ),
        # a prompt no variation used was dropped silently; {prompt} without one names no axis
        (
            "inputs: a\noutput: b\nprompt: my words\nmatrix: {template: 'a {t}', axes: {t: [noon]}}\n",
            r"job key prompt 'my words' is used by no variation: the matrix template has no \{prompt\} and the job no",
        ),
        (
            "inputs: a\noutput: b\nmatrix: {template: '{prompt} {t}', axes: {t: [a]}}\n",
            r"names 'prompt' which is not an",
        ),
        # "" ran as a variation named x with no preset; 1 named no key
        (
            "inputs: a\noutput: b\nprompt: x\npresets: ['']\n",
            r"job key presets: each entry is a preset's name, got ''$",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\npresets: [1]\n",
            r"job key presets: each entry is a preset's name, got 1$",
        ),
        (
            "inputs: a\noutput: b\nmatrix: {template: 'a {w}', axes: {w: [b/c, b c]}}\n",
            r"duplicate names: \['b-c'\] \('b-c' is the name of 'a b/c' and 'a b c'; names keep ASCII letters, digits",
        ),
        (
            "inputs: a\noutput: b\nmatrix: {template: 'a {x}', axes: {x: [1], y: [2, 3]}}\n",
            r"job key matrix.axes: y not in matrix.template 'a \{x\}'; its values would all give the same prompt$",
        ),
        ("inputs: a\noutput: b\n", "job needs variations"),
        (
            "inputs: a\noutput: b\nprompt: x\nmodel: tiny/flux-depth\nknobs: {negative_prompt: blurry}\n",
            r"job key knobs.negative_prompt: backbone 'tiny/flux-depth' \(flux-control\) takes no negative prompt$",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nmodel: tiny/flux-depth\nknobs: {control_scale: 0.5}\n",
            r"job key knobs.control_scale: backbone 'tiny/flux-depth' \(flux-control\) has no such knob; ",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nmodel: tiny/flux-depth\nknobs: {scheduler: ddim}\n",
            r"job key knobs.scheduler 'ddim' is not one of flow-euler for flux-control$",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nmodel: tiny\nlora: tiny/lcm-sdxl\n",
            r"job key lora: 'tiny/lcm-sdxl' is made for sdxl-controlnet, not sd15-controlnet$",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nmodel: tiny/sd2-depth\ncontrolnet: .\n",
            r"job key controlnet: backbone 'tiny/sd2-depth' \(sd2-depth\) takes no ControlNet; ",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\ncontrolnet: 5\n",
            r"job key controlnet must be a hub id or folder, got 5$",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\ncontrolnet: ./missing\n",
            r"job key controlnet: controlnet '.*missing' is not a hub id \(owner/name\) or an existing local directory$",
        ),
        (
            "inputs: a\noutput: b\nmatrix: {template: '{season', axes: {season: [x]}}\n",
            "matrix.template is not a valid template",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nknobs: {steps: 0}\n",
            "job key knobs.steps must be an integer in 1..1000, got 0",
        ),
        ("inputs: a\noutput: b\nprompt: x\nknobs: {strength: 2}\n", "job key knobs.strength must be in"),
        (
            "inputs: a\noutput: b\nprompt: x\nbatch_size: 0\n",
            "job key batch_size must be an integer >= 1, got 0",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nknobs: {scheduler: warp}\n",
            "job key knobs.scheduler 'warp' is not one of unipc, ",
        ),
        ("inputs: a\noutput: b\npresets: [winter, wintr]\n", "job key presets: unknown preset 'wintr'"),
        (
            "inputs: a\noutput: b\nprompt: x\nseeds: []\n",
            r"job key seeds must be a count or a non-empty list",
        ),
        ("inputs: a\noutput: b\nprompt: x\nseeds: [3, 1, 3]\n", "job key seeds lists 3 more than once"),
        ("inputs: a\noutput: b\nprompt: x\ncompile: fast\n", "job key compile must be one of default, "),
        (
            "inputs: a\noutput: b\nprompt: x\ndtype: fp8\n",
            "job key dtype must be one of float32, float16, bfloat16, got 'fp8'",
        ),
        # (a job had no native_size key: `transform --native-size` had no batch twin)
        (
            "inputs: a\noutput: b\nprompt: x\nnative_size: 8\n",
            r"job key native_size must be an integer in 16\.\.4096 \(pixels a side\), got 8$",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nnative_size: big\n",
            r"job key native_size must be an integer in 16\.\.4096 \(pixels a side\), got 'big'$",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nnative_size: 512.5\n",
            r"job key native_size must be an integer in 16\.\.4096 \(pixels a side\), got 512.5$",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nknobs: {steps: 2, strength: 0.4}\n",
            "job key knobs: steps x strength must leave at least one denoising step: steps=2 and strength=0.4",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\ncompile: default\nknobs: {feature_cache: 2}\n",
            "job key compile default does not combine with feature_cache 2",
        ),
        # values of the wrong type or shape: refused at load time, not with a traceback or after files are written
        ("inputs: a\noutput: b\nprompt: 5\n", "job key prompt must be a string, got 5"),
        (
            "inputs: a\noutput: b\nprompt: x\ngeometry: [1]\n",
            r"job key geometry must be a mapping .*got \[1\]",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\ngeometry: {threshold: true}\n",
            "geometry.threshold must be a finite number, got True",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\ngeometry: {threshold: .nan}\n",
            "geometry.threshold must be a finite number, got nan",
        ),
        # out of the metric's range: every item ran all its retries, then was rejected
        (
            "inputs: a\noutput: b\nprompt: x\ngeometry: {metric: edge_f1, threshold: 1.01}\n",
            r"geometry.threshold 1.01 can never be met: edge_f1 lies in 0..1",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\ngeometry: {metric: absrel, threshold: -1}\n",
            r"geometry.threshold -1 can never be met: absrel lies in 0 and up",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nknobs: [steps]\n",
            r"job key knobs must be a mapping .*got \['steps'\]",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nknobs: {negative_prompt: 5}\n",
            "knobs.negative_prompt must be a string, got 5",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nlabels: {yolo: 5}\n",
            "job key labels.yolo must be a folder of YOLO txt files, got 5",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nlabels: {masks: [a]}\n",
            r"labels.masks must map a mask name to a directory, got \['a'\]",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nlabels: {masks: {'..': m}}\n",
            r"job key labels.masks: mask name '..' must hold a letter or digit \(it names the folder masks/NAME",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nlabels: {masks: {'': m}}\n",
            "job key labels.masks: mask name '' must",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nmodel: 5\n",
            "job key model must be a registry name, hub id or folder, got 5",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nestimator: depth-anything-v9\n",
            "job key estimator: estimator 'depth-anything-v9' is not a registry name",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nlora_scale: x\n",
            r"job key lora_scale must be in \(0, 2\], got 'x'",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nlora_scale: 5\n",
            r"job key lora_scale must be in \(0, 2\], got 5",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nlora_scale: 0.5\n",
            "job key lora_scale 0.5 is given without a LoRA to scale",
        ),
        ("inputs: [5]\noutput: b\nprompt: x\n", r"job key inputs must be .*got \[5\]"),
        # steps alone: the default strength 0.8 leaves int(1 x 0.8) = 0 steps (it failed after depth/ was written)
        (
            "inputs: a\noutput: b\nprompt: x\nknobs: {steps: 1}\n",
            "job key knobs: steps x strength must leave at least one denoising step: steps=1 and strength=0.8",
        ),
        (
            "inputs: a\noutput: b\nmatrix: {template: '{w}', axes: {w: ['r a', 'r-a']}}\n",
            r"duplicate names: \['r-a'\]",
        ),
        # a retry's seed (seed + attempt x 1000003) must stay a seed and must not be another listed seed
        (
            "inputs: a\noutput: b\nprompt: x\nseeds: [9223372036854775000]\ngeometry: {threshold: 0.5, retries: 1}\n",
            "job key seeds: seed 9223372036854775000 would be retried with seed 9223372036855775003 .*past 2\\*\\*63-1",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nseeds: [0, 1000003]\ngeometry: {threshold: 0.5, retries: 1}\n",
            "job key seeds: seed 0's retry 1 would use seed 1000003, which the list also holds",
        ),
        ("inputs: a\noutput: b\nprompt: [unclosed\n", "line 4, column 1"),
        ("inputs: a\noutput: b\n  prompt: x\n", "line 3, column 9: mapping values are not allowed"),
        # PyYAML kept the last of two keys: the first variations' prompt was dropped without a word
        (
            "inputs: a\noutput: b\nprompt: x\nknobs: {steps: 3}\nprompt: y\n",
            "line 5, column 1: duplicate key 'prompt'$",
        ),
        (
            "inputs: a\noutput: b\nprompt: x\nknobs: {steps: 3, steps: 4}\n",
            "line 4, column 19: duplicate key 'steps'$",
        ),
    ],
)
def test_bad_job_files_name_the_key_or_line(tmp_path, text, message):
    f = tmp_path / "job.yaml"
    f.write_text(text)
    with pytest.raises(InputError, match=message) as err:
        load_job(f)
    assert "\n" not in str(err.value) and str(f) in str(err.value)


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("inputs: a\noutput: b\nprompt: x\nknobs:\n  <<: {steps: 3, strength: 0.5}\n  steps: 4\n")
    assert load_job(f).knobs == {"steps": 4, "strength": 0.5}
    # an anchor built after a mapping merges it: flattening had rewritten its node (merged keys, then its own), which
    # then read as "duplicate key 'steps'"
    from depth2img.registry import read_yaml

    text = "x: &d {steps: 20}\ndeep:\n  inner: &ka {<<: *d, steps: 30}\ntop: {<<: *ka}\n"
    assert read_yaml(text) == {"x": {"steps": 20}, "deep": {"inner": {"steps": 30}}, "top": {"steps": 30}}


def test_empty_sections_are_defaults_and_retry_seeds_matter_only_with_a_threshold(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("inputs: a\noutput: b\nprompt: x\ngeometry:\nknobs:\nlabels:\nseeds: [0, 1000003]\n")
    job = load_job(f)  # no threshold: no retry, so 1000003 is no retry seed of 0
    assert job.geometry.threshold is None and job.geometry.retries == 2 and job.knobs == {} == job.labels


def test_coco_labels_are_matched_by_path_not_by_file_name(tmp_path):
    """x/img.png and y/img.png each get their own annotations (each took the other's); a bare name that fits both
    is refused before anything is written."""
    from depth2img.batch import Labels

    sizes = {"x": (96, 64), "y": (64, 80)}
    for sub, size in sizes.items():
        (tmp_path / "nested" / sub).mkdir(parents=True)
        render_driving_scene(*size, seed=len(sub)).image.save(tmp_path / "nested" / sub / "img.png")
    coco = {"images": [{"id": k, "file_name": f"{sub}/img.png", "width": w, "height": h}
                       for k, (sub, (w, h)) in enumerate(sizes.items(), start=1)],
            "annotations": [{"id": k, "image_id": k, "category_id": k, "bbox": [0, 0, 9, 9], "area": 81, "iscrowd": 0}
                            for k in (1, 2)],
            "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]}  # fmt: skip
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    job = write_job(tmp_path, output="out", inputs=["nested/x", "nested/y"], presets=["fog"], seeds=1,
                    labels={"coco": "coco.json"})  # fmt: skip
    assert run_job(job, progress=False).done == 2
    out = json.loads((tmp_path / "out" / "annotations.json").read_text())
    got = {
        im["file_name"]: [a["category_id"] for a in out["annotations"] if a["image_id"] == im["id"]]
        for im in out["images"]
    }
    assert got == {"images/img__fog__s0.png": [1], "images/img-2__fog__s0.png": [2]}  # x/img.png, y/img.png
    assert sorted(im["source_file_name"] for im in out["images"]) == ["x/img.png", "y/img.png"]  # not img.png
    # the longest matching path wins: y/img.png is named by the bare name once x/img.png has its own entry
    coco["images"][1]["file_name"] = "img.png"
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    labels = Labels(load_job(job))
    assert [labels.coco_for(tmp_path / "nested" / s / "img.png")[0]["id"] for s in "xy"] == [1, 2]
    # now the bare name fits both sources: which one it means is unknowable (the image's annotations go with it:
    # annotations of an image id no image has are refused)
    del coco["images"][0]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != 1]
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    job = write_job(tmp_path, name="two.yaml", output="out2", inputs=["nested/x", "nested/y"], presets=["fog"],
                    seeds=1, labels={"coco": "coco.json"})  # fmt: skip
    with pytest.raises(
        InputError, match=r"job key labels.coco: file_name 'img.png' matches 2 sources \(.*x/img.png"
    ):
        run_job(job, progress=False)
    assert not (tmp_path / "out2").exists()


def _rotated_photo(folder: Path, orientation=6) -> Path:
    """A 96x64 JPEG whose EXIF orientation turns it to 64x96 (load_image applies it, as do viewers)."""
    folder.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    render_driving_scene(W, H, seed=0).image.save(folder / "r.jpg", exif=exif, quality=95)
    return folder / "r.jpg"


@pytest.mark.parametrize(
    "kind, message",
    [
        ("masks", r"its mask .*r.png is 96x64 but the photo is 64x96 once its EXIF orientation 6 is applied"),
        ("coco", r"its labels.coco image id 1 is 96x64 but the photo is 64x96 once its EXIF orientation 6"),
        (
            "yolo",
            r"it is EXIF-rotated \(orientation 6\), so its YOLO labels .*r.txt cannot be known to match",
        ),
    ],
)
def test_labels_that_do_not_fit_an_exif_rotated_photo_are_refused_up_front(tmp_path, kind, message):
    """The output is the photo as load_image turns it; labels made on the stored pixels would be misaligned."""
    from depth2img.batch import Labels

    _rotated_photo(tmp_path / "photos")
    (tmp_path / "masks").mkdir()
    (tmp_path / "yolo").mkdir()
    Image.new("L", (W, H)).save(tmp_path / "masks" / "r.png")  # the stored pixels' size
    (tmp_path / "yolo" / "r.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    coco = {"images": [{"id": 1, "file_name": "r.jpg", "width": W, "height": H}], "annotations": []}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    labels = {
        "masks": {"masks": {"m": "masks"}},
        "coco": {"coco": "coco.json"},
        "yolo": {"yolo": "yolo"},
    }[kind]
    job = write_job(tmp_path, output="out", inputs="photos", presets=["fog"], seeds=1, labels=labels)
    with pytest.raises(InputError, match=r"job key labels: .*r.jpg: " + message) as err:
        run_job(job, progress=False)
    assert (
        "\n" not in str(err.value) and not (tmp_path / "out").exists()
    )  # refused before anything is written
    if kind != "yolo":  # labels the size of the turned photo were made on it: they fit
        Image.new("L", (H, W)).save(tmp_path / "masks" / "r.png")
        coco["images"][0].update(width=H, height=W)
        (tmp_path / "coco.json").write_text(json.dumps(coco))
        Labels(load_job(job)).check([tmp_path / "photos" / "r.jpg"])


def test_resume_refuses_a_run_whose_default_dtype_differs(dataset, tmp_path):
    """A job naming no dtype takes the device's default (float32 on a CPU, float16 on a GPU), recorded as null in
    job.resolved.yaml: a run started on a GPU and resumed on a CPU (or the other way) mixed dtypes in one dataset."""
    out = tmp_path / "d"
    job = write_job(dataset, output=str(out), presets=["fog"], seeds=1, labels={}, layout="files")
    assert run_job(job, progress=False).done == 3
    manifest = out / "manifest.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert {r["dtype"] for r in lines} == {"float32"}
    # as a GPU made them
    manifest.write_text("".join(json.dumps({**r, "dtype": "bfloat16"}) + "\n" for r in lines))
    assert run_job(job, resume=True, progress=False).skipped == 3  # nothing left to make: nothing to refuse
    (out / lines[0]["output"]).unlink()
    with pytest.raises(InputError, match=r"^--resume \(resume=True\): this run would make its images in float32 "
                       r"\(job key dtype not given: the device default\), the run in .* made them in bfloat16; set "
                       r"job key dtype: bfloat16 to continue it$"):  # fmt: skip
        run_job(job, resume=True, progress=False)
    assert not (out / lines[0]["output"]).exists()
    # the advice works: the recorded dtype (null) does not refuse a job naming the dtype its images record
    job.write_text(job.read_text() + "dtype: bfloat16\n")
    again = run_job(job, resume=True, progress=False)
    assert again.done == 1 and read_manifest(manifest)[-1]["dtype"] == "bfloat16"


def test_resume_refuses_a_variation_an_earlier_run_named_otherwise(dataset, tmp_path):
    """Accented and non-Latin variation names changed (été: 't', now 'ete'); a resume took the renamed variation as
    new and made all its items again beside the earlier ones, both indexed."""
    out = tmp_path / "v"
    job = write_job(dataset, output=str(out), presets=["fog"], seeds=1, labels={}, layout="files")
    assert run_job(job, progress=False).done == 3
    recorded = out / "job.resolved.yaml"
    record = yaml.safe_load(recorded.read_text())
    record["variations"][0]["name"] = "f"  # as an earlier naming had it
    recorded.write_text(yaml.safe_dump(record, sort_keys=False))
    with pytest.raises(InputError, match=r"^--resume \(resume=True\): this job's variation 'fog' was named 'f' by "
                       r"the run in .*; finish that run with the version that started it"):  # fmt: skip
        run_job(job, resume=True, progress=False)


def test_an_exif_rotated_tiff_is_checked_at_its_shown_size(tmp_path):
    """Pillow's TIFF reader gives an EXIF-rotated TIFF's turned size already, and the label check turned it again: a
    COCO entry of the turned size (right) was refused, and one of the stored size (wrong: its boxes misaligned on
    the output) was carried over."""
    from depth2img.batch import Labels
    from depth2img.io import image_header, load_image

    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "photos").mkdir()
    photo = tmp_path / "photos" / "r.tif"
    render_driving_scene(W, H, seed=0).image.save(photo, exif=exif)
    assert load_image(photo).size == (H, W) and image_header(photo)[1:] == ((H, W), 6)
    coco = {"images": [{"id": 1, "file_name": "r.tif", "width": H, "height": W}], "annotations": []}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    job = write_job(
        tmp_path, output="out", inputs="photos", presets=["fog"], seeds=1, labels={"coco": "coco.json"}
    )
    Labels(load_job(job)).check([photo])  # the turned size: fits
    coco["images"][0].update(width=W, height=H)
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    with pytest.raises(
        InputError, match=r"image id 1 is 96x64 but the photo is 64x96 once its EXIF orientation 6"
    ):
        Labels(load_job(job)).check([photo])


def test_resume_merges_the_manifests_of_an_earlier_multi_process_run(dataset, tmp_path):
    """A run of two processes killed before its merge left manifest.rank*.jsonl; resumed by one process, the
    dataset index was written from manifest.jsonl alone: empty."""
    out = tmp_path / "r"
    job = write_job(dataset, output=str(out), presets=["fog"], seeds=1, labels={})
    assert run_job(job, progress=False).done == 3
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    (out / "manifest.rank0.jsonl").write_text(
        "".join(lines[:2])
    )  # rank 0 had finished two items, rank 1 none
    (out / "manifest.jsonl").unlink()
    (out / "annotations.json").unlink()
    again = run_job(job, resume=True, progress=False)
    assert again.done == 1 and again.skipped == 2
    assert sorted(r["item"] for r in read_manifest(out / "manifest.jsonl")) == [
        "f0/fog/s0",
        "f1/fog/s0",
        "f2/fog/s0",
    ]
    assert not list(out.glob("manifest.rank*.jsonl"))
    assert len(json.loads((out / "annotations.json").read_text())["images"]) == 3
    # a merge killed after writing manifest.jsonl, before removing the rank files: their lines are there twice
    (out / "manifest.rank1.jsonl").write_text("".join(lines))
    again = run_job(job, resume=True, progress=False)
    assert again.skipped == 3 and len(read_manifest(out / "manifest.jsonl")) == 3
    assert len(json.loads((out / "annotations.json").read_text())["images"]) == 3


def test_no_process_returns_before_rank_0_has_written_the_index(dataset, tmp_path, monkeypatch):
    """Ranks above 0 returned after the last barrier and exited (non-zero on any failure), and torchrun then
    stopped rank 0 inside its merge: no index, or the earlier run's."""
    from depth2img import batch

    events = []
    monkeypatch.setattr(batch, "_distributed", lambda: (0, 1, None, lambda: events.append("barrier")))
    real = batch.build_index
    monkeypatch.setattr(batch, "build_index", lambda *a: events.append("index") or real(*a))
    job = write_job(
        dataset, inputs="frames/f0.png", output=str(tmp_path / "o"), presets=["fog"], seeds=1, labels={}
    )
    assert run_job(job, progress=False).done == 1
    assert events[-2:] == ["index", "barrier"]


def test_resume_continues_an_interrupted_geometry_retry(dataset, tmp_path):
    """An item cut off mid-retry goes on with its next attempt and seed (it started again at attempt 0)."""
    out = tmp_path / "g"
    job = write_job(dataset, output=str(out), inputs="frames/f0.png", presets=["fog"], seeds=1, labels={},
                    geometry={"metric": "absrel", "threshold": 0.0, "retries": 2})  # fmt: skip
    assert run_job(job, progress=False).rejected == 1
    whole = (out / "manifest.jsonl").read_text()
    (out / "manifest.jsonl").write_text(whole.splitlines(keepends=True)[0])  # killed after attempt 0
    again = run_job(job, resume=True, progress=False)
    assert again.rejected == 1 and again.retried == 2
    assert (out / "manifest.jsonl").read_text() == whole  # attempts 1 and 2, with their seeds, once each
    # attempts recorded up to the retries a resumed job allows: the item is final, as a run marks its last attempt
    (out / "manifest.jsonl").write_text("".join(whole.splitlines(keepends=True)[:2]))
    job.write_text(job.read_text().replace("retries: 2", "retries: 1"))
    again = run_job(job, resume=True, progress=False)
    assert again.skipped == 1 and again.retried == again.rejected == again.done == 0
    assert len(read_manifest(out / "manifest.jsonl")) == 2


def test_resume_with_more_retries_tries_rejected_items_again(dataset, tmp_path):
    """A review of batch runs (2026-11-28): an item rejected after its last retry was final for good, so a job resumed
    with more retries skipped it; it goes on with its next attempts and seeds, as a run with those retries makes them.
    A kept item is not made again."""
    out, whole = tmp_path / "g", tmp_path / "whole"
    rejecting = {"metric": "absrel", "threshold": 0.0, "retries": 0}
    job = write_job(dataset, output=str(out), inputs="frames/f0.png", presets=["fog"], seeds=1, labels={},
                    geometry=rejecting)  # fmt: skip
    assert run_job(job, progress=False).rejected == 1
    job.write_text(job.read_text().replace("retries: 0", "retries: 2"))
    again = run_job(job, resume=True, progress=False)
    assert again.rejected == 1 and again.retried == 2 and again.skipped == 0
    lines = read_manifest(out / "manifest.jsonl")
    assert [(r["attempt"], r["final"], r["accepted"]) for r in lines] == [(0, True, False), (1, False, False),
                                                                          (2, True, False)]  # fmt: skip
    at_once = write_job(dataset, output=str(whole), inputs="frames/f0.png", presets=["fog"], seeds=1, labels={},
                        geometry={**rejecting, "retries": 2})  # fmt: skip
    run_job(at_once, progress=False)
    assert [r["seed"] for r in lines] == [r["seed"] for r in read_manifest(whole / "manifest.jsonl")]
    kept = write_job(dataset, output=str(tmp_path / "k"), inputs="frames/f0.png", presets=["fog"], seeds=1,
                     labels={}, geometry={"metric": "absrel", "threshold": 100.0, "retries": 0})  # fmt: skip
    assert run_job(kept, progress=False).done == 1
    kept.write_text(kept.read_text().replace("retries: 0", "retries: 2"))
    assert run_job(kept, resume=True, progress=False).skipped == 1


def test_resume_refuses_a_source_replaced_under_its_name(dataset, tmp_path):
    """A review of batch runs (2026-11-28): a photo replaced under its name kept the images made from the earlier one
    on --resume, and they were given the new photo's labels (a mirrored mask beside an unmirrored image), without a
    word. Each line records its source's file; a resume refuses a source whose kept images came from another file,
    and makes them again once they are removed. A copy of the same file (another time) is the same source."""
    import os
    import shutil

    from PIL import ImageOps

    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(2):
        shutil.copy(dataset / "frames" / f"f{k}.png", frames)
    job = write_job(tmp_path, output="o", inputs="frames", presets=["fog"], seeds=1, labels={})
    assert len(run_job(job, progress=False).failed) == 0
    recorded = read_manifest(tmp_path / "o" / "manifest.jsonl")[0]["source_file"]
    assert set(recorded) == {"size", "mtime_ns", "sha256"} and len(recorded["sha256"]) == 64
    # the same bytes at another time (a project copied without its files' times): not changed
    os.utime(frames / "f0.png", ns=(1, 1))
    assert run_job(job, resume=True, progress=False).skipped == 2
    ImageOps.mirror(Image.open(frames / "f0.png")).save(frames / "f0.png")
    with pytest.raises(InputError, match=r"^--resume \(resume=True\): 1 source\(s\) changed since their images were "
                                         r"made \(.*f0.png\): the images in .*o and the source's labels would not "
                                         r"match; remove those images"):  # fmt: skip
        run_job(job, resume=True, progress=False)
    (tmp_path / "o" / "images" / "f0__fog__s0.png").unlink()
    again = run_job(job, resume=True, progress=False)
    assert again.done == 1 and again.skipped == 1


def test_a_resume_that_drops_a_variation_says_the_dataset_keeps_its_images(dataset, tmp_path):
    """A review of batch runs (2026-11-28): a job resumed without one of its presets, or one of its sources, kept their
    images in the index (the manifest is the record of truth) while its summary counted none of them, without a
    word."""
    from depth2img.errors import Depth2ImgWarning

    common = dict(output=str(tmp_path / "o"), seeds=1, labels={})
    both = ["frames/f0.png", "frames/f1.png"]
    assert (
        run_job(write_job(dataset, presets=["fog", "rain"], inputs=both, **common), progress=False).done == 4
    )
    with pytest.warns(Depth2ImgWarning) as said:
        again = run_job(
            write_job(dataset, presets=["fog"], inputs=both[:1], **common), resume=True, progress=False
        )
    assert again.skipped == 1 and again.indexed == 4
    lines = [str(w.message) for w in said if "this job no longer has" in str(w.message)]
    assert [re.sub(r"in \S+ keeps", "in O keeps", line) for line in lines] == [
        "the dataset in O keeps 2 image(s) of variation(s) this job no longer has (rain); remove their images to drop "
        "them from it",
        "the dataset in O keeps 2 image(s) of source(s) this job no longer has (f1); remove their images to drop them "
        "from it",
    ]


def test_a_recursive_glob_never_takes_the_jobs_own_outputs(dataset, tmp_path):
    from depth2img.errors import Depth2ImgWarning

    (tmp_path / "data").mkdir()
    Image.open(dataset / "frames" / "f0.png").save(tmp_path / "data" / "a.png")
    job = write_job(tmp_path, inputs="data/**/*.png", output="data/out", presets=["fog"], seeds=1, labels={})
    assert run_job(job, progress=False).done == 1
    with pytest.warns(
        Depth2ImgWarning, match=r"^2 input file\(s\) in the folders this job writes under .*data/out skipped"
    ):
        again = run_job(job, resume=True, progress=False)  # the output image and its 16-bit depth
    assert again.done == 0 and again.skipped == 1 and not again.failed
    assert [p.name for p in (tmp_path / "data" / "out" / "images").iterdir()] == ["a__fog__s0.png"]
    # named as files, or by a pattern that starts in the job's folders: skipped alike
    for inputs in (["data/a.png", "data/out/images/a__fog__s0.png"], ["data/a.png", "data/out/images/*.png"]):
        write_job(tmp_path, inputs=inputs, output="data/out", presets=["fog"], seeds=1, labels={})
        with pytest.warns(Depth2ImgWarning, match=r"^1 input file\(s\) in the folders this job writes under"):
            again = run_job(job, resume=True, progress=False)
        assert again.done == 0 and again.skipped == 1 and not again.failed


def test_sources_inside_the_output_folder_but_not_in_what_the_job_writes_are_used(dataset, tmp_path):
    """A dataset folder that holds its raw photos and is its own output (`output: .`): the photos are sources."""
    (tmp_path / "ds" / "raw").mkdir(parents=True)
    Image.open(dataset / "frames" / "f0.png").save(tmp_path / "ds" / "raw" / "a.png")
    job = write_job(tmp_path / "ds", inputs="raw", output=".", presets=["fog"], seeds=1, labels={})
    assert run_job(job, progress=False).done == 1
    assert [p.name for p in (tmp_path / "ds" / "images").iterdir()] == ["a__fog__s0.png"]


def test_coco_entries_named_under_a_folder_the_sources_lack_still_match(dataset, tmp_path):
    """An export's `train2017/f0.png` (or the annotator's absolute path) names the source f0.png when it is the one
    entry of that name; it matched nothing after the path-suffix matching came in, silently."""
    from depth2img.batch import Labels

    coco = json.loads((dataset / "coco.json").read_text())
    for im in coco["images"]:
        im["file_name"] = f"train2017/{im['file_name']}"
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    labels = Labels(
        load_job(write_job(tmp_path, inputs=str(dataset / "frames"), labels={"coco": "coco.json"}))
    )
    entry, anns = labels.coco_for(dataset / "frames" / "f0.png")
    assert entry["file_name"] == "train2017/f0.png" and anns


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"yolo": "nodir"}, r"^labels.yolo .*nodir: no such folder$"),
        ({"masks": {"semantic": "nodir"}}, r"^labels.masks.semantic .*nodir: no such folder$"),
        ({"masks": {"semantic": "a-file"}}, r"^labels.masks.semantic .*a-file: not a folder$"),
    ],
)
def test_a_label_folder_that_is_not_there_is_refused_before_anything_is_written(dataset, tmp_path, labels,
                                                                                message):  # fmt: skip
    """A misspelt yolo or masks folder gave a dataset with no such labels, exit 0."""
    (tmp_path / "a-file").write_text("x")
    job = write_job(tmp_path, inputs=[str(dataset / "frames")], output="out", presets=["fog"], seeds=1,
                    labels=labels)  # fmt: skip
    with pytest.raises(InputError, match=message):
        run_job(job, progress=False)
    assert not (tmp_path / "out").exists()


def test_yolo_and_mask_files_found_by_a_shared_file_name_are_refused(dataset, tmp_path):
    """YOLO and mask files are looked up by the source's file name: x/f0.png and y/f0.png would share f0's labels."""
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        Image.open(dataset / "frames" / "f0.png").save(tmp_path / sub / "f0.png")
    job = write_job(tmp_path, inputs=["x", "y"], output="out", presets=["fog"], seeds=1,
                    labels={"yolo": str(dataset / "yolo")})  # fmt: skip
    with pytest.raises(
        InputError, match=r"f0.txt would be the labels of 2 sources .*share the file name 'f0'"
    ):
        run_job(job, progress=False)
    assert not (tmp_path / "out").exists()


def test_yolo_and_mask_files_are_found_in_the_subfolders_that_mirror_the_sources(dataset, tmp_path):
    """A YOLO tree: images/train/f0.png's labels are labels/train/f0.txt, images/val/f0.png's labels/val/f0.txt
    (masks alike), so sources that share a file name each carry their own (the subfolders were not searched: a
    warning, and outputs without labels); the deepest mirror counts (a/b/f1.png: labels/a/b/, not labels/b/); a
    source whose mirrored subfolder lacks its file has none (a background image), not the file of its name at the
    top, which is the top source's: said, once per label folder (as a flat folder with a subfolder named as the
    sources' folder would pass its files over)."""
    frames, yolo, semantic = dataset / "frames", dataset / "yolo", dataset / "semantic"
    placed = {"train/f0": 0, "val/f0": 1, "a/b/f1": 2, "f2": 0, "val/f2": None}  # source -> its labels' frame
    for name, k in placed.items():
        (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.open(frames / f"f{k or 0}.png").save(tmp_path / "images" / f"{name}.png")
        if k is not None:
            for folder, src in (("labels", yolo / f"f{k}.txt"), ("masks", semantic / f"f{k}.png")):
                (tmp_path / folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, tmp_path / folder / f"{name}{src.suffix}")
    (tmp_path / "labels" / "b").mkdir()  # a shallower mirror of a/b/f1, with a file of its name: not its
    shutil.copy(yolo / "f0.txt", tmp_path / "labels" / "b" / "f1.txt")
    job = write_job(tmp_path, inputs="images/**/*.png", output="out", presets=["fog"], seeds=1, layout="files",
                    labels={"yolo": "labels", "masks": {"semantic": "masks"}})  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_job(job, progress=False).done == len(placed)
    said = [str(w.message) for w in caught if issubclass(w.category, Depth2ImgWarning)]
    assert said == [
        f"job key labels: {key}: 1 source(s) have no file in the subfolder named as their folder (val/ for "
        f"{tmp_path / 'images' / 'val' / 'f2.png'}) and one of their name at the top (f2{suffix}), which is not "
        "taken; their outputs carry none"
        for key, suffix in (("labels.yolo", ".txt"), ("labels.masks.semantic", ".png"))
    ]
    out = tmp_path / "out"
    made = {Path(r["source"]).relative_to(tmp_path / "images").with_suffix("").as_posix(): Path(r["output"]).stem
            for r in read_manifest(out / "manifest.jsonl")}  # fmt: skip
    assert made.keys() == placed.keys()
    for source, stem in made.items():
        label, mask = out / "labels" / f"{stem}.txt", out / "masks" / "semantic" / f"{stem}.png"
        if (k := placed[source]) is None:
            assert not label.exists() and not mask.exists(), source
        else:
            assert label.read_text() == (yolo / f"f{k}.txt").read_text(), source
            assert mask.read_bytes() == (semantic / f"f{k}.png").read_bytes(), source


def test_local_model_folders_are_taken_from_the_job_files_folder(tmp_path, monkeypatch):
    for folder in ("jobs/est", "jobs/org/backbone", "loras/fast"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    f = write_job(tmp_path / "jobs", estimator="./est", model="org/backbone", lora="../loras/fast")
    job = load_job(f)
    assert (job.estimator, job.model, job.lora) == (
        str(tmp_path / "jobs" / "est"),
        str(tmp_path / "jobs" / "org" / "backbone"),  # an existing folder, though shaped like a hub id
        str(tmp_path / "jobs" / ".." / "loras" / "fast"),
    )
    job = load_job(write_job(tmp_path / "jobs", estimator="tiny/depth-anything-v2-small", model="org/other"))
    assert (job.estimator, job.model) == (
        "tiny/depth-anything-v2-small",
        "org/other",
    )  # names and hub ids stay


def _count_items(root: Path) -> dict:
    lines = read_manifest(root / "manifest.jsonl")
    final = [r["item"] for r in lines if r["final"]]
    return {"final": final, "images": sorted(p.name for p in (root / "images").glob("*.png"))}


@pytest.mark.parametrize("writer_threads", ["1", "3"])
def test_sigkill_mid_run_then_resume_gives_every_item_exactly_once(
    dataset, tmp_path, tiny_dir, writer_threads
):
    job = write_job(dataset, name="kill.yaml", output=str(tmp_path / "k"), presets=["rain", "snow", "fog"], seeds=2,
                    knobs={"steps": 4, "strength": 0.5})  # fmt: skip
    env = {**os.environ, "DEPTH2IMG_TINY_DIR": str(tiny_dir), "HF_HUB_OFFLINE": "1",
           "DEPTH2IMG_WRITER_THREADS": writer_threads}  # fmt: skip
    cmd = [sys.executable, "-m", "depth2img", "batch", str(job), "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = tmp_path / "k" / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not manifest.exists() or manifest.read_text().count("\n") < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(read_manifest(manifest))
    assert 5 <= killed_at < 18, "the run should be killed part-way"
    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    got = _count_items(tmp_path / "k")
    assert len(got["final"]) == len(set(got["final"])) == 18  # every item exactly once
    assert len(got["images"]) == 18
    for name in got["images"]:
        Image.open(tmp_path / "k" / "images" / name).verify()  # no corrupt file
    assert not [p for p in (tmp_path / "k").rglob("*") if ".part" in p.name]
    assert len(json.loads((tmp_path / "k" / "annotations.json").read_text())["images"]) == 18


def test_two_processes_equal_one(dataset, tmp_path, tiny_dir):
    (tmp_path / "tmp").mkdir()  # torchrun's own temp folders
    env = {**os.environ, "DEPTH2IMG_TINY_DIR": str(tiny_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TMPDIR": str(tmp_path / "tmp")}  # fmt: skip
    # chunks [f0, f1], [f2]; fog sorts before rain, which one process makes first
    common = dict(presets=["rain", "fog"], seeds=1, labels={}, depth_batch_size=2, batch_size=2)
    single = write_job(dataset, name="one.yaml", output=str(tmp_path / "one"), **common)
    multi = write_job(dataset, name="two.yaml", output=str(tmp_path / "two"), **common)
    torchrun = Path(sys.executable).with_name("torchrun")
    res = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", "-m", "depth2img", "batch",
                          str(multi), "-q"], env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, [
        line for line in res.stderr.splitlines() if "depth2img" in line
    ] or res.stderr[-2000:]
    res = subprocess.run([sys.executable, "-m", "depth2img", "batch", str(single), "-q"], env=env, capture_output=True,
                         text=True, timeout=300)  # same thread settings as the two-process run  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    one, two = _count_items(tmp_path / "one"), _count_items(tmp_path / "two")
    assert sorted(one["final"]) == sorted(two["final"]) and len(two["final"]) == len(set(two["final"])) == 6
    assert not list((tmp_path / "two").glob("manifest.rank*.jsonl"))  # merged into one manifest
    for name in one["images"]:
        a = np.asarray(Image.open(tmp_path / "one" / "images" / name))
        b = np.asarray(Image.open(tmp_path / "two" / "images" / name))
        assert np.array_equal(a, b)
    # the merged manifest is one process's, line for line (it had been sorted by item: f0/fog before f0/rain)
    merged = (tmp_path / "two" / "manifest.jsonl").read_text()
    assert merged == (tmp_path / "one" / "manifest.jsonl").read_text()


def test_a_job_that_accepts_no_image_says_so_and_exits_2(dataset, tmp_path, capsys):
    """Every item rejected by the geometry check: exit 0 and a dataset without images, with no word of why."""
    from depth2img.cli import main

    job = write_job(dataset, name="none.yaml", inputs="frames/f0.png", output=str(tmp_path / "n"), presets=["fog"],
                    seeds=1, labels={}, geometry={"metric": "absrel", "threshold": 0.0, "retries": 0})  # fmt: skip
    assert main(["batch", str(job), "-q"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "0 done, 0 failed, 0 retried, 1 rejected" in err[-2]
    assert (
        err[-1]
        == "depth2img: error: no image passed the geometry check (absrel <= 0.0); rejected items write no image"
    )
    # a resumed run whose new items are all rejected, over a dataset an earlier run filled, is no failure
    from depth2img import metrics

    job = write_job(dataset, name="some.yaml", inputs="frames/f0.png", output=str(tmp_path / "s"), presets=["fog"],
                    seeds=1, labels={}, geometry={"metric": "delta1", "threshold": 0.0, "retries": 0})  # fmt: skip
    assert main(["batch", str(job), "-q"]) == 0
    job.write_text(job.read_text().replace("seeds: 1", "seeds: 2"))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(metrics, "passes", lambda *a: False)
        assert main(["batch", str(job), "--resume", "-q"]) == 0
    assert (
        "0 done, 0 failed, 0 retried, 1 rejected by geometry, 1 skipped (resume)" in capsys.readouterr().err
    )


def test_batch_warnings_are_one_line_each_on_the_cli(dataset, tmp_path, capsys):
    from depth2img.cli import main

    long = "a street " + " ".join(f"w{i}" for i in range(60))
    job = write_job(dataset, name="long.yaml", output=str(tmp_path / "w"), presets=[], prompt=long, seeds=1,
                    labels={})  # fmt: skip
    assert main(["batch", str(job), "-q"]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(warned) == 1 and warned[0].startswith("depth2img: warning: prompt is "), (
        err
    )  # once, not per frame
    assert "Depth2ImgWarning" not in err and "batch.py" not in err


def test_eval_command(dataset, capsys, monkeypatch):
    from depth2img.cli import main
    from depth2img.estimators import DepthEstimator

    src = dataset / "frames" / "f0.png"
    assert main(["eval", str(src), str(src), "--estimator", "tiny", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["delta1"] == 1.0 and scores["absrel"] < 1e-6 and scores["edge_f1"] == 1.0
    assert main(["eval", str(src), str(dataset / "nope.png")]) == 2
    assert "nope.png: no such file" in capsys.readouterr().err
    # the same frame at another tool's generation size is resized onto the source; another frame is refused
    Image.open(src).resize((W * 2, H * 2 + 2)).save(dataset / "bigger.png")  # 192x130: 1.5 % off 3:2
    assert main(["eval", str(src), str(dataset / "bigger.png"), "--estimator", "tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["delta1"] > 0.9
    Image.open(src).resize((H, W)).save(dataset / "turned.png")
    with monkeypatch.context() as m:  # refused before the estimator loads, naming the files
        m.setattr(DepthEstimator, "from_pretrained", lambda *a, **k: pytest.fail("the estimator loaded"))
        assert main(["eval", str(src), str(dataset / "turned.png"), "--estimator", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (
        f"geometry check: OUTPUT {dataset / 'turned.png'} is 64x96 and SOURCE {src} 96x64; their aspect ratios "
        "differ by more than 3%" in err
    )
    # a source depth that does not say which way it runs: the option to pass is named ("pass a polarity")
    np.save(dataset / "src_depth.npy", np.linspace(1, 2, H * W).reshape(H, W))
    assert main(["eval", str(src), str(src), "--source-depth", str(dataset / "src_depth.npy")]) == 2
    assert (
        "does not say which way its depth runs; pass --depth-polarity (near-bright" in capsys.readouterr().err
    )
    # a flat source depth scored AbsRel 0, delta1 1 against any output: refused, before the output is estimated
    np.save(dataset / "flat.npy", np.full((H, W), 3.0))
    assert (
        main(
            [
                "eval",
                str(src),
                str(src),
                "--source-depth",
                str(dataset / "flat.npy"),
                "--depth-polarity",
                "metric",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.endswith(f"depth2img: error: --source-depth {dataset / 'flat.npy'} is flat (one value, or no valid "
                        "pixel), so it has no geometry to score OUTPUT against\n")  # fmt: skip
    # a far-bright source (scale assumed) and one of a narrow depth range (flat outputs score well) are flagged
    np.save(dataset / "narrow.npy", np.linspace(10, 13, H * W).reshape(H, W))
    for depth, polarity, said in (("src_depth.npy", "far-bright", "a far-bright depth has no scale"),
                                  ("narrow.npy", "metric", "a flat OUTPUT would score delta1 1.00")):  # fmt: skip
        args = [
            "eval",
            str(src),
            str(src),
            "--source-depth",
            str(dataset / depth),
            "--depth-polarity",
            polarity,
        ]
        assert main([*args, "--estimator", "tiny", "--json"]) == 0
        out, err = capsys.readouterr()
        assert json.loads(out)["edge_f1"] is not None and err.count("\n") == 1 and said in err, err


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "configs" / "jobs").glob("*.yaml")), ids=str
)
def test_shipped_job_files_are_valid(path):
    job = load_job(path)  # every key and value checked, no model loaded
    assert variations(job) and job.batch_size >= 1


def test_a_jobs_dtype_loads_the_model_in_it(dataset, tmp_path):
    """A job could not choose the weights' dtype (float16 on a GPU, always), as `transform --dtype` can."""
    job = write_job(
        dataset, output=str(tmp_path / "d"), presets=["dusk"], seeds=1, labels={}, dtype="bfloat16"
    )
    assert run_job(job, progress=False).done == 3
    records = read_manifest(tmp_path / "d" / "manifest.jsonl")
    assert {r["dtype"] for r in records} == {"bfloat16"}
    assert "dtype: bfloat16" in (tmp_path / "d" / "job.resolved.yaml").read_text()


def test_a_jobs_native_size_generates_as_transform_native_size_does(dataset, tmp_path):
    """A review of the batch keys (2026-11-28): a job had no native_size key ('unknown key'), though `transform
    --native-size N` sets the generation size and a batch run takes the same knobs. A job's native_size now makes the
    images transform makes with it, records it, and a resumed run that changes it is refused."""
    from depth2img.transform_run import run_transform

    job = write_job(dataset, output=str(tmp_path / "b"), presets=["rain"], seeds=1, labels={}, layout="files",
                    native_size=128)  # fmt: skip
    assert run_job(job, progress=False).done == 3
    records = read_manifest(tmp_path / "b" / "manifest.jsonl")
    # 96x64 at the pixel count of 128x128 (the tiny models' own is 64: 80x48)
    assert {(r["native_size"], tuple(r["generation_size"])) for r in records} == {(128, (156, 104))}
    assert "native_size: 128" in (tmp_path / "b" / "job.resolved.yaml").read_text()
    report = run_transform([dataset / "frames"], tmp_path / "t", preset="rain", model="tiny", seed=0, progress=False,
                           knobs={"steps": 2, "strength": 0.5}, load_options={"native_size": 128})  # fmt: skip
    assert len(report.done) == 3
    for r in records:
        ours = np.asarray(Image.open(tmp_path / "b" / r["output"]), dtype=int)
        theirs = np.asarray(Image.open(tmp_path / "t" / f"{Path(r['source']).stem}_rain_s0.png"), dtype=int)
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1  # (batched-kernel rounding)
    job.write_text(job.read_text().replace("native_size: 128", "native_size: 96"))
    with pytest.raises(
        InputError, match="^--resume \\(resume=True\\): this job's native_size differs from the run"
    ):
        run_job(job, resume=True, progress=False)


def test_exif_after_a_pngs_pixels_counts_for_the_label_check(tmp_path):
    """A PNG's EXIF after its pixel data (Pillow reads it only by decoding) was not seen by the header check:
    masks of the stored size passed, and were copied beside an output load_image had turned."""
    import struct
    import zlib

    from depth2img.io import image_header, load_image

    exif = Image.Exif()
    exif[0x0112] = 6
    data = exif.tobytes()
    late = struct.pack(">I", len(data)) + b"eXIf" + data + struct.pack(">I", zlib.crc32(b"eXIf" + data))
    (tmp_path / "photos").mkdir()
    photo = tmp_path / "photos" / "r.png"
    render_driving_scene(W, H, seed=0).image.save(photo)
    raw = photo.read_bytes()
    photo.write_bytes(raw[:-12] + late + raw[-12:])  # before IEND, after IDAT
    assert load_image(photo).size == (H, W)  # what the output's size will be
    assert image_header(photo) == ((W, H), (H, W), 6)
    (tmp_path / "masks").mkdir()
    Image.new("L", (W, H)).save(tmp_path / "masks" / "r.png")
    job = write_job(tmp_path, output="out", inputs="photos", presets=["fog"], seeds=1,
                    labels={"masks": {"m": "masks"}})  # fmt: skip
    with pytest.raises(
        InputError, match=r"r.png is 96x64 but the photo is 64x96 once its EXIF orientation 6"
    ):
        run_job(job, progress=False)
    render_driving_scene(W, H, seed=0).image.save(photo)  # no EXIF at all
    assert image_header(photo) == ((W, H), (W, H), 1)


def test_a_models_relative_path_is_never_taken_from_the_current_directory(tmp_path, tiny_dir, monkeypatch):
    """A relative model folder missing under the job's folder but present in the current directory was loaded
    from there: the job meant another model (or a hub id of that name) and ran with this one."""
    (tmp_path / "here" / "org").mkdir(parents=True)
    (tmp_path / "here" / "org" / "m").symlink_to(tiny_dir / "sd15-depth")
    (tmp_path / "jobs").mkdir()
    job = tmp_path / "jobs" / "job.yaml"
    job.write_text("inputs: x\noutput: out\nprompt: p\nmodel: org/m\n")
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(InputError, match=r"job.yaml: job key model .org/m. is no path under the job file's folder .*jobs, "
                       r"but one in the current directory .*here; give it from the job file's folder"):  # fmt: skip
        load_job(job)
    (tmp_path / "jobs" / "org").symlink_to(
        tmp_path / "here" / "org"
    )  # under the job's folder: taken from there
    assert load_job(job).model == str(tmp_path / "jobs" / "org" / "m")


def test_resume_makes_a_removed_image_again_and_the_index_lists_only_images_that_exist(dataset, tmp_path):
    """A removed output was neither made again on --resume nor dropped: the index listed a missing file."""
    out = tmp_path / "rm"
    job = write_job(dataset, output=str(out), presets=["fog"], seeds=1, labels={}, layout="imagefolder")
    assert run_job(job, progress=False).done == 3
    image = out / "train" / "f1__fog__s0.png"
    before = np.asarray(Image.open(image), np.int16)
    image.unlink()
    again = run_job(job, resume=True, progress=False)
    assert again.done == 1 and again.skipped == 2
    # the same attempt and seed: the same image (within one 8-bit level: it was batched with the others)
    assert np.abs(np.asarray(Image.open(image), np.int16) - before).max() <= 1
    records = read_manifest(out / "manifest.jsonl")
    assert sorted((r["item"], r["attempt"]) for r in records) == [(f"f{k}/fog/s0", 0) for k in range(3)]
    index = [json.loads(x) for x in (out / "train" / "metadata.jsonl").read_text().splitlines()]
    assert sorted(x["file_name"] for x in index) == [f"f{k}__fog__s0.png" for k in range(3)]
    # removed and not made again (no --resume): the index drops it when the next run settles the manifest
    image.unlink()
    from depth2img.batch import _settle_manifests, build_index, load_job

    _settle_manifests(out)
    assert build_index(load_job(job), out) == 2 and len(read_manifest(out / "manifest.jsonl")) == 2


def test_a_source_added_on_resume_with_an_earlier_sources_file_name_gets_its_own_images(tmp_path):
    """x/a.png ran; w/a.png was added (it sorts first) and --resume gave it the name a: its items counted as
    finished (x's images), and x/a.png was made again as a-2."""
    for folder, seed in (("x", 0), ("w", 1)):
        (tmp_path / "src" / folder).mkdir(parents=True)
        render_driving_scene(W, H, seed=seed).image.save(tmp_path / "src" / folder / "a.png")
    job = write_job(tmp_path, inputs=["src/x/a.png"], output="out", presets=["fog"], seeds=1, labels={},
                    layout="files")  # fmt: skip
    assert run_job(job, progress=False).done == 1
    job = write_job(tmp_path, inputs=["src/w/a.png", "src/x/a.png"], output="out", presets=["fog"], seeds=1,
                    labels={}, layout="files")  # fmt: skip
    again = run_job(job, resume=True, progress=False)
    assert again.done == 1 and again.skipped == 1
    sources = {
        r["item"]: Path(r["source"]).parent.name for r in read_manifest(tmp_path / "out" / "manifest.jsonl")
    }
    assert sources == {"a/fog/s0": "x", "a-2/fog/s0": "w"}


def test_files_that_are_no_text_are_one_line_naming_them(tmp_path, dataset, monkeypatch):
    """A PNG or a folder given as the job file, a COCO file or presets file that is not UTF-8: internal errors
    (UnicodeDecodeError, IsADirectoryError), exit 1. A list file naming a Latin-1 file name failed the same way."""
    import os

    from depth2img.batch import Labels, job_inputs
    from depth2img.presets import load_presets

    png = dataset / "frames" / "f0.png"
    with pytest.raises(InputError, match=rf"^job file {png}: not UTF-8 text \(byte 0\); is it a job YAML\?$"):
        load_job(png)
    with pytest.raises(InputError, match=rf"^job file {dataset}: cannot be read \(Is a directory\)$"):
        load_job(dataset)
    with pytest.raises(InputError, match=rf"^presets file {png}: not UTF-8 text \(byte 0\)"):
        load_presets([png])
    (tmp_path / "coco.json").write_bytes(
        '{"images": [], "annotations": [], "x": "caf\u00e9"}'.encode("latin-1")
    )
    job = write_job(tmp_path, inputs="frames", output="out", presets=["fog"], labels={"coco": "coco.json"})
    with pytest.raises(
        InputError, match=r"labels.coco .*coco.json: cannot be read \('utf-8' codec can't decode"
    ):
        Labels(load_job(job))
    # a list file in the file system's own spelling of names
    (tmp_path / "frames").mkdir()
    latin = os.fsencode(tmp_path / "frames") + b"/caf\xe9.png"
    png_bytes = png.read_bytes()
    with open(latin, "wb") as fh:
        fh.write(png_bytes)
    (tmp_path / "list.txt").write_bytes(b"frames/caf\xe9.png\n")
    paths, problems = job_inputs(load_job(write_job(tmp_path, inputs="list.txt", output="o2", presets=["fog"],
                                                    labels={})))  # fmt: skip
    assert problems == [] and [os.fsencode(p) for p in paths] == [latin]
    # where names decode strictly as UTF-8 (Windows): one line
    import depth2img.batch as batch_mod

    def strict(data):
        return data.decode("utf-8")

    monkeypatch.setattr(batch_mod.os, "fsdecode", strict)
    with pytest.raises(
        InputError, match=r"list file .*list.txt is not UTF-8 text \(byte 10\); save it as UTF-8"
    ):
        job_inputs(load_job(tmp_path / "job.yaml"))


def test_a_list_file_reads_as_the_readme_says(tmp_path, chelsea):
    """A file, folder or glob per line, relative to the list file; blank lines and '#' lines skipped, spaces around a
    line trimmed ('./#x.png' names a file whose name starts with '#')."""
    from depth2img.batch import job_inputs

    for name in ("lists/one.png", "lists/#hash.png", "d/a.png", "d/b.png", "g/x/1.png", "g/y/2.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        chelsea.resize((32, 24)).save(tmp_path / name)
    (tmp_path / "lists" / "l.txt").write_text(
        "\ufeff# photos (after a BOM)\n\n  one.png  \n#hash.png\n  # ../d/a.png\n./#hash.png\n../d\n\t../g/**/*.png\n",
        encoding="utf-8",
    )
    paths, problems = job_inputs(load_job(write_job(tmp_path, inputs="lists/l.txt", output="o", presets=["fog"],
                                                    labels={})))  # fmt: skip
    assert problems == []
    assert [p.resolve().relative_to(tmp_path.resolve()).as_posix() for p in paths] == [
        "lists/one.png", "lists/#hash.png", "d/a.png", "d/b.png", "g/x/1.png", "g/y/2.png"]  # fmt: skip


def test_a_new_source_never_takes_an_earlier_sources_name_and_a_moved_project_keeps_its_names(tmp_path):
    """d1/x.png ran; resumed without it but with another photo d2/x.png, the new photo took the name x, and with it
    x's images (nothing was made for it). A project moved whole keeps its sources' names."""
    import shutil

    project = tmp_path / "p"
    for folder, seed in (("d1", 0), ("d2", 1)):
        (project / "src" / folder).mkdir(parents=True)
        render_driving_scene(W, H, seed=seed).image.save(project / "src" / folder / "x.png")
    common = dict(output="out", presets=["fog"], seeds=1, labels={}, layout="files")
    assert run_job(write_job(project, inputs=["src/d1/x.png"], **common), progress=False).done == 1
    job = write_job(project, inputs=["src/d2/x.png"], **common)
    again = run_job(job, resume=True, progress=False)
    assert again.done == 1 and again.skipped == 0
    sources = {
        r["item"]: Path(r["source"]).parent.name for r in read_manifest(project / "out" / "manifest.jsonl")
    }
    assert sources == {"x/fog/s0": "d1", "x-2/fog/s0": "d2"}
    # copied whole, the original still in place: each source was taken as new, made again beside its earlier
    # images under another name, both indexed
    shutil.copytree(project, tmp_path / "copy")
    copied = run_job(tmp_path / "copy" / "job.yaml", resume=True, progress=False)
    assert copied.done == 0 and copied.skipped == 1
    # and again (a review of batch runs, 2026-11-28: the first resume's record named the copy's folder, and the
    # second took every source as new, each image made twice)
    twice = run_job(tmp_path / "copy" / "job.yaml", resume=True, progress=False)
    assert twice.done == 0 and twice.skipped == 1
    assert sorted(p.name for p in (tmp_path / "copy" / "out").rglob("*.png")) == sorted(
        p.name for p in (project / "out").rglob("*.png")
    )
    shutil.move(project, tmp_path / "moved")
    moved = run_job(tmp_path / "moved" / "job.yaml", resume=True, progress=False)
    assert moved.done == 0 and moved.skipped == 1


def test_settling_the_manifest_keeps_the_newest_line_and_leaves_an_added_only_manifest_alone(tmp_path):
    """A killed multi-process run's rank file beat the line a later one-process resume wrote for the same attempt."""
    import os

    from depth2img.batch import _settle_manifests

    (tmp_path / "a.png").write_bytes(b"png")
    line = {"item": "a/fog/s0", "attempt": 0, "output": "a.png", "final": True}
    (tmp_path / "manifest.rank0.jsonl").write_text(json.dumps({**line, "run": "old"}) + "\n")
    os.utime(tmp_path / "manifest.rank0.jsonl", ns=(1, 1))
    (tmp_path / "manifest.jsonl").write_text(json.dumps({**line, "run": "new"}) + "\n")
    _settle_manifests(tmp_path)
    assert [r["run"] for r in read_manifest(tmp_path / "manifest.jsonl")] == ["new"]
    assert not (tmp_path / "manifest.rank0.jsonl").exists()
    # lines only added (one process): the file is not rewritten
    (tmp_path / "b.png").write_bytes(b"png")
    with open(tmp_path / "manifest.jsonl", "a") as fh:
        fh.write(json.dumps({**line, "item": "b/fog/s0", "output": "b.png"}) + "\n")
    inode = (tmp_path / "manifest.jsonl").stat().st_ino
    _settle_manifests(tmp_path)
    assert (tmp_path / "manifest.jsonl").stat().st_ino == inode and len(
        read_manifest(tmp_path / "manifest.jsonl")
    ) == 2


def test_a_resumed_two_process_run_merges_after_the_earlier_lines_in_one_process_order(tmp_path):
    """Merged rank files were sorted by item string: s10 before s2, and chunks interleaved by name."""
    import os

    from depth2img.batch import _settle_manifests

    def line(item):
        return json.dumps({"item": item, "attempt": 0, "output": None, "source": item.split("/")[0]}) + "\n"

    (tmp_path / "manifest.jsonl").write_text(line("z/fog/s0"))  # an earlier run's
    os.utime(tmp_path / "manifest.jsonl", ns=(1, 1))
    # rank 0 ran chunks 0 ([b]) and 2 ([a]), rank 1 chunk 1 ([c])
    (tmp_path / "manifest.rank0.jsonl").write_text(line("b/fog/s2") + line("b/fog/s10") + line("a/fog/s0"))
    (tmp_path / "manifest.rank1.jsonl").write_text(line("c/fog/s0"))
    _settle_manifests(tmp_path, {"b": 0, "c": 1, "a": 2})
    items = [r["item"] for r in read_manifest(tmp_path / "manifest.jsonl")]
    assert items == ["z/fog/s0", "b/fog/s2", "b/fog/s10", "c/fog/s0", "a/fog/s0"]


def test_two_names_linked_to_one_file_keep_two_names_on_resume(tmp_path):
    """A Hugging Face snapshot links identical frames to one blob: compared by the file reached, both sources took
    one name on --resume, and one's images were written over the other's."""
    (tmp_path / "blobs").mkdir()
    render_driving_scene(W, H, seed=0).image.save(tmp_path / "blobs" / "b.png")
    (tmp_path / "src").mkdir()
    for name in ("f0.png", "f1.png"):
        (tmp_path / "src" / name).symlink_to(tmp_path / "blobs" / "b.png")
    job = write_job(tmp_path, inputs="src", output="out", presets=["fog"], seeds=1, labels={}, layout="files")
    assert run_job(job, progress=False).done == 2
    job = write_job(tmp_path, inputs="src", output="out", presets=["fog", "dusk"], seeds=1, labels={},
                    layout="files")  # fmt: skip
    again = run_job(job, resume=True, progress=False)  # a variation added
    assert again.done == 2 and again.skipped == 2
    items = sorted(r["item"] for r in read_manifest(tmp_path / "out" / "manifest.jsonl"))
    assert items == ["f0/dusk/s0", "f0/fog/s0", "f1/dusk/s0", "f1/fog/s0"]


def test_resumed_names_follow_the_sources_through_moves(tmp_path):
    """A second resume after a project moved remade everything (the recorded job folder had moved on); a job file
    moved alone renamed sources that had not moved; another project's photo of the same relative path took the
    first project's names while that one was still in place."""
    import shutil

    def project(root, seed):
        (root / "photos").mkdir(parents=True)
        render_driving_scene(W, H, seed=seed).image.save(root / "photos" / "a.png")

    def job_at(path, inputs, output):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({"inputs": inputs, "output": output, "model": "tiny", "presets": ["fog"],
                                        "seeds": 1, "knobs": {"steps": 2, "strength": 0.5}, "layout": "files"}))  # fmt: skip
        return path

    def items(out):
        return sorted(r["item"] for r in read_manifest(out / "manifest.jsonl"))

    project(tmp_path / "p1", 0)
    assert run_job(job_at(tmp_path / "p1" / "job.yaml", "photos", "out"), progress=False).done == 1
    shutil.move(tmp_path / "p1", tmp_path / "p2")  # moved whole, resumed twice
    for _ in range(2):
        again = run_job(tmp_path / "p2" / "job.yaml", resume=True, progress=False)
        assert (again.done, again.skipped) == (0, 1)
    # the job file moved alone: its sources did not
    project(tmp_path / "q", 2)
    assert run_job(job_at(tmp_path / "q" / "job.yaml", "photos", "out"), progress=False).done == 1
    again = run_job(
        job_at(tmp_path / "q" / "jobs" / "job.yaml", "../photos", "../out"), resume=True, progress=False
    )
    assert (again.done, again.skipped) == (0, 1) and items(tmp_path / "q" / "out") == ["a/fog/s0"]
    # another project's photos/a.png, into the same output, while q's is still in place: its own name
    project(tmp_path / "r", 1)
    again = run_job(job_at(tmp_path / "r" / "job.yaml", "photos", str(tmp_path / "q" / "out")), resume=True,
                    progress=False)  # fmt: skip
    assert (again.done, again.skipped) == (1, 0) and items(tmp_path / "q" / "out") == [
        "a-2/fog/s0",
        "a/fog/s0",
    ]


def _coco_labels(dataset, tmp_path, change):
    """Labels of the dataset's frames with its COCO file changed by ``change(coco)`` (a review's cases)."""
    from depth2img.batch import Labels

    coco = json.loads((dataset / "coco.json").read_text())
    change(coco)
    # NaN as Python writes it: not JSON
    (tmp_path / "coco.json").write_text(
        json.dumps(coco).replace('"OVERFLOW"', "1e999").replace('"DIGITS"', "1" + "0" * 5000)
    )
    return Labels(load_job(write_job(tmp_path, inputs=str(dataset / "frames"), labels={"coco": "coco.json"})))


@pytest.mark.parametrize(
    "change, message",
    [
        # two images of one id: both took f0.png's boxes
        (
            lambda c: c["images"][1].update(id=10),
            r"image id 10 is given to 'f0.png' and 'f1.png'; each image needs",
        ),
        # annotations of an id no image has were dropped, "10" against 10 too
        (
            lambda c: c["annotations"][0].update(image_id="10"),
            r"1 annotation\(s\) name image ids that no image has \('10'\)",
        ),
        (
            lambda c: c["annotations"][-1].update(image_id=999),
            r"1 annotation\(s\) name image ids that no image has \(999\)",
        ),
        # an internal error (KeyError), and a TypeError only once every image was made
        (lambda c: c["images"][0].pop("id"), r"not COCO \(images need an id and a file_name.*KeyError"),
        (lambda c: c["images"][0].update(id=[10]), r"not COCO .*TypeError: unhashable type"),
        # "its labels.coco image id 10 is 96x64 but the photo is 96x64"
        (
            lambda c: c["images"][0].update(width="96"),
            r"image id 10 has width '96'; give a whole number of pixels",
        ),
        # written back as a bare NaN: annotations.json was not JSON
        (
            lambda c: c["annotations"][0]["bbox"].__setitem__(0, float("nan")),
            r"holds NaN, which JSON does not allow",
        ),
        # valid JSON, read as infinity: annotations.json failed (an internal error) once every image was made
        (
            lambda c: c["annotations"][0]["bbox"].__setitem__(0, "OVERFLOW"),
            r"holds 1e999, a number past the largest a float holds; give numbers$",
        ),
        # an id of 5001 digits: Python's ValueError, an internal error (found by re-verifying the fix above)
        (
            lambda c: c["annotations"][0].update(id="DIGITS"),
            r"holds a number of 5001 digits, more than Python reads; give numbers$",
        ),
    ],
)
def test_coco_labels_that_would_land_on_the_wrong_image_are_refused(dataset, tmp_path, change, message):
    """A review's cases: each ended in annotations on the wrong image, none, an internal error, or an index that
    was not JSON, most with exit 0."""
    with pytest.raises(InputError, match=r"^labels.coco .*coco.json: " + message):
        _coco_labels(dataset, tmp_path, change)


def test_coco_sizes_written_as_whole_floats_are_taken(dataset, tmp_path):
    labels = _coco_labels(
        dataset, tmp_path, lambda c: [im.update(width=96.0, height=64.0) for im in c["images"]]
    )
    labels.check(sorted((dataset / "frames").glob("*.png")))


def test_a_mask_that_is_no_image_is_refused_not_copied_as_a_label(dataset, tmp_path, monkeypatch):
    """A review of batch labels (2026-11-28): an empty mask file, or one holding text, was copied into the dataset as
    that image's mask, exit 0 (its size check was skipped where its header could not be read); so was one cut short
    after its header (found by re-verifying the fix); a mask folder that cannot be listed was an internal error."""
    import errno
    import os
    import shutil

    from depth2img.batch import Labels

    masks = tmp_path / "semantic"
    shutil.copytree(dataset / "semantic", masks)
    whole = (masks / "f1.png").read_bytes()
    for damage in (b"", b"not a png", whole[:60], whole[:-20]):
        (masks / "f1.png").write_bytes(damage)
        job = load_job(
            write_job(tmp_path, inputs=str(dataset / "frames"), labels={"masks": {"semantic": str(masks)}})
        )
        with pytest.raises(
            InputError, match=r"f1.png: its mask .*semantic/f1.png cannot be read as an image"
        ):
            Labels(job).check(sorted((dataset / "frames").glob("*.png")))
    (masks / "f1.png").write_bytes(whole)
    Labels(job).check(sorted((dataset / "frames").glob("*.png")))
    real = os.scandir

    def denied(path="."):  # (simulated: the tests may run as root, whom chmod does not stop)
        if str(path) == str(masks):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(
        InputError, match=rf"^labels.masks.semantic {masks}: cannot be read \(Permission denied\)$"
    ):
        Labels(job)


def test_two_kinds_of_mask_from_one_folder_are_refused_naming_them(dataset, tmp_path):
    """A review of batch labels (2026-11-28): labels.masks semantic and class both naming one folder was refused as a
    mask file 'would be the labels of 2 sources', naming one source twice, with advice to rename the sources."""
    from depth2img.batch import Labels

    masks = {"semantic": str(dataset / "semantic"), "class": str(dataset / "semantic") + "/"}
    job = load_job(write_job(tmp_path, inputs=str(dataset / "frames"), labels={"masks": masks}))
    with pytest.raises(
        InputError, match=r"^job key labels.masks.class and labels.masks.semantic name one folder, "
    ):
        Labels(job)
    # a YOLO folder may hold the masks too (its .txt, their .png)
    both = {"yolo": str(dataset / "semantic"), "masks": {"semantic": str(dataset / "semantic")}}
    Labels(load_job(write_job(tmp_path, inputs=str(dataset / "frames"), labels=both)))


def test_mask_names_that_share_a_folder_are_refused(dataset, tmp_path):
    """'sem seg' and 'sem-seg' both went to masks/sem-seg: one set of masks silently over the other."""
    from depth2img.batch import Labels

    masks = {"sem seg": str(dataset / "semantic"), "sem-seg": str(dataset / "semantic")}
    job = load_job(write_job(tmp_path, inputs=str(dataset / "frames"), labels={"masks": masks}))
    with pytest.raises(
        InputError, match=r"'sem seg' and 'sem-seg' would both be copied to masks/sem-seg; rename one"
    ):
        Labels(job)


@pytest.mark.parametrize(
    "line, message",
    [
        ("0 0.5 0.5 0.1", r"line 2 has 4 value\(s\), not a class and 4 or more coordinates: '0 0.5 0.5 0.1'"),
        ("car 0.5 0.5 0.1 0.1", r"line 2: class 'car' is not a whole number >= 0"),
        ("0 foo bar 0.1 0.1", r"line 2 holds a value that is not a number"),
        ("0 nan 0.5 0.1 0.1", r"line 2 holds a NaN or infinite value"),
        ("0 1.7 0.5 0.1 0.1", r"line 2: coordinates are normalised to \[0, 1\], got '0 1.7 0.5 0.1 0.1'"),
        ("0 0.1 0.1 0.2 0.1 0.2 0.2", None),  # a polygon
        ("0 0.5 0.5 0.2 0.2 0.4 0.4 2 0.6 0.6 1", None),  # a box with keypoints (visibility 2)
    ],
)
def test_yolo_lines_that_are_not_yolo_are_refused_up_front(dataset, tmp_path, line, message):
    """YOLO files are copied unchanged: a 3-column line, a NaN or a centre at 1.7 reached the dataset, exit 0."""
    from depth2img.batch import Labels

    (tmp_path / "yolo").mkdir()
    (tmp_path / "yolo" / "f0.txt").write_text(f"1 0.5 0.5 0.25 0.25\n{line}\n")
    labels = Labels(load_job(write_job(tmp_path, inputs=str(dataset / "frames"), labels={"yolo": "yolo"})))
    sources = sorted((dataset / "frames").glob("*.png"))
    if message is None:
        labels.check(sources)
    else:
        with pytest.raises(InputError, match=r"^labels.yolo .*f0.txt: " + message):
            labels.check(sources)


def test_labels_that_may_not_be_the_sources_are_said(dataset, tmp_path):
    """Sources matched to a COCO entry only in part, with no entry, and label folders that name no source: each
    gave outputs with someone else's labels or none, silently."""
    import warnings

    from depth2img.batch import Labels
    from depth2img.errors import Depth2ImgWarning

    for sub in ("x", "y", "z"):
        (tmp_path / "frames" / sub).mkdir(parents=True)
        Image.open(dataset / "frames" / "f0.png").save(tmp_path / "frames" / sub / "img.png")
    coco = json.loads((dataset / "coco.json").read_text())
    # the annotator's absolute paths: x and y are each their own (they matched nothing: no annotations), z has none
    coco["images"] = [{**coco["images"][0], "id": k, "file_name": f"/home/annotator/proj/{s}/img.png"}
                      for k, s in ((1, "x"), (2, "y"))]  # fmt: skip
    coco["annotations"] = [{**coco["annotations"][0], "image_id": k} for k in (1, 2)]
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    (tmp_path / "yolo" / "seq").mkdir(parents=True)  # a nested tree: found by file name, so never found
    (tmp_path / "yolo" / "seq" / "img.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    job = write_job(tmp_path, inputs="frames/*/img.png", labels={"coco": "coco.json", "yolo": "yolo"})
    labels = Labels(load_job(job))
    sources = [tmp_path / "frames" / s / "img.png" for s in "xyz"]
    assert [labels.coco_for(p)[0] and labels.coco_for(p)[0]["id"] for p in sources] == [1, 2, None]
    with pytest.warns(Depth2ImgWarning) as seen:
        labels.check(sources)
    said = [str(w.message) for w in seen]
    assert len(said) == 3 and all(s.startswith("job key labels: ") for s in said), said
    assert re.search(r"2 source\(s\) matched a labels.coco entry by their last folders and file name only \(.*x/img"
                     r".png as '/home/annotator/proj/x/img.png'\); check that the labels are theirs", said[0])  # fmt: skip
    assert re.search(
        r"1 source\(s\) have no labels.coco entry \(.*z/img.png\); their outputs carry no", said[1]
    )
    assert re.search(
        r"labels.yolo .*yolo holds no file named after a source \(as img.txt\), so no output", said[2]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels.check(sources, warn=False)  # another process than the first: one says it
    # several entries sharing as much of the path: which one is unknowable, so none
    coco["images"].append({**coco["images"][0], "id": 3, "file_name": "/home/annotator/proj2/x/img.png"})
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    assert Labels(load_job(job)).coco_for(sources[0]) == (None, [])


def test_coco_index_keeps_the_datasets_info_licences_and_image_fields(dataset, tmp_path):
    coco = json.loads((dataset / "coco.json").read_text())
    coco["info"] = {"description": "drives", "version": "1.0"}
    coco["licenses"] = [{"id": 3, "name": "CC BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"}]
    coco["images"][0].update(license=3, date_captured="2026-11-27 01:00:00")
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    (tmp_path / "frames").mkdir()
    Image.open(dataset / "frames" / "f0.png").save(tmp_path / "frames" / "f0.png")
    job = write_job(tmp_path, presets=["fog"], seeds=1, labels={"coco": "coco.json"})
    assert run_job(job, progress=False).done == 1
    out = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert out["info"] == coco["info"] and out["licenses"] == coco["licenses"]
    assert out["images"][0]["license"] == 3 and out["images"][0]["date_captured"] == "2026-11-27 01:00:00"


def test_resume_brings_label_copies_in_line_with_the_labels_and_the_index(dataset, tmp_path):
    """A review's case: after a label file was fixed, --resume left the finished outputs' YOLO copies as they were
    (while annotations.json took the fix); a deleted copy was not made again; the copies of an output dropped from
    the index, and of a label file removed since, stayed."""
    import shutil

    for sub in ("frames", "yolo", "semantic"):
        shutil.copytree(dataset / sub, tmp_path / sub)
    job = write_job(tmp_path, presets=["fog"], seeds=1, layout="files",
                    labels={"yolo": "yolo", "masks": {"semantic": "semantic"}})  # fmt: skip
    assert run_job(job, progress=False).done == 3
    out = tmp_path / "out"
    copies = {f"f{k}": (out / "labels" / f"f{k}__fog__s0.txt", out / "masks" / "semantic" / f"f{k}__fog__s0.png")
              for k in range(3)}  # fmt: skip
    assert all(p.is_file() for pair in copies.values() for p in pair)
    (tmp_path / "yolo" / "f0.txt").write_text("5 0.5 0.5 0.25 0.25\n")  # a class fixed
    copies["f0"][1].unlink()  # a copy deleted
    (tmp_path / "yolo" / "f1.txt").unlink()  # f1 has no boxes after all
    (tmp_path / "frames" / "f2.png").unlink()  # f2 dropped, its output too: no longer in the index
    (out / "images" / "f2__fog__s0.png").unlink()
    report = run_job(job, resume=True, progress=False)
    assert report.done == 0 and report.indexed == 2
    assert copies["f0"][0].read_text() == "5 0.5 0.5 0.25 0.25\n"
    assert copies["f0"][1].read_bytes() == (tmp_path / "semantic" / "f0.png").read_bytes()
    assert not copies["f1"][0].exists() and copies["f1"][1].is_file()
    assert not copies["f2"][0].exists() and not copies["f2"][1].exists()


def test_coco_ids_stay_when_resume_adds_a_source(dataset, tmp_path):
    """A source added on --resume (f1, between f0 and f2) renumbered the images and annotations after it: any
    prediction or evaluation file keyed by image id then pointed at other images."""
    (tmp_path / "frames").mkdir()
    for k in (0, 2):
        Image.open(dataset / "frames" / f"f{k}.png").save(tmp_path / "frames" / f"f{k}.png")
    job = write_job(tmp_path, presets=["fog"], seeds=1, labels={"coco": str(dataset / "coco.json")})
    assert run_job(job, progress=False).done == 2

    def ids():
        coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
        images = {im["id"]: im["file_name"] for im in coco["images"]}
        anns = {}
        for a in coco["annotations"]:
            anns.setdefault(images[a["image_id"]], []).append(a["id"])
        return {name: i for i, name in images.items()}, anns, coco

    before_images, before_anns, _ = ids()
    Image.open(dataset / "frames" / "f1.png").save(tmp_path / "frames" / "f1.png")
    assert run_job(job, resume=True, progress=False).done == 1
    images, anns, coco = ids()
    assert {k: images[k] for k in before_images} == before_images
    assert {k: anns[k] for k in before_anns} == before_anns
    added = "images/f1__fog__s0.png"
    assert images[added] == max(before_images.values()) + 1
    assert min(anns[added]) == max(i for v in before_anns.values() for i in v) + 1
    all_ids = [a["id"] for a in coco["annotations"]]
    assert len(set(all_ids)) == len(all_ids) and len(set(images.values())) == 3


def test_variation_names_never_hold_the_separator_of_an_output_names_parts(dataset, tmp_path):
    """Source "a__b" with variation "c" and source "a" with variation "b__c" were both a__b__c__s0: one image was
    written over the other. A variation's name has no "__", so a name splits one way."""
    matrix = {"template": "a street, {w}", "axes": {"w": ["b__c", "d___e", "_f_", "g"]}}
    job = Job(inputs=str(dataset / "frames"), output=str(tmp_path / "o"), model="tiny", presets=[],
              matrix=matrix)  # fmt: skip
    assert [v.name for v in variations(job)] == ["b_c", "d_e", "f", "g"]


def test_long_matrix_variation_names_are_cut_with_a_hash_of_the_whole(tmp_path):
    """Five axes of 70-character values joined to a name too long for a file name: the run failed once its depth
    files and job.resolved.yaml were written."""
    from depth2img.batch import MAX_VARIATION_NAME

    long = [f"{w} " * 12 + "x" for w in ("rain", "snow")]
    axes = {a: long for a in "abcde"}
    job = Job(inputs="a", output=str(tmp_path / "o"), model="tiny", presets=[],
              matrix={"template": "{a}{b}{c}{d}{e}", "axes": axes})  # fmt: skip
    names = [v.name for v in variations(job)]
    assert len(names) == 32 == len(set(names)) and max(map(len, names)) == MAX_VARIATION_NAME
    assert variations(job)[0].name == names[0]  # the same name each time (a resume finds its items)


def test_names_in_other_scripts_stay_apart():
    """Preset and matrix names in another script all became "x": presets 冬 and 夏 wrote the same files (transform)
    or a job was refused as holding duplicate names; accented names lost their letters ("été" -> "t")."""
    from depth2img.outputs import safe_name

    assert [safe_name(t) for t in ("winter+night", "golden hour", "été", "Straße", "", "/")] == [
        "winter+night", "golden-hour", "ete", "Stra-e-880c6886", "x", "x"]  # fmt: skip
    assert len({safe_name("冬"), safe_name("夏"), safe_name("x" * 61), safe_name("x" * 62)}) == 4
    assert safe_name("fire🔥") != safe_name("fire🌊") and safe_name("fire🔥").startswith(
        "fire-"
    )  # symbols too
    assert (
        safe_name("x" * 60) == "x" * 60
        and len(safe_name("x" * 61)) == 60
        and safe_name("冬") == safe_name("冬")
    )
    job = Job(inputs="a", output="o", prompt="p", presets=[],
              matrix={"template": "{prompt} {w}", "axes": {"w": ["雨", "雪", "neige-été"]}})  # fmt: skip
    names = [v.name for v in variations(job)]
    assert len(set(names)) == 3 and names[2] == "neige-ete" and all(n.isascii() for n in names)


@pytest.mark.parametrize(
    "preset_knobs, job_extra, message",
    [
        (  # two presets, each valid alone; then a preset's end against the job's start
            "{control_start: 0.6}",
            {"presets": ["late+early"]},
            r"^job file .*: job key knobs: control_start and control_end must satisfy 0 <= start < end <= 1, got 0.6 and "
            r"0.4 \(with the knobs of preset late\+early, variation late\+early\)$",
        ),
        (
            "{control_end: 0.3}",
            {"knobs": {"steps": 2, "strength": 0.5, "control_start": 0.5}},
            r"got 0.5 and 0.3 \(with the knobs of preset late, variation late\)$",
        ),
        (
            "{feature_cache: 3}",
            {"compile": "default"},
            r"job key knobs: compile default does not combine with feature_cache 3; use one or the other \(with the kn",
        ),
        # a few-step scheduler's limit, the job's or a LoRA's (found once both models had loaded: a review of
        # 2026-11-28)
        (
            "{steps: 60}",
            {"knobs": {"scheduler": "lcm"}},
            r"job key knobs: steps: scheduler 'lcm' takes at most 50 steps, got 60 \(with the knobs of preset late",
        ),
        (
            "{}",
            {"lora": "tiny/lcm-sd15", "knobs": {"steps": 51}},
            # (preset late has no knobs: not named, as it was)
            r"job key knobs: steps: scheduler 'lcm' takes at most 50 steps, got 51$",
        ),
    ],
)
def test_a_presets_knobs_are_checked_with_the_jobs_before_anything_is_written(tmp_path, preset_knobs, job_extra,
                                                                               message):  # fmt: skip
    """A preset's knobs that do not hold together, or not with the job's, passed load_job; the job failed once its
    depth files and job.resolved.yaml were written, naming no preset (a review's cases)."""
    (tmp_path / "p.yaml").write_text(
        f"presets:\n  late:\n    prompt: '{{prompt}}, late'\n    knobs: {preset_knobs}\n"
        "  early:\n    prompt: '{prompt}, early'\n    knobs: {control_end: 0.4}\n"
    )
    given = {"presets": ["late"], "prompt": "a street", "presets_files": "p.yaml", "labels": {}, **job_extra}
    job = write_job(tmp_path, **given)
    with pytest.raises(InputError, match=message):
        load_job(job)


def test_a_matrix_template_takes_the_jobs_prompt(tmp_path):
    """{prompt} was refused as "not an axis", so a matrix job could not use the user's words."""
    job = Job(inputs="a", output=str(tmp_path / "o"), model="tiny", presets=[], prompt="a red car",
              matrix={"template": "{prompt}, {t}", "axes": {"t": ["at noon", "at night"]}})  # fmt: skip
    assert [(v.name, v.prompt) for v in variations(job)] == [
        ("at-noon", "a red car, at noon"),
        ("at-night", "a red car, at night"),
    ]
