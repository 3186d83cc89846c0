"""``python -m lvlm_studio``: the same as the ``lvlm-studio`` command."""

import sys

try:
    from lvlm_studio.cli import main
except KeyboardInterrupt:  # Ctrl-C before main() and its handlers exist: end as main() would
    print("cancelled; nothing was written", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
