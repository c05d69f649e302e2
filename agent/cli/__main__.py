"""``python -m agent.cli``: the same as the ``autoscope`` console script."""

import sys

from agent.cli import main

sys.exit(main())
