"""`python -m gptlab VERB ...` (and `torchrun ... -m gptlab train ...`) run the CLI."""

import sys

from gptlab.cli.main import main

sys.exit(main())
