"""``python -m lvlm_studio``: the same as the ``lvlm-studio`` command."""

import sys

from lvlm_studio.cli import main

sys.exit(main())
