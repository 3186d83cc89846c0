"""The head gallery, patch -> text and question -> answer attention, against the full attention tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.capture import attention_implementation
from lvlm_studio.core.plugin.jobs import run_job
from lvlm_studio.core.tracing.attention_views import (
    head_gallery,
    parse_indices,
    patch_text_attention,
    patches_in_box,
    question_answer_attention,
    render_gallery,
    token_words,
)
from lvlm_studio.core.tracing.head_attention import head_attention
from lvlm_studio.core.tracing.prompt_tokens import prompt_text_positions
from lvlm_studio.core.tracing.trace import generate_trace


def full_attention(model, trace) -> np.ndarray:
    """Every layer's full self-attention from one eager pass with output_attentions: [L, H, T, T]."""
    inputs = trace.teacher_forced_inputs(model)
    with torch.no_grad(), attention_implementation(model.model, "eager"):
        out = model.model(**inputs, output_attentions=True, use_cache=False)
    return torch.stack(out.attentions)[:, 0].double().numpy()


@pytest.fixture(scope="module")
def question_trace(demo_model, demo_scene):
    return generate_trace(demo_model, demo_scene.image, "what color is the circle?")


@pytest.fixture(scope="module")
def reference(demo_model, question_trace):
    return full_attention(demo_model, question_trace)


def test_gallery_maps_are_each_heads_rows_on_one_scale(demo_model, question_trace, reference):
    heads = run_job(head_attention(question_trace, demo_model))
    gallery = head_gallery(heads, question_trace, 1, "1-2")
    query = question_trace.answer_position(1) - 1
    expected = reference[1:3, :, query][..., question_trace.image_positions]  # [2, H, 64]
    assert gallery.layers == [1, 2]
    np.testing.assert_allclose(gallery.maps[0].reshape(2, -1, 64), expected, atol=1e-6)
    assert gallery.levels == (0.0, pytest.approx(expected.max(), abs=1e-6))
    picture = render_gallery(gallery, question_trace, cell=40)
    assert picture.size[0] > 40 * gallery.heads and picture.size[1] > 40 * 2
    with pytest.raises(InputError, match="layer 9 does not exist"):
        head_gallery(heads, question_trace, 1, "9")


def test_patch_to_text_is_the_attention_mass_on_the_patches(demo_model, question_trace, reference):
    view = run_job(patch_text_attention(question_trace, demo_model))
    patches = [0, 1, 8, 27]
    keys = question_trace.image_positions[patches]
    expected = reference[np.ix_([0, 3], [1, 2])][:, :, view.queries][..., keys].sum(-1).mean(axis=(0, 1))
    np.testing.assert_allclose(view.scores(patches, "0,3", "1,2"), expected, atol=1e-6)
    # The prompt comes before the image in the demo template: it cannot attend to it.
    assert view.kinds.count("answer") == len(question_trace.answer_ids)
    prompt = [i for i, k in enumerate(view.kinds) if k == "prompt"]
    assert prompt and not view.sees_image[prompt].any()
    assert np.all(view.scores(range(64))[prompt] == 0)
    answers = view.scores(range(64))[view.sees_image]
    assert np.all((answers > 0) & (answers <= 1 + 1e-6))
    with pytest.raises(InputError, match="no image patch"):
        view.scores([])


def test_question_to_answer_matrix_and_words(demo_model, question_trace, reference):
    view = run_job(question_answer_attention(question_trace, demo_model))
    tokenizer = demo_model.processor.tokenizer
    prompt = prompt_text_positions(question_trace, tokenizer)
    queries = [question_trace.answer_position(t) - 1 for t in range(len(question_trace.answer_ids))]
    matrix, rows, columns = view.matrix(layers="-1", heads="all")
    np.testing.assert_allclose(matrix, reference[-1][:, queries][..., prompt].mean(axis=0), atol=1e-6)
    assert columns == ["what", "color", "is", "the", "circle", "?"] and rows == question_trace.answer_tokens
    words, word_rows, word_columns = view.matrix(layers="-1", words=True)
    np.testing.assert_allclose(words, matrix, atol=1e-12)  # a word-level tokenizer: one token per word
    assert word_columns == columns


