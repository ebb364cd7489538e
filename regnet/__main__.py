"""python -m regnet: the regnet command."""

from .cli import main

raise SystemExit(main())
