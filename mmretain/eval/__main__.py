"""`python -m mmretain.eval` is `mmretain eval`."""

import sys

from .cli import main

sys.exit(main())
