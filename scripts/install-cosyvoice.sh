#!/usr/bin/env bash
# Install the CosyVoice-300M-SFT runtime, CPU only and pinned, into the venv given as $1.
# Usage: scripts/install-cosyvoice.sh VENV        (called by `make install-cosyvoice`)
#
# Why a script and not a pyproject extra: the only PyPI package carrying the upstream inference
# code (cosyvoice2-fr-infer) declares deepspeed, onnxruntime-gpu, numpy==1.26 and
# transformers==4.40.1, and torchaudio's Linux wheel is a CUDA build; pip cannot express
# "install without its dependencies" or "delete these CUDA libraries" in an extra.
# A stamp file keyed by this script's and the requirement file's hash makes reruns a no-op.
# TORCH_INDEX_URL (optional): a pip index serving the CPU build of torch, e.g. PyTorch's CPU
# wheel index; without it pip's configured source must serve a CPU build (checked below).
set -euo pipefail

venv="${1:?usage: $0 VENV}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
requirements="$here/cosyvoice-requirements.txt"
stamp="$venv/.cosyvoice-installed"
key="$(cat "${BASH_SOURCE[0]}" "$requirements" | sha256sum | cut -c1-16)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
  exit 0
fi

started=$SECONDS
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
py="$venv/bin/python"
pip=("$py" -m pip install -q --disable-pip-version-check)

# pyworld (imported by the model config's data pipeline) ships only an sdist: it is built here
# without build isolation against setuptools<81, which still has pkg_resources.
"${pip[@]}" --upgrade 'pip>=24' 'setuptools<81' wheel 'cython<4' numpy==2.4.6

# torch: the CPU build. A plain `pip install torch` elsewhere fetches a CUDA build of several GB.
"${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0
if ! "$py" -c 'import sys, torch; sys.exit(torch.version.cuda is not None)'; then
  echo "install-cosyvoice: torch is a CUDA build; set TORCH_INDEX_URL to a CPU wheel index" >&2
  exit 1
fi

"${pip[@]}" --no-deps --no-build-isolation pyworld==0.3.5

# The runtime set; the constraint keeps the CPU torch in place.
constraint="$(mktemp)"
trap 'rm -f "$constraint"' EXIT
echo "torch==2.13.0" >"$constraint"
"${pip[@]}" -c "$constraint" -r "$requirements"

# Last, so that pip's conflict report does not list their declared pins at every step:
# upstream code and the whisper tokenizer without their declared (GPU, training) dependencies.
"${pip[@]}" --no-deps cosyvoice2-fr-infer==0.1.5 openai-whisper==20250625 torchaudio==2.11.0

# torchaudio 2.11.0's Linux wheel links CUDA libraries: drop its compiled extensions. CosyVoice
# v1 uses only pure-Python parts (compliance.kaldi.fbank, transforms.Resample).
site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -f "$site/torchaudio/lib/_torchaudio.abi3.so" "$site/torchaudio/lib/libtorchaudio.abi3.so" \
  "$site/torchaudio/lib/torchaudio_prefixctc.abi3.so"

# Refuse GPU stacks that a dependency might have pulled in.
if "$py" -m pip list --format=freeze 2>/dev/null |
  grep -iE '^(nvidia-|onnxruntime-gpu|deepspeed|tensorrt|triton)'; then
  echo "install-cosyvoice: GPU packages found in $venv (listed above)" >&2
  exit 1
fi

# The two --no-deps packages declare pins that are knowingly unmet (GPU, training, old numpy
# and transformers); any other conflict means this set broke a package of the project.
conflicts="$("$py" -m pip check 2>/dev/null | grep -vE '^(cosyvoice2-fr-infer|openai-whisper) ' || true)"
if [[ -n "$conflicts" && "$conflicts" != "No broken requirements found." ]]; then
  echo "install-cosyvoice: dependency conflicts in $venv:" >&2
  echo "$conflicts" >&2
  exit 1
fi

"$py" -c 'import torchaudio.compliance.kaldi, cosyvoice.cli.cosyvoice, whisper.tokenizer' \
  >/dev/null
echo "$key" >"$stamp"
echo "install-cosyvoice: CosyVoice runtime installed in $venv in $((SECONDS - started)) s"
