"""`python -m distilkit.batch`: the same command as `distilkit batch`."""

import sys

from .cli import main

sys.exit(main())
