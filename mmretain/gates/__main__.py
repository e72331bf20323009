"""``python -m mmretain.gates``: the ``train-gates`` command."""

from .cli import main

raise SystemExit(main())
