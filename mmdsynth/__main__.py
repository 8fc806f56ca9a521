"""``python -m mmdsynth``: the same CLI as the ``mmdsynth`` console script."""

import sys

from mmdsynth.cli import main

sys.exit(main())
