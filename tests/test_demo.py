"""The demo world and the embedded demo model that every grounded check stands on."""

import numpy as np

from lvlm_studio.demo.model import GRID, build_processor, pixel_values
from lvlm_studio.demo.scenes import COLOURS, SHAPES, TASKS, make_example, make_scene, vocabulary


def test_scenes_are_reproducible_and_varied():
    a, b = make_scene(5), make_scene(5)
    np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.caption() == b.caption()
    scenes = [make_scene(s) for s in range(300)]
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert {o.colour for s in scenes for o in s.objects} == set(COLOURS)
    assert len({o.radius for s in scenes for o in s.objects}) > 3


def test_masks_are_where_the_colour_is():
    scene = make_scene(11, n_objects=3)
    pixels = np.asarray(scene.image).astype(int)
    for obj in scene.objects:
        assert obj.mask.sum() > 150
        inside = pixels[obj.mask].mean(axis=0)
        assert np.abs(inside - np.array(COLOURS[obj.colour])).max() < 30
        assert scene.mask_for_word(obj.shape) is not None
    union = np.logical_or.reduce([o.mask for o in scene.objects])
    assert (pixels[~union].min(axis=1) > 150).all()  # background is light grey


def test_caption_reads_top_row_first_then_left_to_right():
    scene = make_scene(3, n_objects=3)
    ordered = sorted(scene.objects, key=lambda o: (o.row, o.col))
    assert scene.caption() == ", ".join(f"a {o.name}" for o in ordered[:-1]) + f" and a {ordered[-1].name}"


def test_every_question_has_one_right_answer():
    rng = np.random.default_rng(0)
    for seed in range(200):
        scene = make_scene(seed)
        for task in TASKS:
            example = make_example(scene, task, rng)
            if task == "exist":
                colour, shape = example.prompt.removeprefix("is there a ").removesuffix("?").split()
                present = any(o.colour == colour and o.shape == shape for o in scene.objects)
                verdict = "is there" if present else "is not there"
                assert example.answer == f"the {colour} {shape} {verdict}"
            if task == "colour":  # the answer restates the subject, then names its colour
                subject = example.prompt.removeprefix("what color is ").removesuffix("?")
                colour = example.answer.removeprefix(subject + " is ")
                assert colour in COLOURS
                assert any(o.colour == colour and o.shape in subject for o in scene.objects)
            if task == "where":
                name = example.prompt.removeprefix("where is the ").removesuffix("?")
                (obj,) = [o for o in scene.objects if o.name == name]
                assert example.answer == f"the {name} is at the {obj.where}"


def test_tokenizer_knows_every_word():
    tokenizer = build_processor().tokenizer
    unk = tokenizer.unk_token_id
    rng = np.random.default_rng(1)
    for seed in range(100):
        scene = make_scene(seed)
        for task in TASKS:
            example = make_example(scene, task, rng)
            ids = tokenizer(example.prompt + " " + example.answer)["input_ids"]
            assert unk not in ids
            assert tokenizer.decode(tokenizer(example.answer, add_special_tokens=False)["input_ids"]) == example.answer
    assert len(vocabulary()) == len(set(vocabulary()))


def test_fast_pixel_path_equals_the_processor():
    processor = build_processor()
    images = [make_scene(s).image for s in range(3)]
    expected = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(pixel_values(images).numpy(), expected.numpy(), atol=1e-6)


def test_processor_expands_one_image_into_the_grid():
    processor = build_processor()
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image."}]}],
        add_generation_prompt=True,
    )
    ids = processor(images=make_scene(0).image, text=text)["input_ids"][0]
    assert list(ids).count(processor.tokenizer.convert_tokens_to_ids("<image>")) == GRID * GRID


def test_shipped_demo_model_is_small_and_safe():
    from lvlm_studio.core.models.loading import DEMO_MODEL_DIR

    files = {p.name for p in DEMO_MODEL_DIR.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert sum(p.stat().st_size for p in DEMO_MODEL_DIR.iterdir()) < 15 * 2**20


def test_demo_model_reaches_95_percent_on_every_task(capsys):
    """The acceptance figure, through the command a user runs: 500 held-out scenes per task."""
    from lvlm_studio import cli

    code = cli.main(["demo", "accuracy", "--n", "500", "--device", "cpu", "--minimum", "0.95"])
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
