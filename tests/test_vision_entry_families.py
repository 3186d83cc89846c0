"""When vision enters (study 5) on every family's tiny model: the lens reproduces the model's output at
the last layer, and knockout runs over windows and changes nothing when it cuts nothing."""

import numpy as np
import torch

from lvlm_studio.core.models.capture import attention_implementation, image_attention_modules
from lvlm_studio.core.tracing.attention_stats import trace_stats
from lvlm_studio.core.tracing.vision_entry import attention_knockout, knocked_out, logit_lens


def test_lens_and_knockout_on_every_family(tiny_model, tiny_trace):
    trace = tiny_trace
    lens = logit_lens(tiny_model, trace)
    queries = [trace.answer_position(t) - 1 for t in range(len(trace.answer_ids))]
    inputs = trace.teacher_forced_inputs(tiny_model, upto=max(queries) + 1)
    with torch.no_grad():
        logits = tiny_model.model(**inputs, use_cache=False).logits[0, queries].float()
    own = torch.log_softmax(logits, -1).gather(1, torch.as_tensor(trace.answer_ids)[:, None])[:, 0].exp().numpy()
    np.testing.assert_allclose(lens.answer_prob[-1], own, rtol=1e-4, atol=1e-6)

    knockout = attention_knockout(tiny_model, trace, window=1)
    layers = len(image_attention_modules(tiny_model)[0])
    assert knockout.drop.shape == (layers, len(trace.answer_ids)) and np.isfinite(knockout.drop).all()
    assert np.isfinite(knockout.drop_all).all() and np.abs(knockout.drop_all).max() > 0  # the cut reached the model
    with torch.no_grad(), attention_implementation(tiny_model.model, "eager"):
        before = tiny_model.model(**inputs, use_cache=False).logits
        with knocked_out(tiny_model, [], queries, trace.image_positions):
            after = tiny_model.model(**inputs, use_cache=False).logits
    assert torch.equal(before, after)

    stats = trace_stats(tiny_model, trace)
    assert 0 <= stats["entropy"] <= 1 and 0 <= stats["fine_share"] <= 1 and stats["spread"] >= 0
