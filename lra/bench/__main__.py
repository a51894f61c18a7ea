"""`python -m lra.bench`: the efficiency table (see lra/bench/efficiency.py)."""

import sys

from lra.bench.efficiency import main

sys.exit(main())
