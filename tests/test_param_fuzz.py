"""Param.parse against anything a user, a session file or a plugin may hand it.

The promise: a value of the default's type, finite, within the bounds and choices, or an
``InputError`` with one line that says what to give instead. Never another exception, never NaN.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.plugin.contracts import Param

FINITE = st.floats(-1e6, 1e6, allow_nan=False)
# What a plugin author declares: defaults and choices of each type (names and words, no control characters).
DECLARED = {bool: st.booleans(), int: st.integers(-10**6, 10**6), float: FINITE,
            str: st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=8)}
DEFAULTS = st.one_of(*DECLARED.values(), st.lists(st.integers(-64, 64), max_size=4).map(tuple))


@st.composite
def params(draw) -> Param:
    default = draw(DEFAULTS)
    choices = None
    if not isinstance(default, tuple) and draw(st.booleans()):
        choices = (default, *draw(st.lists(DECLARED[type(default)], max_size=3)))
    return Param("p", default, choices=choices, minimum=draw(st.none() | FINITE), maximum=draw(st.none() | FINITE))


NUMBER_TEXT = st.from_regex(r"\s*[-+]?(\d{1,400}|nan|NaN|inf|Infinity|\d*\.\d+(e[-+]?\d{1,4})?)\s*", fullmatch=True)
VALUES = st.one_of(
    st.text(), NUMBER_TEXT, st.lists(NUMBER_TEXT, max_size=4).map(",".join), st.integers(), st.floats(),
    st.booleans(), st.none(), st.binary(max_size=8), st.decimals(), st.fractions(), st.complex_numbers(),
    st.lists(st.one_of(st.integers(), st.floats(), st.text(max_size=3)), max_size=4),
    st.lists(st.integers(), max_size=4).map(tuple), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@pytest.mark.hostile("options")
@settings(max_examples=2000, deadline=None)
@given(param=params(), value=VALUES)
def test_param_parse_returns_a_valid_value_or_refuses(param: Param, value) -> None:
    try:
        result = param.parse(value)
    except InputError as exc:
        assert "\n" not in str(exc) and exc.hint, str(exc)
        return
    if isinstance(param.default, tuple):
        assert isinstance(result, tuple) and all(type(item) is int for item in result), result
    else:
        assert type(result) is type(param.default), (result, param.default)
    if param.choices is not None:
        assert result in param.choices
    for item in result if isinstance(result, tuple) else (result,):
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            assert math.isfinite(item)
            assert param.minimum is None or item >= param.minimum
            assert param.maximum is None or item <= param.maximum


@pytest.mark.hostile("options")
@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "1e400", "-Infinity"])
def test_non_finite_numbers_are_refused_even_without_bounds(text: str) -> None:
    with pytest.raises(InputError, match="not a finite number"):
        Param("keep", 0.5).parse(text)
    with pytest.raises(InputError, match="not a finite number"):
        Param("keep", 0.5, minimum=0.01, maximum=1.0).parse(float(text))


def test_records_hold_strict_json() -> None:
    """A NaN that reaches a run record (a plugin's provenance, a metric's detail) is written as null:
    run.json stays readable by strict JSON parsers."""
    import json

    import numpy as np

    from lvlm_studio.core.io.records import jsonable

    record = jsonable({"keep": float("nan"), "curve": np.array([np.inf, 1.0, -np.inf]), "n": np.int64(3)})
    assert record == {"keep": None, "curve": [None, 1.0, None], "n": 3}
    json.dumps(record, allow_nan=False)
