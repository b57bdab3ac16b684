#!/bin/sh
# Entrypoint of the Compose stack's S3 service: writes SeaweedFS's identities file from the S3
# keys in the environment, then runs `weed` with the given arguments. Written at every start,
# so compose/.env stays the one place the keys live (no file to make by hand) and a changed key
# takes effect on the next `up`.
# POSIX sh: the chrislusf/seaweedfs image is Alpine (busybox sh), the test harness runs dash.
set -eu

identities="${SEAWEEDFS_IDENTITIES:-/etc/seaweedfs/identities.json}"

# One line naming the variable, then exit 78 (EX_CONFIG), the code the workers use for bad
# configuration: a supervisor should not restart into the same error.
check_key() {
  name="$1"
  value="$2"
  if [ -z "$value" ]; then
    echo "s3 entrypoint: $name is empty: set it in compose/.env" >&2
    exit 78
  fi
  # The value goes into JSON as it is: refuse the two characters that would need escaping.
  case "$value" in
    *\"* | *\\*)
      echo "s3 entrypoint: $name contains a quote or a backslash: choose another key" >&2
      exit 78
      ;;
  esac
}

check_key TTS_S3_ACCESS_KEY "${TTS_S3_ACCESS_KEY:-}"
check_key TTS_S3_SECRET_KEY "${TTS_S3_SECRET_KEY:-}"

umask 077
mkdir -p "$(dirname "$identities")"
# Renamed into place, so that a server never reads half a file.
printf '{"identities": [{"name": "tts", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}\n' \
  "$TTS_S3_ACCESS_KEY" "$TTS_S3_SECRET_KEY" >"$identities.tmp"
mv "$identities.tmp" "$identities"

exec weed "$@"
