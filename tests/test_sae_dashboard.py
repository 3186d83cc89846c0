"""Feature dashboards: the one-pass cache against per-feature passes, its histograms, its logit
attribution computed by hand, the cache's reuse, the Neuronpedia export's fields, and the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sae_helpers import exact_coder

from lvlm_studio.cli import main
from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.hooks import run_with_cache
from lvlm_studio.core.plugin.jobs import run_job
from lvlm_studio.sae import dashboard as dash
from lvlm_studio.sae.activations import image_inputs
from lvlm_studio.sae.inspect import top_patches

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Five demo scenes as a folder of PNGs (so the per-feature pass of ``inspect`` can read them)."""
    from lvlm_studio.demo.scenes import make_scene

    folder = tmp_path_factory.mktemp("scenes")
    for seed in range(5):
        make_scene(2_000_000_300 + seed).image.save(folder / f"scene{seed}.png")
    return folder


@pytest.fixture(scope="module")
def built(demo_model, scenes):
    coder = exact_coder(HOOK)
    images = dash.folder_image_set(scenes)
    key = dash.cache_key(coder, "test", images, "demo", top_k=4)
    return coder, images, run_job(dash.build_dashboard(demo_model, coder, images, key, top_k=4, batch=2,
                                                       attribution=False))


def test_one_pass_top_k_equals_a_pass_per_feature(demo_model, scenes, built):
    coder, images, board = built
    paths = [scenes / name for name in images.ids]
    for feature in (0, 7, 130, 200):  # relu(x) and relu(-x) features
        hits = run_job(top_patches(demo_model, coder, paths, feature, n=4, batch=3))
        expected = [(h.image.rsplit("/", 1)[-1], h.row * 8 + h.col, h.activation) for h in hits if h.activation > 0]
        got = [(e["image"], e["patch"], e["activation"]) for e in board.examples(feature)]
        assert [g[:2] for g in got] == [e[:2] for e in expected]
        np.testing.assert_allclose([g[2] for g in got], [e[2] for e in expected], atol=1e-5)


