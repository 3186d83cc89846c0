"""The computations behind the text-vs-image influence, causal graph and logit lens views, on planted
truth and by brute force: shares sum to 1 and match planted relevance, the graph is the union of
the heads' graphs, and the lens at the last layer is the model's own output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvlm_explainers.causal import CausalSubset
from lvlm_studio.core.errors import InputError
from lvlm_studio.core.metrics.causal_graph import causal_graph, position_label
from lvlm_studio.core.metrics.modality import (
    TEXT_RELEVANCE,
    influence_shares,
    modality_influence,
    prompt_words,
    text_relevance_record,
)
from lvlm_studio.core.plugin.explanation import Explanation
from lvlm_studio.core.plugin.jobs import run_job
from lvlm_studio.core.tracing.trace import generate_trace
from lvlm_studio.core.tracing.vision_entry import lens_at, logit_lens
from lvlm_studio.demo.scenes import make_scene


@pytest.fixture(scope="module")
def colour_trace(demo_model):
    return generate_trace(demo_model, make_scene(2_000_000_101).image, "what colour is the circle?", max_new_tokens=6)


def planted(trace, tokenizer, image_mass: dict[int, float], word_mass: dict[int, dict[str, float]]):
    """An explanation with ``image_mass[t]`` spread over the image and, per prompt word, its mass spread
    over the word's sub-word positions (so word-level sums are known exactly)."""
    words = prompt_words(trace, tokenizer)
    positions = [p for _, ps in words for p in ps]
    maps, rows = {}, {}
    for t, mass in image_mass.items():
        cells = [np.full(r.grid, 1.0, dtype=np.float32) for r in trace.regions]
        count = sum(c.size for c in cells)
        maps[t] = [c * (mass / count) for c in cells]
        value = {p: 0.0 for p in positions}
        for word, ps in words:
            for p in ps:
                value[p] = word_mass[t].get(word, 0.0) / len(ps)
        rows[t] = np.array([value[p] for p in positions])
    provenance = {TEXT_RELEVANCE: text_relevance_record(np.array(positions), rows)}
    return Explanation("planted", maps, {}, provenance), [w for w, _ in words]


def test_influence_shares_recover_planted_relevance_and_sum_to_one(demo_model, colour_trace):
    tokenizer = demo_model.processor.tokenizer
    n = len(colour_trace.answer_ids)
    _, words = planted(colour_trace, tokenizer, {0: 1.0}, {0: {}})
    first, second = words[0], words[-1]
    image_mass = {t: float(t + 1) for t in range(n)}
    word_mass = {t: {first: 1.0, second: 2.0 * t} for t in range(n)}
    explanation, _ = planted(colour_trace, tokenizer, image_mass, word_mass)
    shares = influence_shares(colour_trace, explanation, tokenizer)
    assert shares.words == words and shares.word_shares.shape == (n, len(words))
    for t in range(n):
        total = image_mass[t] + 1.0 + 2.0 * t
        assert shares.image[t] == pytest.approx(image_mass[t] / total, rel=1e-6)
        assert shares.word_shares[t, 0] == pytest.approx(1.0 / total, rel=1e-5)
        assert shares.word_shares[t, -1] == pytest.approx(2.0 * t / total, rel=1e-5, abs=1e-9)
        assert shares.image[t] + shares.word_shares[t].sum() == pytest.approx(1.0)
        assert shares.image[t] + shares.text[t] == pytest.approx(1.0)
    # an answer word sums its tokens' relevance before dividing
    joined = influence_shares(colour_trace, explanation, tokenizer, answer_words=True)
    assert sum(len(tokens) for tokens in joined.tokens) == n
    for row, tokens in enumerate(joined.tokens):
        total = sum(image_mass[t] + 1.0 + 2.0 * t for t in tokens)
        assert joined.image[row] == pytest.approx(sum(image_mass[t] for t in tokens) / total, rel=1e-6)
    record = shares.to_dict()
    assert record["prompt_words"] == words and len(record["rows"]) == n


def test_influence_shares_of_relevancy_agree_with_modality_influence(demo_model, colour_trace, lvlm_registry):
    explainer = lvlm_registry.explainer("relevancy")
    targets = list(range(len(colour_trace.answer_ids)))
    explanation = run_job(explainer.explain(colour_trace, demo_model, targets, explainer.resolve_params({})))
    tokenizer = demo_model.processor.tokenizer
    shares = influence_shares(colour_trace, explanation, tokenizer)
    for t in targets:
        found = modality_influence(colour_trace, explanation, tokenizer, t)
        assert shares.image[t] == pytest.approx(found.image_share)
        total = found.image + found.text
        np.testing.assert_allclose(shares.word_shares[t], [v / total for _, v in found.words], rtol=1e-6)
        assert shares.image[t] + shares.word_shares[t].sum() == pytest.approx(1.0)
    with pytest.raises(InputError, match="relevancy"):
        influence_shares(colour_trace, Explanation("raw", explanation.maps, {}, {}), tokenizer)


