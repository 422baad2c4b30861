#!/usr/bin/env bash
# The GPU part of the performance plan (an H100 or H200). A task lent a GPU has 15 minutes of device time in all,
# the machine's start included, so the plan is two parts in priority order: `core` takes the figures the targets
# still need; `extra` follows in the same call or the next, and each step that would not finish is skipped
# (DEADLINE). Full-size architectures with random weights: no download is needed.
# Times on an H200 (2026-11-26, benchmarks/run_gpu-*-nvidia-h200.log): the machine's start 40 s; dataset 182 s
# with its compile failing at warm-up (a working one adds about a minute), lowvram-sd15 41 s, lowvram-sdxl 67 s to
# its failure, latency 139 s; the b16 default-compile run did 2 of 3 repeats in 192 s. On an H100 (2026-11-27):
# lowvram-sdxl 94 s; latency (reduce-overhead, working) 75 s with inductor's cache warm from a first call, which,
# cold, had not finished the old core's four steps (latency, lowvram-sdxl, latency-cpp, dataset) at 520 s. On an H100
# (2026-11-27, a second session, cold): the machine's start about 33 s, dataset 254 s, dataset-default 210 s; warm,
# window-b16 143 s, cache3-b16 2 of 3 repeats in 151 s. On an H100 (2026-11-27, a third session, cold): the
# machine's start about 31 s; dataset-fp16 248 s, dataset-mm 241 s, then compile-default-b16-no-cl 258 s.
# Each bench line writes JSON + a markdown table to benchmarks/ named after the device; the README quotes them.
#
#   bash benchmarks/run_gpu.sh wheels             # HERE, where PyPI is reachable: pure-Python wheels that the
#                                                 # GPU image lacks (diffusers; transformers/regex at our versions)
#                                                 # into .gpu-wheels/ (git-ignored; name it in the device's carry)
#   DEADLINE=500 bash benchmarks/run_gpu.sh core  # ON THE GPU: dataset mode with what could still lift it to the
#                                                 # target: against a compiled-only baseline, a scheduler that
#                                                 # never waits for the GPU, cuDNN's benchmark mode,
#                                                 # FlashAttention first; then 32 images per call, DPM-Solver++,
#                                                 # diffusers' tuning recipe, inductor's freezing, the max-autotune
#                                                 # mode; each run has plain diffusers as a row too
#                                                 # (--compiled-only: no eager rows)
#   DEADLINE=N bash benchmarks/run_gpu.sh extra   #   depth estimators, batch 1 with the C++ wrapper, xformers;
#                                                 #   then the steps measured already (ControlNet window, feature
#                                                 #   cache, low-VRAM peaks, batch-1 latency, dataset mode with each
#                                                 #   compile mode, fp16, the 1x1 setting, no channels-last)
#   bash benchmarks/run_gpu.sh                    #   both parts, in that order
#
# Environment: PEAK=989 gives the datasheet's dense bf16 TFLOP/s instead of a measured matmul; DEADLINE=N: no
# step starts later than N - MIN_STEP (default 45) seconds after the script began, and a running step is cut at
# N (TERM, then KILL after KILL_AFTER, default 15, seconds; the log lists what was done, cut, failed or skipped);
# RESULTS=DIR writes there instead of benchmarks/; SMOKE=1 runs every step at tiny size into a scratch folder (a
# CPU check of this script). With $OUT set (the device tool's output folder) the files each part wrote, and its
# log, come back as $OUT/bench-PART.tar.gz, renewed after each step (a call cut at its limit returns the steps
# done). Give the device call a limit of DEADLINE + KILL_AFTER + 20 s or more, and pipe nothing into `tail`
# (killed at the call's limit, it prints nothing). Back here:
#   tar xzf bench-PART.tar.gz -C benchmarks
set -uo pipefail
# inductor logs why it runs a graph without CUDA graphs in a mode meant to capture them (the bench's table counts
# such graphs; the reasons come back in the log)
export TORCH_LOGS=${TORCH_LOGS-perf_hints}
cd "$(dirname "$0")/.."
root=$PWD
started=$SECONDS
deadline=${DEADLINE:-0}

if [[ ${1:-} == wheels ]]; then
  set -e
  py=${PYTHON:-python}
  versions=$("$py" -c 'import importlib.metadata as m; print(*(f"{p}=={m.version(p)}" for p in ("diffusers", "transformers", "regex")))')
  read -r diffusers transformers regex <<<"$versions"
  rm -rf .gpu-wheels && mkdir .gpu-wheels
  "$py" -m pip download -q --no-deps -d .gpu-wheels "$diffusers" "$transformers"
  # The GPU image's Python is 3.12 on x86_64; regex is compiled.
  "$py" -m pip download -q --no-deps -d .gpu-wheels --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$regex"
  ls -l .gpu-wheels
  exit 0
