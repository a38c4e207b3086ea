"""``python -m llsupervise``: the command line."""

import sys

from llsupervise.cli import main

sys.exit(main())
