"""Cost of batch._settle_manifests at a batch job's end: one process that only added lines (no rewrite), and the merge
of two processes' rank files. Lines are as long as a real run's (~1.5 KB: backbone, depth, knobs, geometry, versions);
each settle runs in a fresh process, whose peak RSS is reported above its RSS once depth2img is imported.

    python benchmarks/manifest_settle.py [SCRATCH_DIR] [LINES]    # writes LINES (100k) empty files there, then removes them
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/depth2img-settle")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
shutil.rmtree(root, ignore_errors=True)
(root / "images").mkdir(parents=True)
record = {  # the fields of a tiny run's manifest line (tests/test_batch.py writes them)
    "accepted": True, "attempt": 0, "batch": 4, "control_end": 1.0, "control_scale": 1.0, "control_start": 0.0,
    "backbone": {"controlnet": "lllyasviel/control_v11f1p_sd15_depth", "controlnet_revision": "0" * 40,
                 "fast_path": None, "id": "stable-diffusion-v1-5/stable-diffusion-v1-5", "licence": "creativeml-openrail-m",
                 "lora": None, "lora_revision": None, "name": "sd15-depth", "pipeline": "sd15-controlnet",
                 "memory": {"attention": "sdpa", "offload": "none", "vae_slicing": False, "vae_tiling": False},
                 "revision": "1" * 40, "speed_lora": None},
    "depth": {"dtype": "bfloat16", "id": "depth-anything/Depth-Anything-V2-Small-hf", "kind": "relative_inverse_depth",
              "revision": "2" * 40, "source": "depth-anything-v2-small"},
    "dtype": "bfloat16", "feature_cache": 1, "final": True, "generation_size": [512, 512], "guidance_scale": 7.5,
    "geometry": {"absrel": 0.1234567890123, "delta1": 0.876543210987, "edge_f1": 0.7654321098765,
                 "scale": 1.234567890123, "shift": 0.0123456789012},
    "index": 0, "input_size": [1920, 1080], "mode": "img2img", "negative_prompt": "dry, sunny",
    "preset": "rain", "prompt": "a city street seen from a car, heavy rain, wet reflective ground, puddles, raindrops",
    "scheduler": "unipc", "seed": 0, "size": [1920, 1080], "steps": 30, "strength": 0.8, "user_prompt": "",
    "variation": "rain", "warnings": [],
    "versions": {"depth2img": "0.1.0", "diffusers": "0.42.1", "torch": "2.13.0", "transformers": "5.24.0"},
}  # fmt: skip
lines = []
for i in range(n):
    out = f"images/s{i}__rain__s0.png"
    (root / out).touch()
    src = f"/data/frames/s{i}.png"
    lines.append(json.dumps({**record, "item": f"s{i}/rain/s0", "output": out, "source": src,
                             "source_in_job": f"s{i}.png", "item_seed": i}, sort_keys=True))  # fmt: skip
whole = "".join(line + "\n" for line in lines)
half = sum(len(line) + 1 for line in lines[: n // 2])  # the first process's lines: sources 0 .. n/2-1
del lines
# peak RSS above the RSS once imported: Linux's VmHWM, reset by writing 5 to clear_refs (imports peak higher than
# they end, and a settle below that peak read as 0)
settle = """
import sys, time
from pathlib import Path
from depth2img.batch import _settle_manifests
def kb(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))
root, n = Path(sys.argv[1]), int(sys.argv[2])
chunk_of = {f"/data/frames/s{i}.png": int(i >= n // 2) for i in range(n)} if sys.argv[3] == "merge" else None
open("/proc/self/clear_refs", "w").write("5")
base = kb("VmRSS:")
t = time.perf_counter()
_settle_manifests(root, chunk_of)
print(time.perf_counter() - t, (kb("VmHWM:") - base) / 1e6)
"""


def run(kind):
    done = subprocess.run(
        [sys.executable, "-c", settle, str(root), str(n), kind], capture_output=True, text=True
    )
    if done.returncode:
        sys.exit(done.stderr)
    seconds, gb = map(float, done.stdout.split())
    return seconds, gb


(root / "manifest.jsonl").write_text(whole)
inode = (root / "manifest.jsonl").stat().st_ino
added = run("added")
rewritten = (root / "manifest.jsonl").stat().st_ino != inode
(root / "manifest.rank0.jsonl").write_text(whole[:half])
(root / "manifest.rank1.jsonl").write_text(whole[half:])
(root / "manifest.jsonl").unlink()
merge = run("merge")
same = (root / "manifest.jsonl").read_text() == whole
print(
    f"{n} lines, {len(whole) / 1e6:.0f} MB: lines only added {added[0]:.2f} s, +{added[1]:.2f} GB peak RSS "
    f"(rewritten: {rewritten}); merge of 2 rank files {merge[0]:.2f} s, +{merge[1]:.2f} GB peak RSS "
    f"(byte-identical to one process's: {same})"
)
shutil.rmtree(root)
