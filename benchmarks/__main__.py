"""`make bench` / `python -m benchmarks`: every benchmark with its ceiling measured in the same run."""

import sys

from benchmarks.harness import main

sys.exit(main())