# -- the causal graph ----------------------------------------------------------------------------
def test_causal_graph_is_the_union_of_the_heads_graphs(demo_model, demo_trace):
    explainer = CausalSubset()
    token = len(demo_trace.answer_ids) - 2
    explanation = run_job(explainer.explain(demo_trace, demo_model, [token],
                                            explainer.resolve_params({"random_draws": 3, "batch_size": 4})))
    found = explanation.provenance["tokens"][str(token)]
    graph = causal_graph(demo_trace, explanation, token)
    positions = [n.position for n in graph.nodes]
    expected: dict[tuple[int, int], int] = {}
    for head in found["heads"].values():
        assert len(head["edge_list"]) == head["edges"]
        for a, b in head["edge_list"]:
            key = tuple(sorted((a, b)))
            expected[key] = expected.get(key, 0) + 1
    drawn = {tuple(sorted((positions[a], positions[b]))): n for a, b, n in graph.edges}
    assert drawn == expected
    assert graph.subset == found["subset"]
    query = demo_trace.answer_position(token) - 1
    (target,) = [n for n in graph.nodes if n.kind == "target"]
    assert target.position == query and target.distance == 0
    assert all(n.kind == "image" for n in graph.nodes if n.in_subset)
    assert graph.validation["outcome"] == found["outcome"]
    if found["subset"]:
        assert len(graph.validation["random_log_odds_drops"]) == 3
    xy = graph.layout()
    assert xy.shape == (len(graph.nodes), 2) and np.allclose(xy[positions.index(query)], 0)
    assert graph.to_dict()["subset"] == found["subset"]


def test_causal_graph_of_a_planted_provenance(demo_trace):
    image = [int(p) for p in demo_trace.image_positions[:3]]
    query = demo_trace.answer_position(0) - 1
    heads = {"0": {"nodes": [*image[:2], query], "edge_list": [[image[0], query], [image[0], image[1]]]},
             "1": {"nodes": [image[2], query], "edge_list": [[image[0], query]]}}
    heads["1"]["nodes"].insert(0, image[0])
    provenance = {"tokens": {"0": {"heads": heads, "subset": [image[0], image[1]], "weights": [2.0, 0.5],
                                   "subset_drop": 0.1, "random_drops": [0.0, 0.05], "outcome": "beats"}}}
    graph = causal_graph(demo_trace, Explanation("causal", {}, {}, provenance), 0)
    by_position = {n.position: n for n in graph.nodes}
    assert [by_position[p].distance for p in (*image, query)] == [1, 2, -1, 0]
    assert by_position[image[0]].weight == 2.0 and not by_position[image[2]].in_subset
    index = {n.position: i for i, n in enumerate(graph.nodes)}
    assert (min(index[image[0]], index[query]), max(index[image[0]], index[query]), 2) in graph.edges
    assert position_label(demo_trace, image[0]).startswith("patch 0,")
    assert graph.validation == {"subset_drop": 0.1, "random_drops": [0.0, 0.05], "outcome": "beats"}
    with pytest.raises(InputError, match="causal"):
        causal_graph(demo_trace, Explanation("raw_attention", {}, {}, {}), 0)


# -- the logit lens at one position ----------------------------------------------------------------
def test_lens_at_the_last_layer_is_the_model_output(demo_model, colour_trace):
    trace = colour_trace
    lens = logit_lens(demo_model, trace)
    for token in range(len(trace.answer_ids)):
        found = lens_at(demo_model, trace, token, k=4)
        query = trace.answer_position(token) - 1
        with torch.no_grad():
            logits = demo_model.model(**trace.teacher_forced_inputs(demo_model, upto=query + 1),
                                      use_cache=False).logits[0, query].float()
        probs = torch.softmax(logits, dim=-1)
        top = probs.topk(4)
        np.testing.assert_array_equal(found.top_ids[-1], top.indices.numpy())
        np.testing.assert_allclose(found.top_probs[-1], top.values.numpy(), rtol=1e-5, atol=1e-7)
        assert found.top_ids[-1, 0] == trace.answer_ids[token]  # greedy: the answer is on top
        # every layer agrees with the answer-wide lens
        np.testing.assert_allclose(found.token_prob, lens.answer_prob[:, token], rtol=1e-5, atol=1e-8)
        np.testing.assert_array_equal(found.token_rank, lens.answer_rank[:, token])
        assert (np.diff(found.top_probs, axis=1) <= 1e-7).all()


def test_lens_at_patches_by_brute_force(demo_model, colour_trace):
    """The best probability of the answer token over every patch is the lens's image_max_prob."""
    trace, token = colour_trace, 0
    lens = logit_lens(demo_model, trace)
    patches = len(trace.image_positions)
    probs = np.stack([lens_at(demo_model, trace, token, k=1, patch=i).token_prob for i in range(patches)])
    np.testing.assert_allclose(probs.max(axis=0), lens.image_max_prob[:, token], rtol=1e-5, atol=1e-8)
    with pytest.raises(InputError, match="does not exist"):
        lens_at(demo_model, trace, token, patch=patches)
    with pytest.raises(InputError, match="out of range"):
        lens_at(demo_model, trace, token, k=0)
