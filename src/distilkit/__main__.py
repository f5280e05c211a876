"""`python -m distilkit ...`: the same as the `distilkit` command."""

from distilkit.cli import main

raise SystemExit(main())
