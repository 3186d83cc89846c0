"""Causal token subsets: the statistics by hand, PC on a known chain, validation, and every family."""

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import norm

from lvlm_explainers.causal import (
    CausalSubset,
    compare_drops,
    correlation_from_rows,
    data_with_correlation,
    fisher_z_pvalue,
    learn_graph,
    select_nodes,
    token_keep,
    within_radius,
)
from lvlm_studio.core.errors import InputError
from lvlm_studio.core.plugin.jobs import collect, run_job
from lvlm_studio.demo.causal_check import causal_check, format_check
from lvlm_studio.testing import check_explanation

FAST = {"random_draws": 2, "batch_size": 4}


def test_correlation_of_attention_rows_by_hand():
    corr = correlation_from_rows(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
    # A A^T = [[1, 1], [1, 2]] -> 1 / sqrt(2) off the diagonal; a row with no mass is independent.
    np.testing.assert_allclose(corr, [[1, 2**-0.5, 0], [2**-0.5, 1, 0], [0, 0, 1]])


def test_data_reproduces_the_correlation_exactly():
    corr = np.array([[1.0, 0.6, 0.3], [0.6, 1.0, 0.5], [0.3, 0.5, 1.0]])
    data = data_with_correlation(corr, 20)
    assert data.shape == (20, 3)
    np.testing.assert_allclose(np.corrcoef(data.T), corr, atol=1e-5)
    with pytest.raises(InputError, match="too few"):
        data_with_correlation(corr, 5)


def test_fisher_z_by_hand():
    # r = 0.5, n = 28: z = atanh(0.5) = 0.5493, statistic = sqrt(25) z = 2.7465
    assert fisher_z_pvalue(0.5, 28) == pytest.approx(2 * (1 - norm.cdf(5 * np.arctanh(0.5))))
    assert fisher_z_pvalue(0.0, 28) == pytest.approx(1.0)


def test_pc_recovers_a_chain():
    # X -> Y -> Z with unit-variance noise: corr(X, Z) = corr(X, Y) corr(Y, Z), so X and Z are
    # independent given Y and PC must drop that edge and keep the other two.
    r = 0.7
    corr = np.array([[1, r, r * r], [r, 1, r], [r * r, r, 1]])
    adjacency = learn_graph(corr, 500, 1e-3)
    assert adjacency.tolist() == [[False, True, False], [True, False, True], [False, True, False]]


def test_within_radius_counts_edges():
    chain = np.zeros((5, 5), bool)
    for a, b in [(0, 1), (1, 2), (2, 3), (3, 4)]:
        chain[a, b] = chain[b, a] = True
    assert within_radius(chain, 0, 2) == {0: 0, 1: 1, 2: 2}
    assert within_radius(chain, 2, 1) == {2: 0, 1: 1, 3: 1}


def test_select_nodes_by_attention():
    attention = np.zeros((8, 8))
    attention[7, [1, 2, 3]] = [0.5, 0.004, 0.2]  # image tokens at 1..3
    attention[7, [5, 6]] = [0.2, 0.005]  # text after the image: 5 is attended, 6 is not
    image, text = select_nodes(attention, np.array([1, 2, 3]), 7, 0.01, 50)
    assert image.tolist() == [1, 3] and text.tolist() == [5]


def test_compare_drops_with_a_tolerance():
    assert compare_drops(0.3, 0.1) == "beats"
    assert compare_drops(0.1, 0.3) == "loses"
    assert compare_drops(0.1, 0.1 + 1e-4) == "ties"


def test_token_keep_blanks_each_tokens_cell():
    region = SimpleNamespace(grid=(2, 2), box=(0.0, 0.0, 4.0, 4.0), positions=np.array([10, 11, 12, 13]))
    trace = SimpleNamespace(image=SimpleNamespace(size=(4, 4)), regions=[region])
    keep = token_keep(trace, [11])  # row 0, column 1: the top-right quadrant
    expected = np.ones((4, 4))
    expected[0:2, 2:4] = 0
    np.testing.assert_array_equal(keep, expected)


def test_every_family(tiny_model, tiny_trace):
    explainer = CausalSubset()
    if getattr(tiny_model.adapter, "image_entry", "tokens") != "tokens":
        with pytest.raises(InputError, match="cross-attention"):
            run_job(explainer.explain(tiny_trace, tiny_model, [0], explainer.resolve_params(FAST)))
        return
    explanation, progress = collect(explainer.explain(tiny_trace, tiny_model, [0], explainer.resolve_params(FAST)))
    check_explanation(explanation, tiny_trace, [0])
    found = explanation.provenance["tokens"]["0"]
    assert found["outcome"] in {"beats", "ties", "loses", "empty"} and len(progress) >= 3
    values = np.concatenate([m.ravel() for m in explanation.maps[0]])
    assert np.count_nonzero(values) <= len(found["subset"]), "zero outside the subset"


def test_the_demo_subsets_lie_among_the_most_attended_tokens(demo_model, demo_trace):
    explainer = CausalSubset()
    targets = [i for i, t in enumerate(demo_trace.answer_tokens) if t in {"red", "blue", "yellow", "circle", "square"}]
    explanation = run_job(explainer.explain(demo_trace, demo_model, targets, explainer.resolve_params({})))
    linked = 0
    for t in targets:
        found = explanation.provenance["tokens"][str(t)]
        assert set(found["subset"]) <= set(found["image_nodes"])
        assert set(found["heads"]) == {"0", "1", "2", "3"}, "every head of the layer by default"
        assert found["probability"] > 0.5
        weights = np.concatenate([m.ravel() for m in explanation.maps[t]])
        assert (weights > 0).sum() == len(found["subset"])
        if found["subset"]:
            linked += 1
            assert len(found["random_drops"]) == 5 and found["outcome"] in {"beats", "ties", "loses"}
        else:
            assert found["outcome"] == "empty"
    assert linked, "some object word is linked to an image token"


def test_the_check_counts_outcomes_and_the_cli_prints_them(demo_model, lvlm_registry, capsys):
    check = run_job(causal_check(demo_model, 2, lvlm_registry))
    assert check.scenes == 2 and sum(check.outcomes.values()) == 2
    assert "beats random:" in format_check(check)
    from lvlm_studio.cli import main

    assert main(["demo", "causal", "--n", "1", "--device", "cpu", "--param", "random_draws=2"]) == 0
    assert "beats random:" in capsys.readouterr().out
    assert main(["demo", "causal", "--n", "0"]) == 2
