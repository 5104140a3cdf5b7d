"""`python -m drawdown` is the `drawdown` command."""

from drawdown.cli import main

raise SystemExit(main())
