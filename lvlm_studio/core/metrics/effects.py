"""Which factors change a measurement: a fitted model over a study's results.

* ``factor_anova``: a fitted linear model (ordinary least squares, statsmodels) of one measurement
  against two or more categorical factors (a model's vision architecture and its LLM size), with an
  optional blocking factor (the image: every model sees the same images, so the differences between
  images are taken out before the factors are tested). Each factor gets a type-II ANOVA F test, its
  p-value and its partial eta squared, SS_factor / (SS_factor + SS_residual): the share of the
  variance not explained by the other terms that this factor explains (0 none, 1 all).

(Intervals of a mean are ``core.metrics.intervals.bootstrap_interval``.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lvlm_studio.core.errors import InputError


@dataclass(frozen=True)
class FactorEffect:
    """One factor's row of the ANOVA table."""

    factor: str
    levels: int
    df: float
    f_value: float
    p_value: float
    partial_eta_squared: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def factor_anova(rows: Sequence[Mapping[str, Any]], response: str, factors: Sequence[str],
                 block: str | None = None) -> list[FactorEffect]:
    """Type-II ANOVA of ``response`` on the categorical ``factors`` (main effects), plus ``block``
    as a further categorical term when given; one ``FactorEffect`` per factor (the block is not
    reported). Rows whose response is not finite are left out.

    Every factor needs at least two levels among the rows, and there must be more rows than terms;
    otherwise ``InputError`` says what is missing.
    """
    import pandas as pd
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    columns = [*factors, *([block] if block else [])]
    frame = pd.DataFrame([{**{c: str(row[c]) for c in columns}, "y": float(row[response])} for row in rows])
    if frame.empty:
        raise InputError(f"there are no results to fit for {response!r}.", "Run the study on at least two models.")
    frame = frame[np.isfinite(frame["y"])]
    for factor in factors:
        levels = frame[factor].nunique()
        if levels < 2:
            raise InputError(f"the factor {factor!r} has {levels} level(s) among the models; an effect needs two.",
                             f"Add models that differ in {factor} (declared in each folder's study_meta.json).")
    names = {c: f"f{i}" for i, c in enumerate(columns)}  # safe column names for the formula
    frame = frame.rename(columns=names)
    formula = "y ~ " + " + ".join(f"C({names[c]})" for c in columns)
    terms = sum(frame[names[c]].nunique() - 1 for c in columns) + 1
    if len(frame) <= terms:
        raise InputError(f"{len(frame)} results are too few to fit {terms} terms for {response!r}.",
                         "Use more images.")
    fit = smf.ols(formula, data=frame).fit()
    table = anova_lm(fit, typ=2)
    residual = float(table.loc["Residual", "sum_sq"])
    effects = []
    for factor in factors:
        row = table.loc[f"C({names[factor]})"]
        ss = float(row["sum_sq"])
        eta = ss / (ss + residual) if ss + residual > 0 else float("nan")
        effects.append(FactorEffect(factor, int(frame[names[factor]].nunique()), float(row["df"]),
                                    float(row["F"]), float(row["PR(>F)"]), eta))
    return effects
