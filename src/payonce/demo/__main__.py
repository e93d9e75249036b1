"""``python -m payonce.demo``: see ``payonce.demo``."""

import sys

from payonce.demo import main

sys.exit(main())
