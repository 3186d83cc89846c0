"""``python -m lvlm_studio`` and the ``lvlm-studio`` command (``run``).

The entry point imports the command line inside its own Ctrl-C handling, so an interrupt while
Python is still importing ends as every other cancellation does: "cancelled", exit 130, no
traceback. (``main`` handles the slow imports, torch and transformers, itself.)
"""

import sys

EXIT_CANCELLED = 130  # lvlm_studio.cli.common.EXIT_CANCELLED, which may not be imported yet


def run() -> int:
    try:
        from lvlm_studio.cli import main

        return main()
    except KeyboardInterrupt:
        print("cancelled; nothing was written", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(run())
