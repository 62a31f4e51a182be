#!/usr/bin/env bash
# One short GPU lease for default-model training (issue 8): what travels, and what runs there.
#
#   bash bench/gpu_lease.sh prepare      # here, venv active: .gpu/ (train store, probe set), .whl/ (monai)
#   run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#         --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; \
#         BUDGET=430 RECIPES='gpu-small-staged-b256' bash bench/gpu_lease.sh train",
#       carry=[".gpu", ".whl"], timeout_s=570)
#
# `train` runs bench/gpu_train.py for BUDGET seconds and leaves in $OUT (at most 8 files come back): the log,
# summary.json, each recipe's points, the best recipe's best model as a tar (copy its folder into a store's
# models/), and that recipe's last run folder (checkpoint with optimiser) split into 15 MB parts.
# Recipes starting from a registered model (init_from) need it in .gpu/train/models/ (~9 MB each).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
  EXP=${EXP:-/tmp/gpu-lease}
  mkdir -p "$EXP" .gpu
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || printf '/.gpu/\n/.whl/\n' >> .git/info/exclude
  [ -d "$EXP/train" ] || { latentstore synth "$EXP/train_arch" --patients 300 --seed 0 &&
                           latentstore ingest "$EXP/train_arch" --store "$EXP/train"; }
  [ -d "$EXP/bench" ] || { latentstore synth "$EXP/bench_arch" --patients 80 --seed 3 &&
                           latentstore ingest "$EXP/bench_arch" --store "$EXP/bench"; }
  keep=$(mktemp -d)  # models registered in .gpu/train (init_from of the next recipes) survive a rebuild
  [ -d .gpu/train/models ] && cp -r .gpu/train/models "$keep/"
  rm -rf .gpu/train && cp -r "$EXP/train" .gpu/train
  if [ -d "$keep/models" ]; then mkdir -p .gpu/train/models && cp -r "$keep/models/." .gpu/train/models/; fi
  rm -rf "$keep"
  python bench/gpu_train.py --export-probe .gpu/probe.npz --probe-store "$EXP/bench" \
    --labels "$EXP/bench_arch/ground_truth.csv"
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform any -d .whl "monai==$(python -c 'import monai; print(monai.__version__)')"
  du -sh --apparent-size .gpu .whl
  ;;
train)
  : "${OUT:?run this on the device machine (OUT is its result folder)}"
  export PYTHONUNBUFFERED=1
  RECIPES=${RECIPES:-gpu-small-staged-b128 gpu-small-staged-b256}
  T=/tmp/gt
  nvidia-smi -L || true
  # shellcheck disable=SC2086
  python3 bench/gpu_train.py --train-store .gpu/train --probe-npz .gpu/probe.npz --out $T --budget "${BUDGET:-430}" \
    --probe-budget 50 --every "${EVERY:-64000}" --workers "${WORKERS:-12}" --device "${DEVICE:-cuda}" $RECIPES 2>&1 | tee "$OUT/log.txt"
  cp $T/summary.json "$OUT/"
  for r in $RECIPES; do cat $T/$r/points.jsonl $T/$r/train.log >> "$OUT/recipes.txt" 2>/dev/null || true; done
  best=$(python3 -c "import json;b=json.load(open('$T/summary.json')).get('best',{});print(max(b,key=lambda k:b[k]['auc']) if b else '')")
  echo "best recipe: ${best:-none}"
  [ -n "$best" ] || exit 0
  cp "$T/best-$best.tar" "$OUT/"
  run=run; [ -d "$T/$best/run2" ] && run="run2 stage2.json"
  # shellcheck disable=SC2086
  tar -C "$T/$best" -cf - $run | split -b 15m - "$OUT/ckpt-$best.tar.part-"
  ls -la "$OUT"
  ;;
*)
  sed -n '2,16p' "$0"
  exit 2
  ;;
esac
