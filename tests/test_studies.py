"""The studies framework: the Study contract, datasets, the resumable runner, the report, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lvlm_studio.api import (
    Param,
    Study,
    StudyFigure,
    StudyReport,
    StudyTable,
    bootstrap_interval,
    create_registry,
    hookimpl,
    peak_on,
)
from lvlm_studio.core.errors import InputError
from lvlm_studio.core.plugin.jobs import run_job
from lvlm_studio.studies.datasets import DatasetSettings, demo_samples, manifest_samples
from lvlm_studio.studies.report import read_report, write_report
from lvlm_studio.studies.runner import StudySettings, model_labels, read_records, run_study


class FakeModel:
    def __init__(self, source="fake"):
        self.source = source

    def describe(self):
        return {"source": self.source, "family": "none"}


class CountingStudy(Study):
    """Rows from the sample alone: how many questions and masks it has; counts its calls."""

    id = "test-counting"
    title = "Counting"
    params = (Param("scale", 1.0, "a number"),)
    calls = 0

    def run_sample(self, sample, model, params, context):
        type(self).calls += 1
        if sample.key.endswith("2000000002"):
            raise RuntimeError("planted failure")
        return [{"questions": len(sample.questions), "masks": len(sample.masks) * params["scale"]}]

    def summarize(self, rows, params):
        models = dict.fromkeys(r["model"] for r in rows)
        table = [{"model": m, "rows": sum(r["model"] == m for r in rows)} for m in models]
        return StudyReport("Counting", "Some text.", [StudyTable("per model", table)],
                           [StudyFigure("bars", lambda ax: ax.bar([0, 1], [1, 2]))])


class Plugin:
    @hookimpl
    def lvlm_studio_studies(self):
        return [CountingStudy()]


def test_the_first_party_studies_are_registered_and_a_plugin_adds_its_own():
    registry = create_registry(load_third_party=False, extra=[(Plugin(), "counting")])
    studies = registry.studies()
    assert {"modality_influence", "test-counting"} <= set(studies)
    assert registry.study("test-counting").name == "Counting"
    with pytest.raises(InputError, match="no study 'nope'"):
        registry.study("nope")


def test_a_run_writes_rows_report_and_record_and_resumes_without_redoing_samples(tmp_path):
    CountingStudy.calls = 0
    study = CountingStudy()
    settings = StudySettings(study.id, ["a", "b"], {"scale": 2}, DatasetSettings(n=3), seed=0)
    models = {"a": FakeModel("a"), "b": lambda: FakeModel("b")}
    records = run_job(run_study(study, models, settings, tmp_path, registry=object()))
    assert len(records) == 6 and CountingStudy.calls == 6
    assert sum(1 for r in records if r.get("error")) == 2  # the planted failure, once per model
    text = write_report(tmp_path, study, records, study.resolve_params({"scale": 2}), "heading")
    assert "| a | 2 |" in text and "2 sample(s) failed" in text
    for name in ("summary.md", "report.json", "run.json", "results.jsonl", "tables/per_model.csv", "bars.png"):
        assert (tmp_path / name).is_file(), name
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["study"] == study.id and set(run["models"]) == {"a", "b"} and run["params"] == {"scale": 2.0}
    report = read_report(tmp_path)
    assert report["tables"][0]["rows"] == [{"model": "a", "rows": 2}, {"model": "b", "rows": 2}]
    # more samples: only the new ones run (the failed ones are recorded, not retried)
    settings.dataset.n = 4
    records = run_job(run_study(study, models, settings, tmp_path, registry=object()))
    assert len(read_records(tmp_path)) == 8 and CountingStudy.calls == 8
    # other parameters into the same folder: refused
    with pytest.raises(InputError, match="other settings"):
        run_job(run_study(study, models, StudySettings(study.id, ["a", "b"], {"scale": 3}, DatasetSettings(n=4)),
                          tmp_path, registry=object()))


def test_demo_samples_carry_questions_answers_and_masks():
    (sample,) = demo_samples(1, ("colour", "exist-pair"))
    colour, *pairs = sample.questions
    assert colour.kind == "colour" and colour.object in sample.masks
    assert colour.answer.endswith(colour.object.split()[0])
    assert [q.negated for q in pairs] == [False, True, False, True]
    assert {q.pair for q in pairs} == {"present", "absent"} and pairs[1].text.startswith("is there not a ")
    (cued,) = demo_samples(1, ("colour",), cue="agree")
    assert "cue" in cued.masks and cued.info["cue_colour"] == cued.questions[0].answer.split()[-1]


def test_a_manifest_gives_questions_and_masks_and_bad_ones_are_refused(tmp_path):
    Image.new("RGB", (40, 30), "white").save(tmp_path / "a.png")
    Image.fromarray((np.arange(40 * 30).reshape(30, 40) % 40 < 10).astype(np.uint8) * 255).save(tmp_path / "m.png")
    manifest = {"samples": [{"image": "a.png", "questions": ["is it white?", {"text": "is the box left?",
                                                                               "answer": "yes", "object": "box",
                                                                               "pair": "p", "negated": True}],
                             "masks": {"left": "m.png"}, "boxes": {"box": [0, 0, 10, 10]}}]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    (sample,) = manifest_samples(tmp_path / "m.json", 5)
    assert [q.text for q in sample.questions] == ["is it white?", "is the box left?"]
    assert sample.questions[1].negated and sample.questions[1].object == "box"
    assert sample.masks["box"].sum() == 100 and sample.masks["left"][:, :10].all()
    (tmp_path / "m.csv").write_text("image,question,answer\na.png,is it white?,yes\na.png,is it black?,no\n")
    (sample,) = manifest_samples(tmp_path / "m.csv", 5)
    assert [q.answer for q in sample.questions] == ["yes", "no"]
    (tmp_path / "bad.json").write_text(json.dumps({"samples": [{"image": "a.png", "questions": []}]}))
    with pytest.raises(InputError, match="has no question"):
        list(manifest_samples(tmp_path / "bad.json", 5))
    (tmp_path / "missing.csv").write_text("image,question\nnot-there.png,is it?\n")
    with pytest.raises(InputError, match="not-there.png"):
        DatasetSettings(manifest=str(tmp_path / "missing.csv")).check()
    DatasetSettings(manifest=str(tmp_path / "m.csv")).check()
    with pytest.raises(InputError, match="--images and --coco"):
        DatasetSettings(coco="x.json").check()


def test_labels_are_unique_and_intervals_and_peaks_are_what_they_say():
    assert model_labels([None, "/m/tiny", "/n/tiny"]) == ["demo-model", "tiny", "tiny#2"]
    low, high = bootstrap_interval(np.r_[np.zeros(50), np.ones(50)], seed=1)
    assert 0.38 < low < 0.5 < high < 0.62
    assert np.isnan(bootstrap_interval([])).all()
    assert bootstrap_interval([0.3]) == (0.3, 0.3)
    pixel_map = np.zeros((10, 10))
    pixel_map[2, 2] = 1
    here, there = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    here[2, 2], there[2, 4] = True, True
    assert peak_on(pixel_map, {"there": there, "here": here}) == "here"
    assert peak_on(pixel_map, {"there": there}, grow=2) == "there"
    assert peak_on(np.ones((10, 10)), {"here": here}) is None


def test_the_cli_lists_studies_and_refuses_bad_input_before_loading(capsys, tmp_path):
    from lvlm_studio.cli import main

    assert main(["study", "--list"]) == 0
    assert "modality_influence" in capsys.readouterr().out
    assert main(["study", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    assert main(["study", "modality_influence", "--cue", "sideways", "--out", str(tmp_path / "o")]) == 2
    assert "--cue" in capsys.readouterr().err


def test_the_cli_runs_a_study_on_the_demo_model_and_a_rerun_resumes(capsys, tmp_path):
    from lvlm_studio.cli import main

    out = tmp_path / "run"
    command = ["study", "modality_influence", "--n", "1", "--param", "max_new_tokens=6", "--out", str(out)]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "image share per model" in printed and "| demo-model | 1 |" in printed
    first = (out / "results.jsonl").read_text()
    run = json.loads((out / "run.json").read_text())
    assert run["provider"]["plugin"] == "lvlm_studies" and run["models"]["demo-model"]["family"] == "llava"
    assert main(command) == 0  # nothing left to run: the same rows, the same report
    assert (out / "results.jsonl").read_text() == first
    assert main([*command[:-2], "--param", "questions=0", "--out", str(out)]) == 2
    assert "other settings" in capsys.readouterr().err
