"""`python -m issuer` is `tripkey-issuer`."""

import sys

from issuer.cli import main

sys.exit(main())
