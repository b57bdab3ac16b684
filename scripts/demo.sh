#!/usr/bin/env bash
# `make demo`: start the local stack, synthesize examples/announcements.csv, fetch the audio.
# Usage: scripts/demo.sh [ENGINE] [MODEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${1:-espeak}
model_dir=${2:-}
bin=.venv/bin
export TTS_ENGINE="$engine"
if [ -n "$model_dir" ]; then
  export TTS_MODEL_DIR="$(cd "$model_dir" && pwd)"
fi
if [ "$engine" = cosyvoice ] && [ -z "$model_dir" ]; then
  echo "make demo ENGINE=cosyvoice needs MODEL_DIR=/path/to/CosyVoice-300M-SFT (see README)" >&2
  exit 2
fi

# A stack left running with another engine would serve this demo with the wrong one.
if $bin/tts-batch ps >/dev/null 2>&1; then
  running=$(cat .tts-stack/engine 2>/dev/null || true)
  if [ -n "$running" ] && [ "$running" != "$engine" ]; then
    echo "the running stack uses engine '$running': restarting it with '$engine'"
    $bin/tts-batch down
  fi
fi
$bin/tts-batch up
mkdir -p out
batch="demo-$(date +%Y%m%d-%H%M%S)"
set +e
$bin/tts-batch submit examples/announcements.csv --batch-id "$batch" --wait \
  --manifest "out/$batch.manifest.jsonl"
status=$?
set -e
$bin/tts-batch fetch "$batch" --to "out/$batch"
$bin/python -m producer.where "$batch"
exit $status
