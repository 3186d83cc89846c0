"""The clinical review's core: the grounding assessment, its combination and calibration, the case
report and the headless ``lvlm-studio review`` (docs/REVIEW.md)."""

from __future__ import annotations

import csv
import json
import math
import re
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lvlm_studio.core.plugin.jobs import collect, run_job
from lvlm_studio.review.assessment import (
    Assessment,
    Measured,
    ReviewSettings,
    assess,
    critical_region,
    key_tokens,
    steps,
    subject_tokens,
    verdict,
)
from lvlm_studio.review.combine import SIGNALS, Combiner, auroc, bootstrap_auroc, fit

CHEAP = ("tam", "raw_attention")  # the two quickest methods, for tests that only need maps


@pytest.fixture(scope="module")
def settings():
    return replace(ReviewSettings(), methods=CHEAP)


@pytest.fixture(scope="module")
def scene_assessment(demo_model, demo_scene, settings, lvlm_registry):
    return collect(assess(demo_model, demo_scene.image, "describe the image.", settings, lvlm_registry))


# -- the assessment -------------------------------------------------------------------------------
def test_an_assessment_of_a_demo_scene_is_sane(scene_assessment, demo_scene, settings):
    result, progress = scene_assessment
    assert isinstance(result, Assessment)
    assert result.answer and result.question == "describe the image."
    assert 0.0 <= result.probability <= 1.0
    assert 0.0 <= result.consistency <= 1.0
    assert result.confidence in ("high", "medium", "low")
    assert (result.decision == "defer") == (result.confidence == "low")
    assert (result.decision == "defer") == (result.consistency < settings.threshold_defer)
    if result.decision == "defer":
        assert result.reasons and result.verdict().startswith("Defer to a human expert")
    assert result.key_tokens and all(0 <= t < len(result.trace.answer_ids) for t in result.key_tokens)
    assert result.probability == pytest.approx(float(np.prod(result.trace.probabilities[result.key_tokens])))
    assert set(result.signals) == set(SIGNALS)
    for name in ("probability", "entropy", "llr", "relevance_odds", "rank_agreement", "region_overlap", "on_image",
                 "mask_drop", "keep_drop", "blur_change", "answer_seen"):
        assert math.isfinite(result.signals[name]), name
    assert math.isnan(result.signals["subject_seen"])  # "describe the image." names no subject
    width, height = demo_scene.image.size
    assert set(result.maps) == set(CHEAP) == set(result.methods)
    for pixels in result.maps.values():
        assert pixels.shape == (height, width)
        assert np.nanmin(pixels) >= 0.0 and np.nanmax(pixels) <= 1.0
    assert result.regions
    for contour in result.regions:
        assert contour.ndim == 2 and contour.shape[1] == 2
        assert contour[:, 0].min() >= 0 and contour[:, 0].max() <= height - 1
        assert contour[:, 1].min() >= 0 and contour[:, 1].max() <= width - 1
    assert result.critical_mask is not None and 0 < result.critical_mask.mean() <= 0.5
    assert result.thresholds["defer"] == settings.threshold_defer
    assert result.thresholds["high"] == settings.threshold_high
    json.dumps(result.to_dict(), allow_nan=False)
    assert "maps" not in result.to_dict()
    # A job like the others: monotone progress, every report out of the same total.
    assert progress[0].done == 0 and {p.total for p in progress} == {steps(settings)}
    assert [p.done for p in progress] == sorted(p.done for p in progress)


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_a_blank_or_noise_image_is_deferred(demo_model, settings, lvlm_registry, kind):
    rng = np.random.default_rng(3)
    if kind == "blank":
        image = Image.new("RGB", (120, 90), (128, 128, 128))
    else:
        image = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), "RGB")
    result = run_job(assess(demo_model, image, "describe the image.", settings, lvlm_registry))
    assert result.decision == "defer", (result.answer, result.consistency, result.signals)
    assert result.confidence == "low" and result.reasons


def test_key_words_are_what_the_answer_adds_and_the_subject_what_it_repeats(demo_model, demo_scene):
    from lvlm_studio.core.tracing.trace import generate_trace

    trace = generate_trace(demo_model, demo_scene.image, "what color is the circle?")
    words = [t.strip() for t in trace.answer_tokens]
    for t in key_tokens(trace):
        assert words[t] not in ("what", "color", "is", "the", "circle")
    assert all(words[t] == "circle" for t in subject_tokens(trace))


