"""The metric computations of the core against values worked out by hand on small constructed inputs.

Deletion/insertion uses an oracle in place of the model: the "probability of the answer" is the
share of the object's pixels still visible, so a perfect map, an inverted map and a constant map
have areas that can be computed on paper (comments give the sums).
"""

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.metrics import faithfulness
from lvlm_studio.core.metrics.agreement import agreement, rank_correlation, top_k_overlap
from lvlm_studio.core.metrics.faithfulness import (
    auc,
    combined_map,
    deletion_insertion,
    normalised,
    removal_rank,
    step_counts,
)
from lvlm_studio.core.metrics.plausibility import (
    FUNCTION_WORDS,
    f1_iou,
    func_iou,
    group_words,
    obj_iou,
    otsu_threshold,
    plausibility,
    pointing_hit,
)
from lvlm_studio.core.plugin.adapter import ImageRegion
from lvlm_studio.core.plugin.jobs import Progress, collect, run_job

# -- a 4x4 grid over an 8x8 image; the object fills cells (1,1) (1,2) (2,1) (2,2) = pixels 2..5 --
GRID = np.zeros((4, 4))
GRID[1:3, 1:3] = 1.0
OBJECT = np.zeros((8, 8), bool)
OBJECT[2:6, 2:6] = True
REGION = ImageRegion("image 0", 0, np.arange(16), (4, 4), (0.0, 0.0, 8.0, 8.0))


def oracle_trace():
    image = Image.fromarray(np.where(OBJECT, 255, 0).astype(np.uint8)).convert("RGB")
    return SimpleNamespace(image=image, regions=[REGION], answer_ids=np.array([7]))


def visible_share(loaded, trace, images, batch_size=16, what=""):
    """Oracle scorer: log of the share of object pixels still white (one answer token)."""
    yield Progress(0, len(images), what)
    share = np.array([np.asarray(im)[..., 0][OBJECT].mean() / 255.0 for im in images])
    return np.log(np.maximum(share, 1e-300))[:, None]


@pytest.fixture
def oracle(monkeypatch):
    monkeypatch.setattr(faithfulness, "score_images", visible_share)
    black = Image.new("RGB", (8, 8))
    return lambda grid, **kw: run_job(deletion_insertion(None, oracle_trace(), [([grid], [0])], steps=16,
                                                         baseline=black, **kw))[0]


def test_auc_is_the_trapezoid_rule():
    assert auc(np.array([0, 0.5, 1]), np.array([1.0, 0.5, 0.0])) == pytest.approx(0.5)
    assert auc(np.array([0, 0.25, 1]), np.array([0.0, 1.0, 1.0])) == pytest.approx(0.125 + 0.75)


def test_perfect_map(oracle):
    curves = oracle(GRID)
    # one cell per step: the object's 4 cells go first, the share falls 1, .75, .5, .25, 0
    assert curves.deletion[:5] == pytest.approx([1, 0.75, 0.5, 0.25, 0])
    assert curves.deletion_auc == pytest.approx(0.5 * 4 / 16)  # a triangle over the first quarter
    assert curves.insertion_auc == pytest.approx(0.5 * 4 / 16 + 12 / 16)
    assert curves.fraction == pytest.approx(np.arange(17) / 16)


def test_inverted_map(oracle):
    curves = oracle(1 - GRID)
    assert curves.deletion_auc == pytest.approx(12 / 16 + 0.5 * 4 / 16)
    assert curves.insertion_auc == pytest.approx(0.5 * 4 / 16)


def test_constant_map_removes_in_reading_order(oracle):
    curves = oracle(np.full((4, 4), 0.3))
    # object cells are flat indices 5, 6, 9, 10: deletion values 1 x6, .75, .5, .5, .5, .25, 0 x6
    expected = [1] * 6 + [0.75, 0.5, 0.5, 0.5, 0.25] + [0] * 6
    assert curves.deletion == pytest.approx(expected)
    assert curves.deletion_auc == pytest.approx((sum(expected) - 0.5) / 16)  # = 0.5
    assert curves.insertion_auc == pytest.approx(0.5)


def test_normalised_curves():
    curves = faithfulness.FaithfulnessCurves(np.linspace(0, 1, 3), np.array([0.8, 0.5, 0.2]),
                                             np.array([0.2, 0.6, 0.8]), [0])
    scaled = normalised(curves)
    assert scaled.deletion == pytest.approx([1, 0.5, 0]) and scaled.insertion == pytest.approx([0, 2 / 3, 1])
    flat = faithfulness.FaithfulnessCurves(curves.fraction, np.full(3, 0.4), np.full(3, 0.4), [0])
    assert np.isnan(normalised(flat).deletion).all()  # the blur changes nothing: nothing to explain


