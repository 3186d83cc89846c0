"""The house's rooms: release 0.1's module paths still import (a plugin written against them keeps
working), with a warning that names the new path; the rules between rooms are import-linter's
(tests/test_qt_free.py runs it)."""

import importlib
import sys
import warnings

import pytest

from lvlm_studio._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_gives_the_moved_module_with_a_warning(old):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert any(issubclass(w.category, DeprecationWarning) and MOVED[old] in str(w.message) for w in caught)


def test_names_import_from_an_old_path_as_plugins_wrote_them():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from lvlm_studio.core.contracts import Explainer, Param  # noqa: F401 - the 0.1 README's example
        from lvlm_studio.core.plugin.contracts import Explainer as moved

    assert Explainer is moved