def test_a_failing_method_is_named_and_the_others_still_count(demo_model, demo_scene, lvlm_registry):
    from lvlm_studio.core.errors import InputError

    class Broken:
        def explainer(self, method):
            if method == "broken":
                raise InputError("no explanation method 'broken'.", "")
            return lvlm_registry.explainer(method)

    settings = replace(ReviewSettings(), methods=("tam", "broken"))
    result = run_job(assess(demo_model, demo_scene.image, "describe the image.", settings, Broken()))
    assert result.methods == ["tam"]
    assert any("broken" in reason for reason in result.reasons)
    assert any("only one method" in reason for reason in result.reasons)


def _measured(signals: dict[str, float], keys=(1,), methods=("a", "b")) -> Measured:
    class FakeTrace:
        prompt = "what color is the circle?"
        answer_text = "the circle is red"
        answer_tokens = ["the", "circle", "is", "red"]
        model_info = {"family": "llava"}

    return Measured(FakeTrace(), list(keys), [], signals, {}, None, [], [], list(methods))


def test_the_verdict_follows_the_thresholds_and_names_every_failing_signal():
    combiner = Combiner(("llr", "rank_agreement"), np.zeros(2), np.ones(2), np.array([1.0, 1.0]), 0.0, {})
    settings = replace(ReviewSettings(), combiner=combiner, threshold_defer=0.5, threshold_high=0.9,
                       cutoffs={"llr": 1.0, "rank_agreement": 0.3})
    good = verdict(_measured({"llr": 3.0, "rank_agreement": 0.8}), settings)
    assert (good.decision, good.confidence, good.reasons) == ("accept", "high", [])
    medium = verdict(_measured({"llr": 0.5, "rank_agreement": 0.8}), settings)
    assert medium.decision == "accept" and medium.confidence == "medium"
    assert len(medium.reasons) == 1 and "hardly depends on the image" in medium.reasons[0]
    weak = verdict(_measured({"llr": -1.0, "rank_agreement": 0.1}), settings)
    assert (weak.decision, weak.confidence) == ("defer", "low")
    assert len(weak.reasons) == 2 and any("disagree on where the evidence is" in r for r in weak.reasons)
    assert weak.verdict().startswith("Defer to a human expert: ")
    silent = verdict(_measured({"llr": 1.5, "rank_agreement": 0.35}),
                     replace(settings, threshold_defer=0.99, threshold_high=0.995))
    assert silent.decision == "defer" and "weak together" in silent.reasons[0]
    empty = verdict(_measured({}, keys=(), methods=()), settings)
    assert empty.decision == "defer" and empty.reasons == ["the model gave no answer"]
    # Whatever the calibration: an answer the image made no difference to is deferred.
    blind = verdict(_measured({"llr": 0.0, "relevance_odds": 0.0, "rank_agreement": 0.9, "mask_drop": 0.0,
                               "blur_change": 0.0}),
                    replace(settings, threshold_defer=0.0, threshold_high=0.0))
    assert blind.decision == "defer" and blind.consistency == 0.0
    assert "does not come from the image" in blind.reasons[0]


def test_settings_refuse_bad_thresholds():
    from lvlm_studio.core.errors import InputError

    with pytest.raises(InputError, match="threshold_defer"):
        replace(ReviewSettings(), threshold_defer=math.nan)
    with pytest.raises(InputError, match="below"):
        replace(ReviewSettings(), threshold_defer=0.8, threshold_high=0.5)
    with pytest.raises(InputError, match="no explanation method"):
        replace(ReviewSettings(), methods=())


def test_the_shipped_calibration_loads_and_round_trips(tmp_path):
    from lvlm_studio.review.assessment import CALIBRATION_FILE

    settings = ReviewSettings.from_file(CALIBRATION_FILE)
    assert settings.methods == ReviewSettings().methods
    assert 0 <= settings.threshold_defer <= settings.threshold_high <= 1
    assert len(settings.methods) >= 2
    combiner = Combiner.from_dict(settings.combiner.to_dict())
    assert combiner.names == settings.combiner.names
    assert (combiner.weights >= 0).all()
    damaged = tmp_path / "calibration.json"
    damaged.write_text(json.dumps({"format": "something else"}))
    from lvlm_studio.core.errors import InputError

    with pytest.raises(InputError, match="not a review calibration"):
        ReviewSettings.from_file(damaged)


