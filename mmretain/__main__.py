"""`python -m mmretain` is the `mmretain` command."""

import sys

from .cli import main

sys.exit(main())
