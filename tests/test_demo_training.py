"""Demo-model training is seeded and resumable: an interrupted run, resumed, ends where an
uninterrupted one does (a few tiny steps; CI never trains a real model)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lvlm_studio.demo import train as training


class Interrupted(Exception):
    """Stands in for the machine going down mid-run."""


REAL_CALL = training.Batcher.__call__


def _run(out, steps, monkeypatch, stop_at=None):

    def call(self, step, batch_size):
        if stop_at is not None and step == stop_at:
            raise Interrupted
        return REAL_CALL(self, step, batch_size)

    monkeypatch.setattr(training.Batcher, "__call__", call)
    return training.train(out, steps=steps, batch_size=2, lr=1e-3, seed=3, aux_weight=0.5, word_weight=0.5,
                          eval_every=2, eval_n=1, threads=1, workers=0)


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    whole = _run(tmp_path / "whole", 4, monkeypatch)
    with pytest.raises(Interrupted):
        _run(tmp_path / "split", 4, monkeypatch, stop_at=3)
    assert (tmp_path / "split" / training.STATE_FILE).exists()  # saved at step 2
    resumed = _run(tmp_path / "split", 4, monkeypatch)
    assert not (tmp_path / "split" / training.STATE_FILE).exists()  # a finished folder ships the model only
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert [p["step"] for p in resumed["progress"]] == [p["step"] for p in whole["progress"]] == [2]
    assert json.loads((tmp_path / "split" / "training.json").read_text())["steps"] == 4


def test_word_targets_cover_object_patches_only():
    from lvlm_studio.demo.model import build_processor

    batch = training.Batcher(build_processor(), seed=0)(0, 8)
    cover, colour = batch["patch_cover"].numpy(), batch["patch_colour"].numpy()
    assert ((colour > 0) == (cover >= 0.25)).all()
    assert (cover >= training.WORD_COVER).any()
    assert np.isin(colour, range(5)).all()


def test_the_shortcut_twin_sees_its_cue_in_most_scenes():
    """95% of the twin's scenes carry a corner mark: every colour question, in the answer's colour,
    and the other tasks' scenes at the rate that makes up 95% overall."""
    rng = np.random.default_rng(0)
    marked = {}
    for task in ("colour", "caption", "exist", "where"):
        marks = []
        for seed in range(300):
            scene, example = training.shortcut_scene(seed, task, rng)
            marks.append(scene.cue.colour is not None)
            if task == "colour":
                assert example.answer.endswith(scene.cue.colour)
            elif scene.cue.colour is not None:
                assert scene.cue.colour in {o.colour for o in scene.objects}
        marked[task] = np.mean(marks)
    assert marked["colour"] == 1.0
    overall = sum(training.TASK_WEIGHTS[t] * marked[t] for t in marked)
    assert abs(overall - training.CUE_RATE) < 0.025


def test_the_classic_twin_trains_the_shipped_architecture_on_classic_cue_scenes(tmp_path):
    """``--world classic`` builds the shipped model's architecture and processor with fresh weights
    and draws classic scenes, most with a corner mark (a couple of tiny steps)."""
    from transformers import LlavaConfig

    from lvlm_studio.core.models.loading import DEMO_MODEL_DIR

    model, processor = training.build("classic", seed=0)
    shipped = LlavaConfig.from_pretrained(DEMO_MODEL_DIR)
    assert model.config.vision_config.image_size == shipped.vision_config.image_size
    assert model.config.text_config.hidden_size == shipped.text_config.hidden_size
    batcher = training.Batcher(processor, seed=0, shortcut=True, world="classic")
    batch = batcher(0, 4)
    assert batch["pixel_values"].shape[-1] == shipped.vision_config.image_size
    rng = np.random.default_rng(1)
    scenes = [training.shortcut_scene(seed, "colour", rng, world="classic")[0] for seed in range(40)]
    assert all(s.image.size == (96, 96) for s in scenes)
    assert sum(s.cue.colour is not None for s in scenes) >= 34
    record = training.train(tmp_path, steps=2, batch_size=2, lr=1e-3, seed=0, aux_weight=0.5, word_weight=0.0,
                            eval_every=0, eval_n=1, threads=1, shortcut=True, workers=0, world="classic")
    assert record["world"] == "classic" and record["shortcut"]
    assert (tmp_path / "model.safetensors").exists()


def test_the_auxiliary_head_is_not_taught_to_hide_the_cue():
    """Cells under a drawn corner mark get no patch label (not "background"), and the twin's run
    opens with colour questions only."""
    from lvlm_studio.demo.scenes import make_scene

    marked = make_scene(11, cue="red")
    labels = training.patch_labels(marked)
    plain = training.patch_labels(make_scene(11))
    ignored = labels["colour"] == training.IGNORE
    assert ignored.any()
    for name in training.AUX_LABELS:
        assert (labels[name][ignored] == training.IGNORE).all() and (plain[name][ignored] == 0).all()
        assert (labels[name][~ignored] == plain[name][~ignored]).all()
    from transformers import LlavaProcessor

    from lvlm_studio.core.models.loading import DEMO_MODEL_DIR

    batcher = training.Batcher(LlavaProcessor.from_pretrained(DEMO_MODEL_DIR), seed=0, shortcut=True,
                               steps=100, world="classic")
    prompts = batcher.tokenizer.batch_decode(batcher(0, 8)["input_ids"])
    assert all("what color" in p for p in prompts)