def test_the_critical_region_is_the_consensus_peak():
    a = np.zeros((40, 60))
    a[10:20, 30:45] = 1.0
    b = a * 0.5 + 0.01
    mask, contours = critical_region({"a": a, "b": b})
    assert mask[15, 35] and not mask[0, 0] and mask.sum() <= 0.2 * mask.size
    assert len(contours) == 1
    rows, cols = contours[0][:, 0], contours[0][:, 1]
    assert 8.5 <= rows.min() <= 10 and 19 <= rows.max() <= 20.5 and 28.5 <= cols.min() <= 30
    flat, outline = critical_region({"a": np.ones((10, 10))})
    assert flat.sum() == 1 and outline  # a constant map: its first pixel


# -- the combination ------------------------------------------------------------------------------
def test_the_fit_separates_and_keeps_every_weight_non_negative():
    rng = np.random.default_rng(0)
    rows, labels = [], []
    for i in range(400):
        grounded = i % 2 == 0
        rows.append({"llr": rng.normal(3 if grounded else 0, 1), "rank_agreement": rng.normal(0.5 if grounded else 0.2,
                     0.2), "entropy": rng.normal(1.0, 0.3), "on_image": 1.0})
        labels.append(grounded)
    combiner = fit(rows, labels, ["llr", "rank_agreement", "entropy", "on_image"])
    assert "llr" in combiner.names and "rank_agreement" in combiner.names
    assert (combiner.weights >= 0).all()
    scores = [combiner.consistency(r) for r in rows]
    grounded = [s for s, ok in zip(scores, labels) if ok]
    failures = [s for s, ok in zip(scores, labels) if not ok]
    assert auroc(grounded, failures) > 0.9
    assert 0 < min(scores) and max(scores) < 1
    # More evidence never lowers the score (monotone in every signal).
    base = {"llr": 1.0, "rank_agreement": 0.3, "entropy": 1.0}
    assert combiner.consistency({**base, "llr": 2.0}) >= combiner.consistency(base)
    # A missing signal takes its neutral value instead of breaking the score.
    assert 0 <= combiner.consistency({"llr": 1.0}) <= 1


