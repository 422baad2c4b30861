"""Cost of batch._settle_manifests at a batch job's end on a 100k-line manifest: one process that only added lines,
and a merge of two processes' rank files.

    python benchmarks/manifest_settle.py [SCRATCH_DIR]    # writes 100k empty files there, then removes them
"""

import json
import resource
import shutil
import sys
import time
from pathlib import Path

from depth2img.batch import _settle_manifests

root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/depth2img-settle")
shutil.rmtree(root, ignore_errors=True)
(root / "images").mkdir(parents=True)
n = 100_000
lines = []
for i in range(n):
    out = f"images/s{i}.png"
    (root / out).touch()
    lines.append(
        json.dumps(
            {
                "item": f"s{i}/fog/s0",
                "attempt": 0,
                "output": out,
                "final": True,
                "prompt": "a city street seen from a car, at night, heavy rain " * 3,
                "source": f"/data/frames/s{i}.png",
            },
            sort_keys=True,
        )
    )
(root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
size = (root / "manifest.jsonl").stat().st_size
t = time.perf_counter()
inode = (root / "manifest.jsonl").stat().st_ino
_settle_manifests(root)
a = time.perf_counter() - t
rewritten = (root / "manifest.jsonl").stat().st_ino != inode
(root / "manifest.rank0.jsonl").write_text("\n".join(lines[: n // 2]) + "\n")
(root / "manifest.rank1.jsonl").write_text("\n".join(lines[n // 2 :]) + "\n")
(root / "manifest.jsonl").unlink()
t = time.perf_counter()
_settle_manifests(root)
b = time.perf_counter() - t
print(
    f"{n} lines, {size / 1e6:.0f} MB: lines only added {a:.2f} s (rewritten: {rewritten}); "
    f"merge of 2 rank files {b:.2f} s; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB"
)
shutil.rmtree(root)
