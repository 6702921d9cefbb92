"""`python -m services.cli`: the `vigil` command."""
import sys

from services.cli import main

sys.exit(main())