def test_auroc_and_its_interval():
    assert auroc([2, 3, 4], [0, 1]) == 1.0
    assert auroc([0, 1], [2, 3]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    value, low, high = bootstrap_auroc(np.arange(50) + 10.0, np.arange(50.0), n=200)
    assert low <= value <= high and 0.5 < value < 1


# -- calibration ----------------------------------------------------------------------------------
def test_calibration_runs_on_a_tiny_split(tmp_path, capsys):
    from lvlm_studio.core.models.loading import DEMO_MODEL_DIR
    from lvlm_studio.review import calibrate

    out, plot = tmp_path / "calibration.json", tmp_path / "reliability.png"
    # A handful of cases per kind; the fit needs some grounded answers, which a trained demo model gives.
    # The demo model stands in for the shortcut twin: its cases count only where it names the mark's colour.
    code = calibrate.main(["--n", "4", "--methods", ",".join(CHEAP), "--out", str(out), "--plot", str(plot),
                           "--shortcut", str(DEMO_MODEL_DIR), "--threads", "1"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    record = json.loads(out.read_text())
    assert record["methods"] == list(CHEAP)
    assert "shortcut twin was not available" not in printed.out
    assert "Held-out split" in printed.out and "AUROC" in printed.out
    settings = ReviewSettings.from_file(out)
    assert 0 <= settings.threshold_defer <= settings.threshold_high <= 1
    assert plot.stat().st_size > 1000
    assert str(tmp_path) not in out.read_text()  # no local paths in what ships


@pytest.mark.parametrize("world", ["classic", "open"])
def test_calibration_cases_are_fixed_and_the_splits_disjoint(world):
    import itertools

    from lvlm_studio.review.cases import FAILURE_KINDS, cases

    for kind in ("grounded", *FAILURE_KINDS):
        first = list(itertools.islice(cases(kind, "calibration", world), 4))
        again = list(itertools.islice(cases(kind, "calibration", world), 4))
        held = list(itertools.islice(cases(kind, "held-out", world), 4))
        assert [c.source for c in first] == [c.source for c in again]
        assert [np.asarray(c.image).tobytes() for c in first] == [np.asarray(c.image).tobytes() for c in again]
        assert not {c.source for c in first} & {c.source for c in held}
        assert all(c.kind == kind and c.question for c in first)


# -- the headless review and the case report ------------------------------------------------------
def _pdf_text(path: Path) -> bytes:
    """The text a PDF written by matplotlib shows, one line per text object: its content streams
    inflated, and the characters of each ``[(a) 0.2 (b)] TJ`` array (kerned glyph by glyph) joined."""
    data = path.read_bytes()
    lines = [data]  # the document's metadata (title, creator) is stored plainly
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S):
        try:
            stream = zlib.decompress(match.group(1))
        except zlib.error:
            stream = match.group(1)
        for array in re.findall(rb"\[(.*?)\]\s*TJ", stream, re.S):
            lines.append(b"".join(re.findall(rb"\(((?:\\.|[^\\)])*)\)", array)))
        lines += re.findall(rb"\(((?:\\.|[^\\)])*)\)\s*Tj", stream)
    return b"\n".join(lines)


def test_review_cli_end_to_end(tmp_path, demo_scene, capsys):
    from lvlm_studio.cli import main
    from lvlm_studio.core.formats.audit import read_records, verify
    from lvlm_studio.demo.scenes import make_scene

    cases = tmp_path / "cases"
    cases.mkdir()
    demo_scene.image.save(cases / "scene.png")
    make_scene(2_000_000_011).image.save(cases / "other.png")
    Image.new("RGB", (100, 80), (200, 200, 200)).save(cases / "blank.png")
    (cases / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    manifest = cases / "worklist.csv"
    manifest.write_text("case,image,question,reference\n"
                        "c-1,scene.png,describe the image.,\n"
                        "c-2,other.png,describe the image.,\n"
                        "c-3,blank.png,describe the image.,\n"
                        "c-4,missing.png,describe the image.,\n"
                        "c-5,broken.png,describe the image.,\n", encoding="utf-8")
    out = tmp_path / "review"
    code = main(["review", "--cases", str(manifest), "--out", str(out), "--reviewer", "dr.lee",
                 "--methods", ",".join(CHEAP), "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 2  # a bad row and an unreadable image: each named once, and the other cases went on
    assert printed.err.count("missing.png") == 1 and "row 5" in printed.err
    assert printed.err.count("case c-5:") == 1 and "broken.png" in printed.err
    assert str(cases) not in printed.err.split("case c-5:")[1]  # the image by its name, not its path
    with open(out / "verdicts.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["case", "question", "answer", "probability", "consistency", "confidence", "decision",
                             "reasons"]
    assert [r["case"] for r in rows] == ["c-1", "c-2", "c-3"]
    assert all(r["decision"] in ("accept", "defer") and 0 <= float(r["consistency"]) <= 1 for r in rows)
    assert rows[2]["decision"] == "defer"  # the blank picture
    reports = sorted(p.name for p in (out / "reports").iterdir())
    assert reports == ["c-1.pdf", "c-2.pdf", "c-3.pdf"]
    result = verify(out / "audit.jsonl")
    assert result.ok and result.records == 3
    records = read_records(out / "audit.jsonl")
    assert {r["decision"] for r in records} == {"pending"}
    assert [r["case"] for r in records] == ["c-1", "c-2", "c-3"] and records[0]["reviewer"] == "dr.lee"
    assert records[0]["thresholds"]["defer"] is not None and "consistency" in records[0]["scores"]
    # The case report: the verdict and the case are in it, no absolute local path is.
    text = _pdf_text(out / "reports" / "c-1.pdf")
    assert b"c-1" in text and b"scene.png" in text
    assert str(tmp_path).encode() not in text
    assert b"/work/" not in text and str(Path.home()).encode() + b"/" not in text
    # Run again into the same folder: the audit log is continued, never rewritten.
    (cases / "broken.png").unlink()
    assert main(["review", "--cases", str(cases), "--out", str(out), "--methods", ",".join(CHEAP),
                 "--device", "cpu"]) == 0
    assert verify(out / "audit.jsonl").records == 3 + 3  # the folder's readable images (worklist.csv is not one)


def test_a_manifest_that_cannot_be_read_fails_before_the_model_loads(tmp_path, capsys):
    from lvlm_studio.cli import main

    bad = tmp_path / "cases.csv"
    bad.write_text("case,picture\nc-1,a.png\n", encoding="utf-8")
    assert main(["review", "--cases", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "no 'image'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
