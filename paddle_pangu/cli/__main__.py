"""`python -m paddle_pangu.cli ...`: the `pangu` command."""
import sys

from . import main

sys.exit(main())
