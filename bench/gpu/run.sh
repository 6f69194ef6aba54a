#!/usr/bin/env bash
# One session on a GPU machine (Python and a CUDA torch, no package index, minutes of use): the training
# correctness checks, then the MFU benchmark of the pythia-410m and 1b shapes compiled. Each part has its own time
# limit and writes its figures under $OUT as it goes, so a part cut short keeps what it measured and the next part
# still runs. At most 590 s of parts in all.
#
#   .venv/bin/python bench/gpu/wheels.py           # here: the wheels to bring, into .gpu-wheels (~54 MiB)
#   OUT=/tmp/out bash bench/gpu/run.sh             # there, with .gpu-wheels carried along
#   OUT=/tmp/out REHEARSE=1 PYTHON=... WHEELS=... bash bench/gpu/run.sh   # the same parts on this CPU, tiny shape
#
# PACK=DIR: after each part, every file of $OUT packed into DIR/results.tgz beside copies of the three summaries
# (for a machine that hands back only a few files, such as this project's lent device: DIR is its $OUT there).
set -u
PYTHON=${PYTHON:-python3}
OUT=${OUT:?set OUT to the folder for the figures}
WHEELS=${WHEELS:-.gpu-wheels}
SITE=${SITE:-$(mktemp -d)}  # the wheels go here, ahead of the machine's own packages on PYTHONPATH
mkdir -p "$OUT"

# Wheels for another Python would fail one import at a time, minutes in: check the tag before anything runs.
TAG=$("$PYTHON" -c 'import sys; print("cp%d%d" % sys.version_info[:2])') || exit 2
if ! ls "$WHEELS"/pydantic_core-*-"$TAG"-*.whl >/dev/null 2>&1; then
  echo "no wheels for this Python ($TAG) in $WHEELS: make them with bench/gpu/wheels.py --python-version X.Y" >&2
  exit 2
fi
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.is_available())' \
  | tee "$OUT/torch.txt"

# pip without the index or dependency resolution (torch is the machine's own), nor byte-compiling all of
# transformers (imports compile what they use); unzipped by hand where pip is absent
if ! "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl \
  >"$OUT/install.log" 2>&1; then
  echo "pip install failed (see install.log); unzipping the wheels instead" | tee -a "$OUT/install.log"
  for wheel in "$WHEELS"/*.whl; do "$PYTHON" -m zipfile -e "$wheel" "$SITE" || exit 1; done
fi
export PYTHONPATH="$PWD:$SITE"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
command -v nvidia-smi >/dev/null && nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1

LOSS=ce=liger ROPE=,rope=liger
if [ -n "${REHEARSE:-}" ]; then  # liger-kernel needs a GPU: its levers become the chunked loss (or nothing) here
  LOSS=ce=chunked ROPE=
  CHECKS=(--device cpu)
  BENCH=(--rehearse --steps 8)
  M410=configs/model/pythia-14m.yml M1B=configs/model/pythia-14m.yml
else
  CHECKS=()
  BENCH=(--steps 15)  # the median of the 10 steps after 5 warm-up ones
  M410=configs/model/pythia-410m.yml M1B=configs/model/pythia-1b.yml
fi
LIGER=$LOSS${ROPE:+,ln=liger$ROPE},adamw=fused  # every liger kernel, uncompiled: pile-pythia-160m's default

PORT=29600
part() {  # NAME LIMIT_SECONDS COMMAND...: the command's output in $OUT/NAME.log, its tail here
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s)"
  local started=$SECONDS
  PORT=$((PORT + 1))  # a fresh rendezvous port per part: the last one's may still be closing
  MASTER_PORT=$PORT timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "   exit $? after $((SECONDS - started)) s"
  grep -v -i -E "warn|^\[rank[0-9]+\]:W" "$OUT/$name.log" | tail -n 30  # torch logs warnings by rank, tracebacks too
  if [ -n "${PACK:-}" ]; then
    tar czf "$PACK/results.tgz" -C "$OUT" .
    for summary in checks.json train_step.md profile_pythia-410m.txt; do
      [ -f "$OUT/$summary" ] && cp "$OUT/$summary" "$PACK/"
    done
  fi
}

# Most telling first within each part, as a part cut short by its limit keeps only what came before. The
# sessions of 2026-12-04 (README) measured every lever uncompiled, and found compile on torch 2.11 drops liger's
# LayerNorm (NaN losses: the compiled rows they timed are void). What is left to measure is compile without it:
# liger's loss compiled (compile fuses the LayerNorms itself), with its compiled bare twin for (c)/(b), then with
# liger's rotary as well. Compiling a shape took 45-80 s; the checks take about two minutes.
# Whether this torch's compile can analyse liger's kernels (torch 2.11 could not its LayerNorm's): seconds. Not
# rehearsed: it needs triton, which only a CUDA torch brings.
[ -z "${REHEARSE:-}" ] && part analysis 20 "$PYTHON" bench/gpu/liger_compile_analysis.py
part checks 185 "$PYTHON" bench/gpu_checks.py --out "$OUT" "${CHECKS[@]}"
part bench-410m 230 "$PYTHON" bench/train_step.py --device cuda --out "$OUT" --model "$M410" "${BENCH[@]}" \
  --profile "engine:$LOSS,adamw=fused,compile" --variants "engine:$LOSS,adamw=fused,compile" "bare:$LOSS,compile" \
  "engine:$LOSS$ROPE,adamw=fused,compile" "engine:$LIGER" "engine:$LOSS,adamw=fused,compile,mb=32"
# The memory levers no session reached (each ~10 s, uncompiled): against "engine:$LIGER" above
part levers-410m 60 "$PYTHON" bench/train_step.py --device cuda --out "$OUT" --model "$M410" "${BENCH[@]}" \
  --variants "engine:$LIGER,mb=32" "engine:$LIGER,zero=2" "engine:$LIGER,ckpt" "engine:$LIGER,mb=8"
part bench-1b 95 "$PYTHON" bench/train_step.py --device cuda --out "$OUT" --model "$M1B" "${BENCH[@]}" \
  --variants "engine:$LOSS,adamw=fused,compile" "bare:$LOSS,compile" "engine:$LOSS$ROPE,adamw=fused,compile"
ls -la "$OUT"
