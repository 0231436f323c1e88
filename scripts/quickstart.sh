#!/usr/bin/env bash
# One command: install .venv, make a sample manifest, label it on a local Ray, query the result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PY=.venv/bin/python
R2P1D=.venv/bin/r2p1d
SAMPLE="${SAMPLE_DIR:-sample}"
rm -rf "$SAMPLE/out"
$R2P1D sample "$SAMPLE" --videos 4 --seconds 3 --bad >/dev/null
if $R2P1D fetch-weights >/dev/null 2>"$SAMPLE/weights.log"; then
  WEIGHTS=kinetics400
else
  WEIGHTS=random
  echo "NOTE: Kinetics-400 weights are not cached and cannot be downloaded here (no internet)."
  echo "      Falling back to model.weights=random: the labels below are MEANINGLESS; every row says so."
  echo "      To use the real weights: see $SAMPLE/weights.log"
fi
$R2P1D label "$SAMPLE/manifest.parquet" --output "$SAMPLE/out" \
  --set model.weights=$WEIGHTS --set ray.progress_bars=false --log-level WARNING
echo
echo "== r2p1d query: the current rows of the committed Delta tables (any Delta reader sees the same)"
$R2P1D query "$SAMPLE/out" "SELECT label, count(*) AS clips, round(avg(score), 4) AS avg_score, any_value(weights) AS weights FROM clips GROUP BY label ORDER BY clips DESC"
$R2P1D query "$SAMPLE/out" "SELECT video_id, status, num_clips, label, error FROM videos ORDER BY status DESC, video_id"