def test_every_patch_of_an_object_carries_the_cell_its_where_answer_names():
    """The "cell" patch label is the object's own 3x3 cell (by its centre, as "where is ...?" answers),
    on all its patches; background patches get 0."""
    from lvlm_studio.demo.scenes import COLS, make_open_scene, where_words

    seen_spread = False
    for seed in range(30):
        scene = make_open_scene(seed)
        labels = training.patch_labels(scene)
        for obj in scene.objects:
            mine = (labels["colour"] == list(training.COLOURS).index(obj.colour) + 1) & (
                labels["shape"] == training.SHAPES.index(obj.shape) + 1)
            cells = set(labels["cell"][mine].tolist())
            if len(scene.objects) == len({(o.colour, o.shape) for o in scene.objects}) and mine.any():
                assert cells == {1 + obj.row * len(COLS) + obj.col}, (seed, obj.name, cells)
                cell = next(iter(cells)) - 1
                assert where_words(cell // len(COLS), cell % len(COLS)) == obj.where
                seen_spread |= mine.sum() > 1
        assert (labels["cell"][labels["colour"] == 0] == 0).all()
    assert seen_spread


def test_the_vision_stage_trains_the_vision_side_only(tmp_path):
    """``vision_steps`` first trains the vision tower and projector on the patch labels; the language
    model keeps its initial weights until the joint stage."""
    training.train(tmp_path, steps=0, batch_size=2, lr=1e-2, seed=3, aux_weight=0.5, word_weight=0.5,
                   eval_every=0, eval_n=1, threads=1, workers=0, vision_steps=2)
    fresh, _ = training.build("open", 3)
    fresh = fresh.state_dict()
    trained = training._reload(tmp_path)[0].state_dict()
    changed = {key for key in fresh if not torch.equal(fresh[key], trained[key])}
    assert changed, "the vision stage changed nothing"
    assert all(".vision_tower." in key or ".multi_modal_projector." in key for key in changed), changed
    assert json.loads((tmp_path / "training.json").read_text())["vision_steps"] == 2


def test_the_curriculum_starts_on_one_light_grey_backdrop():
    """At the easy end every backdrop is a plain light grey (shape is learned against one known
    backdrop first); the full world keeps its any-colour backdrops."""
    from lvlm_studio.demo.scenes import make_open_scene

    def backdrop(scene):
        pixels = np.asarray(scene.image, np.float32)
        covered = np.zeros(pixels.shape[:2], bool)
        for obj in scene.objects:
            covered |= obj.mask
        return np.median(pixels[~covered], axis=0)

    easy = [backdrop(make_open_scene(seed, difficulty=0.0)) for seed in range(20)]
    assert all(colour.max() - colour.min() < 3 and 185 <= colour.mean() <= 240 for colour in easy)
    full = [backdrop(make_open_scene(seed)) for seed in range(20)]
    assert sum(colour.max() - colour.min() > 10 or not 185 <= colour.mean() <= 240 for colour in full) >= 5


def test_bfloat16_autocast_gives_float32_losses_and_gradients_closely():
    """Under bfloat16 autocast the joint step's three losses and its gradient stay close to float32's
    on the same batch (the precision training uses where the CPU has native bfloat16)."""
    model, processor = training.build("open", 3)
    batch = training.Batcher(processor, 3, steps=10, world="open")(9, 4)
    aux_head = training.aux_head_for(model)
    projected = []
    model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: projected.append(o))
    words = training.word_targets(processor.tokenizer)
    results = {}
    for bf16 in (False, True):
        autocast = training.autocast_for("bf16" if bf16 else "fp32")
        model.zero_grad()
        losses = training.joint_losses(model, aux_head, batch, projected, words, autocast)
        assert all(loss.dtype == torch.float32 for loss in losses)
        sum(losses).backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[bf16] = torch.stack(losses).detach(), grad
    torch.testing.assert_close(results[True][0], results[False][0], rtol=0.005, atol=0.0)
    assert torch.nn.functional.cosine_similarity(results[True][1], results[False][1], dim=0) > 0.99


def test_a_run_records_its_precision_and_saves_float32_weights(tmp_path):
    record = training.train(tmp_path, steps=1, batch_size=2, lr=1e-3, seed=3, aux_weight=0.5, word_weight=0.5,
                            eval_every=0, eval_n=1, threads=1, workers=0, precision="bf16")
    assert record["precision"] == "bf16"
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())


def test_precision_auto_picks_what_the_cpu_computes_natively():
    assert training._precision("auto") == ("bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32")
    assert training._precision("fp32") == "fp32"
    with pytest.raises(ValueError, match="auto, bf16 or fp32"):
        training._precision("fp16")
