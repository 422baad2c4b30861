"""Soak: a 1,000-item batch job on the tiny models; prints resident memory (RSS) over the run.

    python benchmarks/soak_batch.py [OUT_DIR]

10 procedural driving frames x 20 presets x 5 seeds = 1,000 items (2 steps at strength 0.5, geometry check on).
Memory is read from /proc/self/status every second by a sampling thread.
"""

import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(out: Path) -> None:
    from depth2img.batch import read_manifest, run_job
    from depth2img.presets import load_presets
    from depth2img.scene import render_driving_scene

    (out / "frames").mkdir(parents=True, exist_ok=True)
    for k in range(10):
        render_driving_scene(96, 64, seed=k).image.save(out / "frames" / f"f{k}.png")
    job = {"inputs": "frames", "output": "out", "model": "tiny", "presets": list(load_presets())[:20], "seeds": 5,
           "knobs": {"steps": 2, "strength": 0.5}, "layout": "coco"}  # fmt: skip
    (out / "job.yaml").write_text(yaml.safe_dump(job))
    samples: list[tuple[float, float, int]] = []
    stop = threading.Event()
    manifest = out / "out" / "manifest.jsonl"
    t0 = time.perf_counter()

    def sample():
        while not stop.wait(1.0):
            n = manifest.read_text().count("\n") if manifest.exists() else 0
            samples.append((time.perf_counter() - t0, rss_mib(), n))

    threading.Thread(target=sample, daemon=True).start()
    report = run_job(out / "job.yaml", progress=False)
    stop.set()
    items = len(read_manifest(manifest))
    after_100 = next((r for _, r, n in samples if n >= 100), samples[0][1])
    print(f"items: {items}; {report.summary()}")
    print(f"RSS after 100 items: {after_100:.0f} MiB; at the end: {samples[-1][1]:.0f} MiB; "
          f"max: {max(r for _, r, _ in samples):.0f} MiB; wall {report.wall_s:.0f} s")  # fmt: skip
    for t, r, n in samples[:: max(1, len(samples) // 10)]:
        print(f"  t={t:6.1f} s  items={n:5d}  rss={r:7.1f} MiB")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="depth2img-soak-")))
