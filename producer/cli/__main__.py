"""`python -m producer.cli` runs the CLI (tests and `tts-batch worker` use it)."""

import sys

from producer.cli import main

sys.exit(main())