def test_windows_crops_density_and_histograms_match_the_features(demo_model, built):
    from lvlm_studio.sae.inspect import image_features

    coder, images, board = built
    everything = np.stack([image_features(demo_model, coder, images.open(i)) for i in range(len(images.ids))])
    flat = everything.reshape(-1, coder.cfg.d_sae)
    np.testing.assert_array_equal(board.nonzero, (flat > 0).sum(axis=0))
    assert board.n_patches == 5 * 64
    for feature in (3, 140):
        edges, counts = board.histogram(feature)
        values = flat[:, feature][flat[:, feature] > 0]
        assert values.max() < edges[-1] <= 2 * values.max()  # the range is the next power of two
        expected = np.minimum((values / edges[-1] * dash.BINS).astype(int), dash.BINS - 1)
        np.testing.assert_array_equal(counts, np.bincount(expected, minlength=dash.BINS))
        example = board.examples(feature)[0]
        grid = everything[example["image_index"], ..., feature]
        r, c = example["row"], example["col"]
        window = np.pad(grid, 1, constant_values=np.nan)[r:r + 3, c:c + 3].ravel()
        np.testing.assert_allclose(example["window"], window, atol=1e-5)
        assert example["crop"].shape == (dash.CROP, dash.CROP, 3) and example["crop"].max() > 0
    corner = dash.crop(images.open(0), (8, 8), 0, 0)  # beyond the image's edge: grey padding
    assert (corner[:dash.CROP // 3 - 1, :dash.CROP // 3 - 1] == dash.PAD).all()
    middle = np.asarray(images.open(0).crop((0, 0, 12, 12)).resize((16, 16), 0))  # patch (0, 0) itself
    np.testing.assert_array_equal(corner[16:32, 16:32], middle)


def test_histograms_grow_by_merging_bins_and_stay_exact():
    rng = np.random.default_rng(0)
    batches = [rng.exponential(scale, size=(50, 3)) * (rng.random((50, 3)) < 0.5) for scale in (0.1, 1.0, 30.0)]
    histograms = dash._Histograms(3)
    for values in batches:
        histograms.add(values)
    everything = np.concatenate(batches)
    for feature in range(3):
        top = 2.0 ** histograms.exponent[feature]
        values = everything[:, feature][everything[:, feature] > 0]
        assert values.max() < top <= 2 * values.max()
        expected = np.minimum((values / top * dash.BINS).astype(int), dash.BINS - 1)
        np.testing.assert_array_equal(histograms.counts[feature], np.bincount(expected, minlength=dash.BINS))


def test_logit_attribution_follows_the_projector_and_the_lm_head(demo_model, demo_scene):
    """At the projector's input a direction is pushed through the projector (at the step given) and
    read by the final norm and the LM head; computed here by hand from the modules themselves."""
    coder = exact_coder("hook_projector_in")
    steps = np.full(coder.cfg.d_sae, 2.0)
    result = run_job(dash.logit_attribution(demo_model, coder, demo_scene.image, steps, batch=64, n_tokens=5))
    _, cache = run_with_cache(demo_model, image_inputs(demo_model, [demo_scene.image]), ["hook_projector_in"])
    x = cache["hook_projector_in"][0].float()
    projector, adapter = demo_model.adapter.projector(), demo_model.adapter
    gain = adapter.final_norm().weight.detach().float()
    unembed = adapter.lm_head_weight().float()
    for feature in (0, 5, 200):
        direction = coder.W_dec[feature].detach()
        with torch.no_grad():
            effect = (projector(x + 2.0 * direction) - projector(x)).mean(dim=0) / 2.0
        logits = (gain * effect) @ unembed.T
        order = torch.argsort(logits, descending=True)
        assert result.pos_ids[feature].tolist() == order[:5].tolist()
        np.testing.assert_allclose(result.pos_values[feature], logits[order[:5]].numpy(), rtol=1e-3, atol=1e-4)
        assert result.neg_ids[feature].tolist() == order.flip(0)[:5].tolist()
        assert result.hist_counts[feature].sum() == unembed.shape[0]


def test_the_cache_is_reused_only_for_the_same_key(built, tmp_path):
    coder, images, board = built
    dash.save_cache(board, tmp_path)
    again = dash.load_cache(tmp_path, board.key)
    assert again is not None and again.image_ids == board.image_ids and again.grid == board.grid
    for name in dash._ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(again, name), getattr(board, name))
    assert dash.load_cache(tmp_path, {**board.key, "sae_sha256": "other"}) is None
    assert dash.load_cache(tmp_path / "missing", board.key) is None
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_coder_hash_and_image_set_keys_change_with_their_files(tmp_path, scenes):
    (tmp_path / "cfg.json").write_text("{}")
    first = dash.coder_hash(tmp_path)
    (tmp_path / "cfg.json").write_text('{"d_sae": 2}')
    assert dash.coder_hash(tmp_path) != first
    assert dash.folder_image_set(scenes).key != dash.folder_image_set(scenes, limit=2).key
    assert dash.demo_image_set(3).ids[0] == "scene-2000000000"
    with pytest.raises(InputError, match="no scenes"):
        dash.demo_image_set(0)
    with pytest.raises(InputError, match="feature 99 does not exist"):
        dash.feature_list("3,99", 10)
    assert dash.feature_list("1,4-6", 10) == [1, 4, 5, 6]


#: The fields of a sae-dashboard / Neuronpedia feature, and of one of its activation records.
FEATURE_FIELDS = {
    "feature_index": int, "neuron_alignment_indices": list, "neuron_alignment_values": list,
    "neuron_alignment_l1": list, "correlated_neurons_indices": list, "correlated_neurons_l1": list,
    "correlated_neurons_pearson": list, "correlated_features_indices": list, "correlated_features_l1": list,
    "correlated_features_pearson": list, "neg_str": list, "neg_values": list, "pos_str": list, "pos_values": list,
    "frac_nonzero": float, "freq_hist_data_bar_values": list, "freq_hist_data_bar_heights": list,
    "logits_hist_data_bar_heights": list, "logits_hist_data_bar_values": list, "n_prompts_total": int,
    "n_tokens_in_prompt": int, "dataset": str, "decoder_weights_dist": list, "activations": list,
}
ACTIVATION_FIELDS = {"bin_min": (int, float), "bin_max": (int, float), "bin_contains": (int, float), "tokens": list,
                     "values": list, "qualifying_token_index": int}


def test_the_command_writes_the_cache_sheets_and_a_neuronpedia_export(tmp_path, scenes, capsys):
    from lvlm_studio.sae.formats import save_saelens

    sae = tmp_path / "sae"
    save_saelens(exact_coder(HOOK), sae)
    out = tmp_path / "dash"
    args = ["sae", "dashboard", str(sae), "--device", "cpu", "--images", str(scenes), "--top-k", "3",
            "--features", "0,7", "--export", "neuronpedia", "--out", str(out)]
    assert main(args) == 0
    assert (out / "cache" / dash.ARRAYS).is_file() and (out / "features" / "feature00007.png").is_file()
    assert "| 7 |" in (out / "dashboard.md").read_text()
    batch = json.loads((out / "neuronpedia" / "batch-0.json").read_text())
    assert {"model_id", "layer", "sae_set", "features"} <= set(batch) and batch["layer"] == 2
    for feature in batch["features"]:
        for name, kind in FEATURE_FIELDS.items():
            assert isinstance(feature[name], kind), name
        assert len(feature["pos_str"]) == len(feature["pos_values"]) == dash.LOGIT_TOKENS
        assert len(feature["freq_hist_data_bar_values"]) == len(feature["freq_hist_data_bar_heights"]) == dash.BINS
        assert 0 < feature["frac_nonzero"] <= 1 and feature["n_tokens_in_prompt"] == 64
        for record in feature["activations"]:
            for name, kind in ACTIVATION_FIELDS.items():
                assert isinstance(record[name], kind), name
            assert len(record["tokens"]) == len(record["values"])
            assert record["values"][record["qualifying_token_index"]] == pytest.approx(record["bin_max"], abs=1e-3)
    skipped = json.loads((out / "neuronpedia" / "skipped_indexes.json").read_text())
    exported = {f["feature_index"] for name in (out / "neuronpedia").glob("batch-*.json")
                for f in json.loads(name.read_text())["features"]}
    assert exported | set(skipped["skipped_indexes"]) == set(range(256))
    capsys.readouterr()
    stamp = (out / "cache" / dash.ARRAYS).stat().st_mtime_ns
    assert main(args[:-2] + ["--features", "3", "--out", str(out)]) == 0  # same key: the cache is reused
    assert (out / "cache" / dash.ARRAYS).stat().st_mtime_ns == stamp
    assert "reusing the cache" in capsys.readouterr().err
    assert main([*args[:7], "--top-k", "2", "--out", str(out)]) == 2  # another dashboard: not over this one
