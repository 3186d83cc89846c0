"""The pointing game on the demo model: pairing words with objects, intervals, the table, the CLI."""

import numpy as np
import pytest

from lvlm_studio.cli import main
from lvlm_studio.core.plugin.jobs import run_job
from lvlm_studio.demo.pointing import (
    RANDOM,
    format_table,
    named_objects,
    peak_pixels,
    pointing_game,
    reachable,
    wilson_interval,
)
from lvlm_studio.demo.scenes import COLOURS, SHAPES, make_scene


def test_wilson_interval():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def three_object_scene():
    """A scene of three objects where two share a colour or a shape: a union mask would be wrong."""
    def repeats(scene):
        return len({o.colour for o in scene.objects}) < 3 or len({o.shape for o in scene.objects}) < 3

    return next(s for s in map(make_scene, range(200)) if len(s.objects) == 3 and repeats(s))


def test_words_name_the_object_in_reading_order():
    scene = three_object_scene()
    objects = sorted(scene.objects, key=lambda o: (o.row, o.col))
    tokens = scene.caption().replace(",", " ,").split()
    masks = named_objects(scene, tokens)
    colours = [i for i, t in enumerate(tokens) if t in COLOURS]
    shapes = [i for i, t in enumerate(tokens) if t in SHAPES]
    assert sorted(masks) == sorted(colours + shapes)  # "a", "," and "and" are not trials
    for k, obj in enumerate(objects):
        assert np.array_equal(masks[colours[k]], obj.mask)
        assert np.array_equal(masks[shapes[k]], obj.mask)


def test_misnamed_and_hallucinated_words():
    scene = three_object_scene()
    objects = sorted(scene.objects, key=lambda o: (o.row, o.col))
    first = objects[0]
    other_colour = next(c for c in COLOURS if c not in {o.colour for o in objects})
    assert objects[1].colour != first.colour  # so the second phrase's colour misnames its object
    # Second phrase names the first object again: scored against every object with that colour.
    masks = named_objects(scene, ["a", first.colour, first.shape, "and", "a", first.colour, other_colour])
    assert np.array_equal(masks[1], first.mask)
    assert np.array_equal(masks[5], scene.mask_for_word(first.colour))
    assert 6 not in masks  # a colour no object has: nothing to point at


@pytest.fixture(scope="module")
def small_game(demo_model, lvlm_registry):
    return run_job(pointing_game(demo_model, n=3, registry=lvlm_registry))


def test_a_row_per_method_plus_random(small_game, lvlm_registry):
    rows = [score.method for score in small_game.scores]
    assert rows[-1] == RANDOM
    assert sorted(rows[:-1] + list(small_game.failed)) == sorted(lvlm_registry.explainers())
    assert "raw_attention" in rows and "tam" in rows
    assert small_game.trials > 0
    for score in small_game.scores:
        assert score.total == small_game.trials
        assert 0.0 <= score.rate <= 1.0
        low, high = score.interval
        assert 0.0 <= low <= score.rate <= high <= 1.0
    assert 0.0 < small_game.expected_random < 0.5
    assert all(score.rate <= small_game.ceiling <= 1.0 for score in small_game.scores)
    table = format_table(small_game)
    for method in rows:
        assert f"| {method} |" in table


def test_the_random_row_is_seeded(demo_model, lvlm_registry, small_game):
    again = run_job(pointing_game(demo_model, n=3, methods=["tam"], registry=lvlm_registry))
    assert again.scores[-1] == small_game.scores[-1]
    assert [s.method for s in again.scores] == ["tam", RANDOM]


def test_cli(tmp_path, capsys):
    out = tmp_path / "table.md"
    assert main(["demo", "pointing", "--n", "2", "--methods", "tam", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| tam |" in printed and f"| {RANDOM} |" in printed
    assert out.read_text() == printed
    assert main(["demo", "pointing", "--methods", "nonexistent"]) == 2


def test_the_game_plays_on_the_world_asked(demo_model, lvlm_registry, monkeypatch):
    """``world="open"`` draws the held-out scenes with the open world's generator and says so."""
    from lvlm_studio.demo import pointing, scenes

    drawn = []

    def open_scene(seed, **kwargs):
        drawn.append(seed)
        return scenes.make_open_scene(seed, **kwargs)

    monkeypatch.setitem(scenes.WORLDS, "open", open_scene)
    result = run_job(pointing.pointing_game(demo_model, n=2, methods=["raw_attention"], registry=lvlm_registry,
                                            world="open"))
    assert drawn == [pointing.HELDOUT_SEED_BASE, pointing.HELDOUT_SEED_BASE + 1]
    assert "2 held-out open-world scenes" in format_table(result)
    with pytest.raises(ValueError, match="unknown world"):
        run_job(pointing.pointing_game(demo_model, n=1, methods=["raw_attention"], registry=lvlm_registry,
                                       world="nowhere"))


def padded_trace(width: int = 100, height: int = 40, grid: int = 8):
    """A stand-in trace: one grid over a wide image padded to a square (as the demo processor does)."""
    from types import SimpleNamespace

    from lvlm_studio.core.plugin.adapter import ImageRegion

    top = -((width - height) // 2)
    box = (0.0, float(top), float(width), float(top + width))
    return SimpleNamespace(regions=[ImageRegion("base", 0, np.arange(grid * grid), (grid, grid), box)])


def test_maps_peak_only_where_the_ceiling_looks():
    """Wherever a resampled map peaks, that pixel is at one of ``peak_pixels``' rows and columns. So
    an object holding none of those pixels can be hit by no map."""
    from lvlm_studio.core.plugin.explanation import to_pixels

    trace = padded_trace()
    [(ys, xs)] = peak_pixels(trace.regions, (100, 40))
    rng = np.random.default_rng(0)
    for _ in range(300):
        grid = rng.random((8, 8)) ** rng.uniform(0.2, 5)  # flat to spiky
        pixels = to_pixels([grid], trace.regions, (100, 40))
        y, x = np.unravel_index(np.nanargmax(pixels), pixels.shape)
        assert y in ys and x in xs
    assert len(ys) < 40 / 2 and len(xs) < 100 / 4  # a few pixels per cell centre, not every pixel
    # A small object between cell centres cannot be hit; one on a centre's pixel can.
    between = np.zeros((40, 100), bool)
    between[18:22, 11:14] = True  # columns 11-13 lie between the centres at 6.25 and 18.75
    over = np.zeros((40, 100), bool)
    over[ys[0], xs[0]] = True
    assert not reachable(trace.regions, between) and reachable(trace.regions, over)
