"""`python -m cd_dspy.cli`."""

import sys

from cd_dspy.cli.main import main

sys.exit(main())