fi

# Every step: its label and its bench arguments. A part is a list of labels in priority order; a label can also be
# named on its own (a step that a part's deadline skipped, run in the next call).
declare -A STEP=(
  # Targets: dataset mode >= 45 % of bf16 peak, >= 19,000 images/hour on an H100, >= 3x plain diffusers one image
  # per call; batch 1 >= 2x plain diffusers; low-VRAM peaks SD1.5 + ControlNet < 4 GB, SDXL < 8 GB. Each speed run
  # has the eager fast path and the compiled one (CUDA graphs: shapes are static) as rows (--compiled-only: plain
  # diffusers batched and the compiled one); a compile failure drops its row only. Peak memory does not depend on
  # the number of steps: 10 suffice. Two repeats at batch 16: on the
  # H200 its batched rows moved by under 1.2 % between repeats (diffusers-b1 by up to 28 %, far from the 3x line).
  # Five at batch 1, which is bound by Python and kernel launches there: its eager rows moved by up to 64 %.
  # Dataset mode's two compile modes are two steps, each on its own baseline: a cold compile at batch 16 takes
  # minutes, and a step cut at the deadline loses its rows.
  [dataset]="--batch 16 --compile reduce-overhead --repeats 2"
  # Dataset mode on the H100 (2026-11-27) was 197.4 ms/image with either mode, 18,233 images/hour, 43.6 % of the
  # measured peak: short of the target. The compiler settings diffusers' own speed-up guide gave for SD-class
  # UNets, first the one that turns the UNet's many 1x1 convolutions (attention projections, ResNet shortcuts) into
  # matrix products, then its whole recipe (that, coordinate-descent tuning of the kernels' tile sizes in all
  # directions, and no epilogue fusion), each measured on its own (--inductor: on top of the mode's own settings)
  [dataset-mm]="--batch 16 --compile reduce-overhead --inductor conv_1x1_as_mm=True --repeats 2"
  # the fast path in fp16, the library's own default dtype on a GPU (the rows above are bf16, the bench's default
  # fast dtype): what a user's --compile runs. Measured on an H100 (2026-11-27, a third session; each against
  # its own run's plain diffusers, 300-302 ms/image there against 297 in the first): fp16 202.2 ms/image, the
  # 1x1-convolution setting 200.7, the default mode without channels-last 202.5: none faster than 197.4
  [dataset-fp16]="--batch 16 --compile reduce-overhead --fast-dtype float16 --repeats 2"
  # core's settings: --compiled-only leaves out the rows no setting changes (about 75 s of a 250 s step on the H100)
  [dataset-tuned]="--batch 16 --compile reduce-overhead --inductor conv_1x1_as_mm=True --inductor coordinate_descent_tuning=True --inductor coordinate_descent_check_all_directions=True --inductor epilogue_fusion=False --repeats 2 --compiled-only"
  # inductor's freezing: the weights as constants, so it can fold them and lay out the convolutions' weights once
  # (torch's advice for inference; not in diffusers' guide)
  [dataset-freezing]="--batch 16 --compile reduce-overhead --inductor freezing=True --repeats 2 --compiled-only"
  # dataset mode with 32 images per call (batch 16 ran at 44 % of the peak: bigger matrix products may fill the
  # GPU better; --batch-size 32 in a user's batch job)
  # (--profile: how much of a call the GPU waits on the host, e.g. UniPC's per-step copies of CPU sigmas to the GPU,
  # each a host sync, between CUDA-graph replays)
  [dataset-b32]="--batch 32 --compile reduce-overhead --repeats 2 --compiled-only --profile"
  # core's baseline for the steps after it, which change one setting each: dataset mode as measured first
  # (bf16, reduce-overhead, UniPC, PyTorch's attention order), compiled-only, with the GPU's busy share at batch 16.
  # Since 2026-11-28 the compiled row runs depth2img's UniPC (scalars on the CPU, no host wait after a call's first
  # step; plain diffusers keeps its own); --diffusers-unipc times the same compiled pipeline again with diffusers'
  # UniPC (no compile of its own: about 5 calls, 16 s): the two rows' ms/image and --profile's host waits measure
  # that change in one run (the loop's it/s too: it is taken in the timed calls, no longer in one synchronised at
  # each step). Also since then depth2img's rows cast and round the decoded images on the GPU (the host only copies
  # them; no twin row measures that alone)
  [dataset-base]="--batch 16 --compile reduce-overhead --repeats 2 --compiled-only --profile --diffusers-unipc"
  # Every row with DPM-Solver++ (2M), diffusers' own, in place of UniPC. diffusers' UniPC waits for the GPU seven
  # times a step (six CPU sigmas copied to it one by one; a 2x2 solve's error check) and runs about 150 small ops
  # (2-core development CPU, torch.profiler, batch 16's latents: 5.4 ms a step there); depth2img's UniPC, in
  # depth2img's rows since 2026-11-28, waits once a call and runs its scalar ops on the CPU, as DPM-Solver++ does. Its
  # images differ (another sampler). Its plain row against dataset-base's: what diffusers' UniPC costs plain
  # diffusers; its compiled row against dataset-base's: what depth2img's UniPC still costs (SGLang removed such waits
  # from its UniPC in 2026: 1.8 % of an H200's denoising time)
  [dataset-dpm]="--batch 16 --compile reduce-overhead --scheduler dpm++ --repeats 2 --compiled-only --profile"
  # SDPA trying FlashAttention 2's kernels first: on the H100 (torch 2.11) the compiled UNet and ControlNet ran
  # cuDNN's attention (run_gpu-core-nvidia-h100.log: aten._scaled_dot_product_cudnn_attention), which PyTorch
  # prefers there; FlashAttention first elsewhere. Which serves SD1.5's shapes faster (heads 40, 80 and 160 wide;
  # by a count of their matrix products, attention is about 15 % of the FLOPs at 512x512) is not measured. Judged
  # against dataset-base's compiled row, and by the speed-up on each run's own plain diffusers
  [dataset-flash]="--batch 16 --compile reduce-overhead --attention sdpa-flash --repeats 2 --compiled-only"
  # cuDNN's benchmark mode: each convolution shape's first call times cuDNN's algorithms and keeps the fastest, where
  # PyTorch's default lets a heuristic pick (the captured CUDA graphs keep what the warm-up chose). Convolutions,
  # which the compiled graphs leave to cuDNN, are 53.5 % of a denoising step's FLOPs (SD1.5 UNet + ControlNet, 512x512,
  # batch 16 with CFG, torch.utils.flop_counter on the meta device; matrix products the rest). Judged against
  # dataset-base's compiled row, and by the speed-up on each run's own plain diffusers
  [dataset-cudnn]="--batch 16 --compile reduce-overhead --cudnn-benchmark --repeats 2 --compiled-only"
  [dataset-default]="--batch 16 --compile default --repeats 2"
  [latency]="--batch 1 --compile reduce-overhead --repeats 5"
  # batch 1 without CUDA graphs, kernels launched from C++ rather than Python: the second way to the 2x, should
  # CUDA graphs fail again (a step of its own: a long C++ compile cannot take the CUDA-graph row down with it)
  [latency-cpp]="--batch 1 --compile cpp-wrapper --repeats 5"
  [lowvram-sd15]="--low-vram --repeats 1 --steps 10"
  [lowvram-sdxl]="--backbone sdxl --low-vram --repeats 1 --steps 10"
  # torch.compile's mode chosen by measurement: the two other modes, against reduce-overhead's rows in core
  # what channels-last brings to the compiled path (the eager fast path, with it, was 6.5 % slower than plain
  # fp16 diffusers at batch 16 on the H200, 7-9 % on an H100, and 0.8 % faster without it; so it is now the
  # default only where compiled)
  [compile-default-b16-no-cl]="--batch 16 --compile default --no-channels-last"
  [window-b16]="--batch 16 --control-end 0.8"
  [cache3-b16]="--batch 16 --feature-cache 3"
  [depth]="--depth --batch 16"
  [compile-mat-b16]="--batch 16 --compile max-autotune-no-cudagraphs --compiled-only"
  [xformers-b1]="--batch 1 --attention xformers"
)
declare -A PART=(
  # Met on an H100: batch 1 (3.28x with CUDA graphs) and SDXL's group-offload peak (5.19 GiB), 2026-11-27; SD1.5's
  # low-VRAM peak on the H200. Short: dataset mode (18,233 images/hour, 43.6 % of the measured peak, H100
  # 2026-11-27): core is what could still lift it (fp16, the 1x1 setting and no channels-last did not); extra the
  # steps never run, then those run already
  [core]="dataset-base dataset-cudnn dataset-flash dataset-b32 dataset-dpm dataset-tuned dataset-freezing compile-mat-b16"
  [extra]="depth latency-cpp xformers-b1 window-b16 cache3-b16 lowvram-sd15 latency lowvram-sdxl dataset dataset-default dataset-fp16 dataset-mm compile-default-b16-no-cl"
)
parts=("$@")
[[ ${#parts[@]} -eq 0 ]] && parts=(core extra)
for part in "${parts[@]}"; do
  if [[ -z ${PART[$part]:-} && -z ${STEP[$part]:-} ]]; then
    echo "run_gpu.sh: unknown part or step '$part' (core, extra, wheels, or a step: ${!STEP[*]})" >&2
    exit 2
  fi
done

# depth2img from this checkout: the installed command if there is one, else the package on PYTHONPATH.
if command -v depth2img >/dev/null; then
  d2i=(depth2img)
else
  if compgen -G ".gpu-wheels/*.whl" >/dev/null; then
    # Into a folder of their own, ahead of the image's packages on PYTHONPATH (the image's environment may be
    # read-only; its torch stays): the device notes' recipe.
    site=${GPU_SITE:-/tmp/d2i-site}
    echo "== installing the carried wheels into $site (no dependencies: the image's torch stays)"
    for w in .gpu-wheels/*.whl; do
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$w" \
        || echo "== not installed: $w" >&2
    done
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
  d2i=(python3 -m depth2img)
  python3 - <<'EOF' || true
import importlib.metadata as m
import torch
print("== torch", torch.__version__, "CUDA", torch.version.cuda, "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
print("==", ", ".join(f"{p} {m.version(p)}" for p in ("diffusers", "transformers", "accelerate", "huggingface_hub", "tokenizers")))
EOF
fi
common=(${PEAK:+--peak-tflops "$PEAK"})
results=${RESULTS:-benchmarks}
smoke=()
if [[ -n ${SMOKE:-} ]]; then # tiny sizes; tables go to a scratch folder, never over the committed ones
  # after each step's own arguments, so that its --steps/--repeats do not undo them (the last one wins)
  smoke=(--preset tiny --size 64 --steps 2 --repeats 1)
  results=${RESULTS:-$(mktemp -d)}
fi
mkdir -p "$results"
common+=(-o "$results")

step() { # step LABEL ARGS...: one bench line, cut at the deadline; a failure is logged and the plan goes on
  local label=$1 limit=()
  shift
  if ((deadline > 0)); then
    local left=$((deadline - (SECONDS - started)))
    if ((left < ${MIN_STEP:-45})); then
      echo "== SKIPPED (deadline): $label"
      return
    fi
    # TERM at the deadline, KILL (to the step's whole process group) KILL_AFTER seconds later: on the H100
    # (2026-11-27) a step TERMed at the deadline of a cold-cache compile run had not ended 60 s later, so the
    # device call ran out at its own limit
    limit=(timeout -k "${KILL_AFTER:-15}" "$left")
  fi
  echo "== $label: ${d2i[*]} bench ${common[*]} $* ${smoke[*]}"
  local t=$SECONDS rc=0
  "${limit[@]}" "${d2i[@]}" bench "${common[@]}" "$@" "${smoke[@]}" || rc=$?
  if ((rc == 0)); then
    echo "== done: $label ($((SECONDS - t)) s)"
  else
    echo "== FAILED: $label (exit $rc$( ((rc == 124 || rc == 137)) && echo ', cut at the deadline'), $((SECONDS - t)) s)"
  fi
  archive "$part"
}

archive() { # archive PART: with $OUT set, the files the part has written so far, as one file there (the device
  # tool returns at most 8), renewed after each step, so that a call cut at its own limit still returns them
  [[ -n ${OUT:-} ]] || return 0
  find "$results" -maxdepth 1 -newer "$part_stamp" -type f \( -name '*.json' -o -name '*.md' -o -name '*.log' \) \
    -printf '%P\n' | tar czf "$OUT/bench-$1.tar.gz.part" -C "$results" -T - && mv "$OUT/bench-$1.tar.gz.part" "$OUT/bench-$1.tar.gz"
}

stamp=$(mktemp)
logs=()
part_stamp=$(mktemp)
for part in "${parts[@]}"; do
  touch "$part_stamp" # each part's tarball holds the files that part wrote, not the earlier parts' too
  log=$results/run_gpu-$part.log
  logs+=("$log")
  {
    for label in ${PART[$part]:-$part}; do
      if [[ $label == xformers-* ]] && ! python3 -c "import xformers" 2>/dev/null; then
        echo "== SKIPPED (xformers is not installed): $label"
        continue
      fi
      # shellcheck disable=SC2086  # the arguments are words
      step "$label" ${STEP[$label]}
    done
  } 2>&1 | tee "$log"
  archive "$part" # once more, with the log's last lines
done
echo
echo "== tables written in $results ($((SECONDS - started)) s in all):"
find "$results" -maxdepth 1 -newer "$stamp" -name '*.md' -print | sort | while read -r f; do
  echo "-- $f"
  cat "$f"
done
grep -h "^== \(done\|FAILED\|SKIPPED\)" "${logs[@]}"
rm -f "$stamp" "$part_stamp"
