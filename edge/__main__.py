"""`python -m edge` runs the edge agent (same as `der-edge`)."""

import sys

from edge.cli import main

sys.exit(main())
