"""`python -m appliance` is the `hes` command."""

import sys

from appliance.cli import main

sys.exit(main())
