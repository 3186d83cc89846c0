"""LVLM Studio: look inside large vision-language models. See ARCHITECTURE.md for the rooms."""

from lvlm_studio import _moved

_moved.install()  # the 0.1 module paths keep importing, with a warning naming the new ones
