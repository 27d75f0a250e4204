"""`python -m heapd` is the `heapd` command."""

import sys

from heapd.cli.main import main

sys.exit(main())
