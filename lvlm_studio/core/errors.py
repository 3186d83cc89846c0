"""Errors a user can act on: each says what went wrong and what to do about it.

The CLI prints them as one line and exits non-zero; the GUI shows them in one dialog. Anything that
is not an ``LVLMError`` is a bug and is reported as such.
"""

from __future__ import annotations


class LVLMError(Exception):
    """A failure caused by input or environment, with a hint that tells the user what to do."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class ModelLoadError(LVLMError):
    """The model folder could not be opened as a supported vision-language model."""


class UnsafeModelError(ModelLoadError):
    """Loading needs a risky option (``option``: "allow_pickle" or "trust_remote_code"); the app asks."""

    def __init__(self, message: str, hint: str, option: str):
        super().__init__(message, hint)
        self.option = option


class UnsupportedModelError(ModelLoadError):
    """The model loads, but no adapter knows where its image tokens are."""


class InputError(LVLMError):
    """An image, prompt, parameter or file given by the user cannot be used."""


class PluginError(LVLMError):
    """A plugin failed; the rest of the application keeps working."""


class Cancelled(Exception):
    """A job was cancelled by the user. Not an error: nothing is written, nothing is reported."""
