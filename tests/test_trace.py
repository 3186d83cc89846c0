"""The Trace: what one generation caches, and that it survives a round trip to disk."""

import numpy as np
import pytest
import torch
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.images import open_image
from lvlm_studio.core.tracing.trace import Trace, generate_trace


def test_trace_answers_with_probabilities_and_alternatives(demo_trace):
    n = len(demo_trace.answer_ids)
    assert n > 0 and len(demo_trace.answer_tokens) == n
    assert demo_trace.logprobs.shape == (n,) and (demo_trace.logprobs <= 0).all()
    assert demo_trace.top_ids.shape == (n, 5)
    # Greedy decoding picks the most likely token at every step.
    assert (demo_trace.top_ids[:, 0] == demo_trace.answer_ids).all()
    np.testing.assert_allclose(demo_trace.top_logprobs[:, 0], demo_trace.logprobs, atol=1e-5)
    assert demo_trace.answer_text == demo_trace.generation["answer_text"]
    assert demo_trace.generation["stopped"] == "end of sequence"


def test_hidden_states_are_the_normed_last_layer(demo_model, demo_trace):
    """The LM head applied to the cached state at p-1 gives back the answer token's log-prob."""
    seq = len(demo_trace.sequence_ids)
    assert demo_trace.hidden.shape == (seq, demo_model.model.config.text_config.hidden_size)
    head = demo_model.adapter.lm_head()
    start = demo_trace.answer_start
    with torch.no_grad():
        logits = head(torch.from_numpy(demo_trace.hidden[start - 1 : seq - 1]))
    logprobs = torch.log_softmax(logits, -1).gather(1, torch.from_numpy(demo_trace.answer_ids)[:, None])[:, 0]
    np.testing.assert_allclose(logprobs.numpy(), demo_trace.logprobs, atol=1e-4)


def test_regions_cover_the_image_tokens(demo_model, demo_trace):
    (region,) = demo_trace.regions
    assert region.grid == (8, 8)
    assert region.box == (0.0, 0.0, 96.0, 96.0)
    image_token = demo_model.model.config.image_token_id
    assert (demo_trace.input_ids[region.positions] == image_token).all()
    assert (demo_trace.input_ids == image_token).sum() == 64


def test_save_and_load_round_trip(demo_trace, tmp_path):
    path = demo_trace.save(tmp_path / "caption.trace.safetensors")
    loaded = Trace.load(path)
    for name in ("input_ids", "answer_ids", "logprobs", "top_ids", "top_logprobs", "hidden"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(demo_trace, name))
    assert loaded.answer_tokens == demo_trace.answer_tokens
    assert loaded.top_tokens == demo_trace.top_tokens
    assert [r.to_dict() for r in loaded.regions] == [r.to_dict() for r in demo_trace.regions]
    np.testing.assert_array_equal(np.asarray(loaded.image), np.asarray(demo_trace.image))
    assert set(loaded.model_inputs) == set(demo_trace.model_inputs)
    assert b"pickle" not in path.read_bytes()[:2000]


def test_loading_something_else_is_a_clear_error(tmp_path):
    bogus = tmp_path / "not-a-trace.safetensors"
    bogus.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="not an LVLM Studio trace"):
        Trace.load(bogus)
    with pytest.raises(InputError, match="does not exist"):
        Trace.load(tmp_path / "missing.safetensors")


def test_sampling_is_reproducible_with_a_seed(demo_model, demo_scene):
    runs = [generate_trace(demo_model, demo_scene.image, "describe the image.", do_sample=True, seed=3,
                           temperature=1.5) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].answer_ids, runs[1].answer_ids)


def test_odd_images_are_converted_or_refused(tmp_path):
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 0))
    assert open_image(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent shows as white
    assert open_image(Image.new("L", (12, 12), 7)).mode == "RGB"
    assert open_image(Image.new("P", (12, 12))).mode == "RGB"
    with pytest.raises(InputError, match="too small"):
        open_image(Image.new("RGB", (1, 30)))
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputError, match="could not be read"):
        open_image(corrupt)
    with pytest.raises(InputError, match="does not exist"):
        open_image(tmp_path / "missing.png")


def test_empty_prompt_is_refused(demo_model, demo_scene):
    with pytest.raises(InputError, match="prompt is empty"):
        generate_trace(demo_model, demo_scene.image, "   ")


def test_every_family_gives_a_consistent_trace(tiny_model):
    image = Image.new("RGB", (80, 48), (200, 30, 30))
    trace = generate_trace(tiny_model, image, "describe the image.", max_new_tokens=4)
    assert 0 < len(trace.answer_ids) <= 4 or trace.generation["stopped"] == "end of sequence"
    assert trace.hidden.shape[0] == len(trace.sequence_ids)
    assert trace.regions and all(len(r.positions) == r.grid[0] * r.grid[1] for r in trace.regions)
    if tiny_model.adapter.image_entry == "tokens":  # else positions index cross-attention keys (Mllama)
        assert trace.image_positions.max() < trace.answer_start
