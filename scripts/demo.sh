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
  echo "make demo ENGINE=cosyvoice needs MODEL_DIR=/path/to/CosyVoice-300M-SFT (see docs/cosyvoice.md)" >&2
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
prom="http://127.0.0.1:19090"
# rate() needs a sample from before the jobs: wait until Prometheus has scraped the workers'
# zeroed counters (pushed before `up` returned), i.e. a sample newer than now.
since=$(date +%s)
for _ in $(seq 40); do
  curl -fsS "$prom/api/v1/query" --data-urlencode "query=count(timestamp(tts_tasks_total) > $since)" \
    2>/dev/null | grep -q '"result":\[{' && break
  sleep 0.5
done
mkdir -p out
batch="demo-$(date +%Y%m%d-%H%M%S)"
set +e
$bin/tts-batch submit examples/announcements.csv --batch-id "$batch" --wait \
  --manifest "out/$batch.manifest.jsonl"
status=$?
set -e
$bin/tts-batch fetch "$batch" --to "out/$batch"
# One announcement in three renditions (PA 48 kHz at -16 LUFS, IVR 8 kHz, MP3): one synthesis,
# the other two made from its stored master.
set +e
$bin/tts-batch submit examples/renditions.csv --batch-id "$batch-renditions" --wait --quiet
rendition_status=$?
set -e
$bin/tts-batch fetch "$batch-renditions" --to "out/$batch-renditions" --quiet
echo
echo "One announcement, three renditions (measured from the files):"
$bin/python -m devstack.audio_report "out/$batch-renditions"
[ "$rendition_status" -eq 0 ] || status=$rendition_status
# Two more scrapes (5 s apart) so that the dashboard shows the batch, then draw it.
sleep 11
$bin/tts-batch dashboard --prometheus "$prom" --minutes 5 --out "out/$batch.dashboard.png" >/dev/null \
  || echo "(dashboard not drawn: is Prometheus up?)"
$bin/python -m devstack.where "$batch"
exit $status
