"""`python -m lodestar.services.cli`."""

import sys

from lodestar.services.cli import main

sys.exit(main())
