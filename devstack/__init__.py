"""The local stack without Docker: `tts-batch up/down/ps` and the test harness's stacks.

Never imported by the worker."""