class PieceTokenizer:
    """A sub-word tokenizer's decoding: "\u2581" marks a word's start, as SentencePiece writes it."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.pieces[i] for i in ids).replace("\u2581", " ").lstrip()


def test_sub_word_tokens_join_into_words_and_sum_their_attention():
    tokenizer = PieceTokenizer(["\u2581what", "\u2581col", "our", "\u2581is", "\u2581it", "?", "\u2581red", "dish"])
    words = token_words(tokenizer, [0, 1, 2, 3, 4, 5])
    assert [(w.text, w.tokens) for w in words] == [("what", (0,)), ("colour", (1, 2)), ("is", (3,)),
                                                   ("it", (4,)), ("?", (5,))]
    assert [w.tokens for w in token_words(tokenizer, [1, 2, 2], breaks=[2])] == [(0, 1), (2,)]

    from lvlm_studio.core.tracing.attention_views import QuestionAnswerAttention

    weights = np.random.default_rng(0).random((2, 2, 2, 6))
    view = QuestionAnswerAttention(weights, list(range(6)), ["what", "col", "our", "is", "it", "?"], ["red", "dish"],
                                   words, token_words(tokenizer, [6, 7]))
    matrix, rows, columns = view.matrix(words=True)
    mean = weights.mean(axis=(0, 1))
    assert rows == ["reddish"] and columns == ["what", "colour", "is", "it", "?"]
    np.testing.assert_allclose(matrix[0, 1], (mean[:, 1] + mean[:, 2]).mean())
    np.testing.assert_allclose(matrix[0, 0], mean[:, 0].mean())


def test_patches_under_a_click_or_a_drag(question_trace):
    regions = question_trace.regions  # one 8 x 8 grid over the image
    width, height = question_trace.image.size
    cell_w, cell_h = width / 8, height / 8
    assert patches_in_box(regions, (cell_w * 2.5, cell_h * 1.5, cell_w * 2.5, cell_h * 1.5)) == [8 + 2]
    dragged = patches_in_box(regions, (cell_w * 0.5, cell_h * 0.5, cell_w * 1.5, cell_h * 1.5))
    assert dragged == [0, 1, 8, 9]


def test_index_choices_are_checked():
    assert parse_indices("1-3", 5, "layer") == [1, 2, 3]
    assert parse_indices("-1,0", 5, "layer") == [4, 0]
    assert parse_indices(None, 3, "head") == [0, 1, 2]
    with pytest.raises(InputError, match="not a list of numbers"):
        parse_indices("one", 3, "head")


def test_views_need_the_model(question_trace):
    with pytest.raises(InputError, match="needs the model"):
        run_job(patch_text_attention(question_trace, None))


@pytest.mark.parametrize("family", ["qwen2_vl", "mllama"])
def test_tiny_families_match_the_full_attention(family, tmp_path_factory):
    """Where the image enters by cross-attention (Mllama), question -> answer still reads the
    decoder's self-attention; patch -> text reads the attention that sees the image."""
    from lvlm_studio.core.models.loading import LoadOptions, load_model
    from lvlm_studio.testing.tiny_models import build_tiny_model

    model = load_model(build_tiny_model(family, tmp_path_factory.mktemp(family)), LoadOptions(device="cpu"))
    trace = generate_trace(model, Image.new("RGB", (64, 40), (20, 20, 220)), "what is the colour?", max_new_tokens=3)
    if not len(trace.answer_ids):
        pytest.skip("the random model ended its answer at once")
    view = run_job(question_answer_attention(trace, model))
    inputs = trace.teacher_forced_inputs(model)
    with torch.no_grad(), attention_implementation(model.model, "eager"):
        out = model.model(**inputs, output_attentions=True, use_cache=False)
    modules = model.adapter.attention_modules()
    layers = [i for i, layer in enumerate(model.adapter.decoder_layers()) if hasattr(layer, "self_attn")]
    full = torch.stack([out.attentions[i] for i in layers])[:, 0].double().numpy()
    assert len(layers) == len(modules)
    queries = [trace.answer_position(t) - 1 for t in range(len(trace.answer_ids))]
    expected = full[:, :, queries][..., view.prompt_positions]
    np.testing.assert_allclose(view.weights, expected, atol=1e-5)
    texts = run_job(patch_text_attention(trace, model))
    assert texts.weights.shape[2:] == (len(texts.queries), len(trace.image_positions))
    assert np.isfinite(texts.scores([0])).all()


SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "shapes.png"


def test_the_command_writes_each_view(tmp_path):
    import csv

    from lvlm_studio.cli import EXIT_INPUT, main

    question = ["--image", str(SAMPLE), "--prompt", "what color is the circle?", "--device", "cpu"]
    assert main(["attention", "gallery", *question, "--token", "1", "--layers", "0-1", "--cell", "32",
                 "--out", str(tmp_path / "heads.png")]) == 0
    assert Image.open(tmp_path / "heads.png").size[1] > 2 * 32
    assert main(["attention", "patch-text", *question, "--box", "0,0,30,30", "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["kind"] for r in rows][-1] == "answer" and all(0 <= float(r["attention"]) <= 1 for r in rows)
    assert main(["attention", "question-answer", *question, "--words", "--out", str(tmp_path / "qa.npz")]) == 0
    saved = np.load(tmp_path / "qa.npz")
    assert saved["matrix"].shape == (len(saved["answer"]), len(saved["question"]))
    assert main(["attention", "question-answer", *question, "--out", str(tmp_path / "qa.txt")]) == EXIT_INPUT
    assert main(["attention", "patch-text", *question, "--out", str(tmp_path / "p2.csv")]) == EXIT_INPUT
