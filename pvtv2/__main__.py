"""``python -m pvtv2``: the ``pvt`` command."""

import sys

from .cli.main import main

sys.exit(main())
