"""`python -m agent` is `tripkey-agent`."""

import sys

from agent.cli import main

sys.exit(main())
