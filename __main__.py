"""`python -m gru4rec ...` with the installed package: the same command line as `gru4rec ...` (run.py)."""
import sys

from .run import main

sys.exit(main())