def test_oracle_normalise_and_progress(oracle, monkeypatch):
    curves = oracle(GRID, normalise_scores=True)
    assert curves.normalised and curves.deletion_auc == pytest.approx(0.125)
    black = Image.new("RGB", (8, 8))
    _, seen = collect(deletion_insertion(None, oracle_trace(), [([GRID], [0]), ([GRID], [0])], steps=4,
                                         baseline=black))
    assert seen[-1].done == seen[-1].total and len(seen) >= 3


def test_bad_orderings_are_refused(oracle):
    with pytest.raises(InputError, match="at least one answer token"):
        run_job(deletion_insertion(None, oracle_trace(), [([GRID], [])], baseline=Image.new("RGB", (8, 8))))
    with pytest.raises(InputError, match="regions"):
        run_job(deletion_insertion(None, oracle_trace(), [([GRID, GRID], [0])], baseline=Image.new("RGB", (8, 8))))


def test_removal_rank_grid_and_pixels():
    rank, n = removal_rank([GRID], [REGION], (8, 8), "grid")
    assert n == 16 and rank.shape == (8, 8)
    assert set(np.unique(rank[OBJECT])) == {0, 1, 2, 3}  # the object's cells come first
    assert (rank[~OBJECT] >= 4).all()
    pixel_rank, n_pixels = removal_rank([GRID], [REGION], (8, 8), "pixels")
    assert n_pixels == 64 and sorted(pixel_rank.ravel()) == list(range(64))
    with pytest.raises(InputError):
        removal_rank([GRID], [REGION], (8, 8), "voxels")


def test_step_counts():
    assert step_counts(64, 50)[[0, 1, -1]].tolist() == [0, 1, 64]
    assert step_counts(16, 50).tolist() == list(range(17))  # never more steps than units
    assert len(step_counts(9216, 50)) == 51


def test_combined_map_normalises_each_token():
    a, b = np.array([[0.0, 10.0]]), np.array([[1.0, 0.0]])
    assert combined_map([[a], [b]])[0] == pytest.approx(np.array([[0.5, 0.5]]))


# -- plausibility -------------------------------------------------------------------------------
def test_obj_iou_perfect_inverted_uniform():
    perfect = OBJECT.astype(float)
    assert obj_iou(perfect, OBJECT)[0] == 1.0
    assert obj_iou(1 - perfect, OBJECT)[0] == 0.0
    value, threshold = obj_iou(np.full((8, 8), 0.4), OBJECT)
    assert value == 0.0 and threshold == 0.4  # a constant map: nothing above its own threshold
    # half the object lit: IoU = 8 / 16
    half = np.zeros((8, 8))
    half[2:4, 2:6] = 1
    assert obj_iou(half, OBJECT)[0] == pytest.approx(0.5)


def test_otsu_splits_two_levels():
    values = np.array([[0.1, 0.1], [0.9, 0.9]])
    assert 0.1 <= otsu_threshold(values) < 0.9


def test_empty_mask_and_shape_mismatch_are_errors():
    with pytest.raises(InputError, match="empty"):
        obj_iou(OBJECT.astype(float), np.zeros((8, 8), bool))
    with pytest.raises(InputError, match="shape"):
        pointing_hit(np.zeros((4, 4)), OBJECT)


def test_pointing_hit():
    assert pointing_hit(OBJECT.astype(float), OBJECT)
    assert not pointing_hit(1 - OBJECT.astype(float), OBJECT)
    assert not pointing_hit(np.ones((8, 8)), OBJECT)  # constant: the top-left pixel, outside
    assert not pointing_hit(np.full((8, 8), np.nan), OBJECT)


def test_func_iou_and_f1():
    assert func_iou(np.zeros((8, 8)), 0.5) == 1.0
    assert func_iou(OBJECT.astype(float), 0.5) == pytest.approx(1 - 16 / 64)
    assert f1_iou(0.5, 1.0) == pytest.approx(2 / 3)
    assert f1_iou(0.0, 0.0) == 0.0 and np.isnan(f1_iou(0.5, float("nan")))


def test_function_word_list_is_the_tam_one():
    assert {"a", "the", "and", "it", "there", "could", "which", "my"} <= FUNCTION_WORDS
    assert not {"on", "in", "under", "two", "three", "red", "circle"} & FUNCTION_WORDS  # no prepositions, numbers


