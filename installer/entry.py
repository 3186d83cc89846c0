"""The bundle's program: the ``lvlm-studio`` command, exactly as pip's console script runs it.

No arguments open the app; ``ask``, ``explain`` and every other subcommand run headless.
"""

import multiprocessing
import sys

from lvlm_studio.__main__ import run

if __name__ == "__main__":
    multiprocessing.freeze_support()  # a library that starts worker processes gets the bundle, not a shell
    sys.exit(run())