def test_group_words():
    words = group_words(["a", "red", "circle", ",", "a", "blue", "square"], "a red circle, a blue square")
    assert [w.text for w in words] == ["a", "red", "circle", ",", "a", "blue", "square"]
    bpe = group_words(["\u0120A", "\u0120tr", "affic", "\u0120light", "."], " A traffic light.")
    assert [(w.text, w.tokens) for w in bpe] == [("a", (0,)), ("traffic", (1, 2)), ("light", (3,)), (".", (4,))]
    pieces = group_words(["tr", "affic", "light"], "traffic light")
    assert [w.text for w in pieces] == ["traffic", "light"]


def test_plausibility_of_an_answer():
    tokens = ["a", "red", "circle", "and", "it"]
    words = group_words(tokens, "a red circle and it")
    perfect, dark = OBJECT.astype(float), np.zeros((8, 8))
    maps = {0: dark, 1: perfect, 2: 1 - perfect, 3: perfect, 4: dark}
    scores = plausibility(maps, words, {1: OBJECT, 2: OBJECT})
    assert scores.object_words == {"red": 1.0, "circle": 0.0}
    assert scores.obj_iou == pytest.approx(0.5)
    # thresholds: Otsu of the two object maps (jointly normalised, both 0/1 maps); "a" and "it" are
    # dark (all below), "and" is the object itself (48 of 64 below)
    assert scores.function_words == {"a": 1.0, "and": pytest.approx(48 / 64), "it": 1.0}
    assert scores.func_iou == pytest.approx((1 + 0.75 + 1) / 3)
    assert scores.f1_iou == pytest.approx(f1_iou(0.5, (1 + 0.75 + 1) / 3))
    assert scores.hits == {1: True, 2: False} and scores.pointing == 0.5


def test_single_token_answer_and_constant_maps():
    single = plausibility({0: OBJECT.astype(float)}, group_words(["dog"], "dog"), {0: OBJECT})
    assert single.obj_iou == 1.0 and np.isnan(single.func_iou) and np.isnan(single.f1_iou)
    constant = plausibility({0: np.ones((8, 8)), 1: np.ones((8, 8))}, group_words(["the", "dog"], "the dog"),
                            {1: OBJECT})
    assert constant.obj_iou == 0.0 and constant.pointing == 0.0
    assert constant.function_words == {"the": 0.0}  # nothing below the constant's own threshold
    none = plausibility({0: np.ones((8, 8))}, group_words(["the"], "the"), {})
    assert np.isnan(none.obj_iou) and np.isnan(none.func_iou)  # no object word: no threshold
    with pytest.raises(InputError):
        plausibility({}, [], {})


# -- agreement ----------------------------------------------------------------------------------
def test_agreement_same_inverted_constant():
    a = np.arange(10.0)
    same = agreement(a, a * 3 + 1)
    assert same.rank_correlation == pytest.approx(1.0) and same.top_k_overlap == 1.0 and not same.inconsistent
    inverse = agreement(a, -a)
    assert inverse.rank_correlation == pytest.approx(-1.0) and inverse.top_k_overlap == 0.0 and inverse.inconsistent
    flat = agreement(a, np.zeros(10))
    assert np.isnan(flat.rank_correlation) and flat.inconsistent


def test_top_k_overlap_by_hand():
    a = np.array([9, 8, 7, 0, 0, 0.0])
    b = np.array([9, 0, 7, 8, 0, 0.0])
    assert top_k_overlap(a, b, 3) == pytest.approx(2 / 3)  # {0,1,2} vs {0,3,2}
    assert top_k_overlap(a, b, 1) == 1.0
    with pytest.raises(InputError):
        top_k_overlap(a, b, 7)
    with pytest.raises(InputError):
        rank_correlation(a, b[:3])
    # by hand: ranks (ties averaged) a = 6,5,4,2,2,2 and b = 6,2,4,5,2,2; deviations from 3.5 give
    # sum of products 6.5 and sums of squares 15.5 each: rho = 6.5 / 15.5
    assert rank_correlation(a, b) == pytest.approx(6.5 / 15.5)


def test_agreement_threshold_is_a_parameter():
    a, b = np.arange(10.0), np.array([0, 1, 2, 3, 4, 5, 6, 9, 7, 8.0])
    strict = agreement(a, b, k=2, min_rank_correlation=0.99)
    assert strict.inconsistent and not agreement(a, b, k=2).inconsistent
