"""The first-party studies: modality influence on every family, the contradiction probe's reading of
answers, and right-for-the-wrong-reasons on the planted shortcut twin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lvlm_studies.contradiction import ContradictionStudy, pairs_of, yes_no
from lvlm_studies.grounding import CLASSES, GroundingStudy, deciding_token, is_correct
from lvlm_studies.modality import ModalityInfluenceStudy
from lvlm_studio.api import StudyQuestion, create_registry
from lvlm_studio.core.models.loading import load_model
from lvlm_studio.core.plugin.jobs import run_job
from lvlm_studio.studies.datasets import DatasetSettings
from lvlm_studio.studies.report import write_report
from lvlm_studio.studies.runner import StudySettings, all_rows, run_study

ROOT = Path(__file__).resolve().parents[1]
TWIN = ROOT / "resources" / "demo-model-shortcut"


def run(study, models, tmp_path, params=None, **dataset):
    settings = StudySettings(study.id, list(models), params or {}, DatasetSettings(**dataset))
    records = run_job(run_study(study, models, settings, tmp_path, registry=create_registry(load_third_party=False)))
    assert not [r["error"] for r in records if r.get("error")]
    return records


def test_modality_influence_runs_on_every_family(tiny_model, tmp_path):
    study = ModalityInfluenceStudy()
    records = run(study, {"tiny": tiny_model}, tmp_path, {"max_new_tokens": 3}, n=1)
    rows = all_rows(records)
    assert rows, "the tiny model gave no answer token"
    for row in rows:
        assert row["image"] >= 0 and row["text"] >= 0
        assert row["image"] + row["text"] > 0 and 0 <= row["image_share"] <= 1
        assert row["prompt_words"], "the prompt's words were not found"
    text = write_report(tmp_path, study, records, study.resolve_params({}))
    assert "image share per model" in text and (tmp_path / "image_share.png").is_file()


def test_contradiction_and_grounding_run_on_every_family(tiny_model, tmp_path):
    """Random tiny models answer nonsense: the rows say so (unreadable, wrong) instead of failing."""
    contradiction = all_rows(run(ContradictionStudy(), {"tiny": tiny_model}, tmp_path / "c",
                                 {"max_new_tokens": 3}, n=1))
    assert len(contradiction) == 2 and all(set(r) >= {"yes_a", "yes_b", "contradiction"} for r in contradiction)
    grounding = all_rows(run(GroundingStudy(), {"tiny": tiny_model}, tmp_path / "g",
                             {"methods": "relevancy", "max_new_tokens": 3}, n=1))
    assert all(r["class"] in CLASSES for r in grounding)


def test_modality_influence_on_the_demo_model_puts_colour_words_on_the_image(tmp_path):
    """The answer's colour word comes from the picture, its shape word is copied from the question."""
    study = ModalityInfluenceStudy()
    rows = all_rows(run(study, {"demo": load_model(None)}, tmp_path, n=3))
    colour = [r["image_share"] for r in rows if r["word"] in ("red", "green", "blue", "yellow")]
    shape = [r["image_share"] for r in rows if r["word"] in ("circle", "square", "triangle")]
    assert colour and shape and np.mean(colour) > np.mean(shape) + 0.2


def test_yes_no_reads_leading_words_and_statements_against_the_question():
    assert yes_no("Yes, it is.") is True and yes_no("no") is False
    assert yes_no("the red circle is there", False, "is there a red circle?") is True
    assert yes_no("the red circle is there", True, "is there not a red circle?") is False
    assert yes_no("the red circle is not there", True, "is there not a red circle?") is True
    assert yes_no("the red circle", True, "is there not a red circle?") is None
    assert yes_no("the door is open", False, "is the door open?") is True
    assert yes_no("", False, "is it?") is None
    questions = [StudyQuestion("a?", pair="p"), StudyQuestion("b?", pair="p", negated=True),
                 StudyQuestion("c?", pair="lonely"), StudyQuestion("d?")]
    assert [(p, a.text, b.text) for p, a, b in pairs_of(questions)] == [("p", "a?", "b?")]


def test_contradiction_summary_counts_planted_pairs():
    def row(model, a, b):
        both = (a, b)
        return {"model": model, "sample": "s", "pair": "p", "question_a": "q", "answer_a": "x", "yes_a": a,
                "image_share_a": 0.3, "question_b": "r", "answer_b": "y", "yes_b": b, "image_share_b": 0.4,
                "readable": None not in both,
                "contradiction": "yes/yes" if both == (True, True) else "no/no" if both == (False, False) else ""}

    rows = [row("m", True, True), row("m", True, False), row("m", False, False), row("m", None, True),
            row("n", True, False)]
    report = ContradictionStudy().summarize(rows, {})
    rates = {r["model"]: r for r in report.tables[0].rows}
    assert rates["m"]["read"] == 3 and rates["m"]["yes/yes"] == 1 and rates["m"]["no/no"] == 1
    assert rates["m"]["rate"] == pytest.approx(2 / 3) and rates["n"]["rate"] == 0
    assert len(report.tables[1].rows) == 2


def test_contradiction_probe_on_the_demo_model_reads_every_pair(tmp_path):
    """The demo model answers in statements; each demo pair reads as yes or no, and it is consistent."""
    rows = all_rows(run(ContradictionStudy(), {"demo": load_model(None)}, tmp_path, {"method": ""}, n=2))
    assert len(rows) == 4 and all(r["readable"] for r in rows)
    assert not [r for r in rows if r["contradiction"]]


def test_answers_are_judged_and_the_deciding_token_is_the_new_content_word():
    assert is_correct("the circle is red", "the circle is red") and not is_correct("the circle is blue",
                                                                                    "the circle is red")
    assert is_correct("Yes, it is.", "yes")
    assert deciding_token(["the", "circle", "is", "red"], "what color is the circle?") == 3


@pytest.mark.skipif(not TWIN.is_dir(), reason="the shortcut twin is not shipped here")
def test_right_for_the_wrong_reasons_exposes_the_shortcut_twin_and_clears_the_demo_model(tmp_path):
    """Planted truth: with the corner mark agreeing, the twin is right because of the mark (its maps
    point at it) and the demo model is right because of the object."""
    study = GroundingStudy()
    models = {"demo": load_model(None), "twin": load_model(TWIN)}
    records = run(study, models, tmp_path, {"methods": "raw_attention"}, n=6, cue="agree")
    report = study.summarize(all_rows(records), study.resolve_params({}))
    classes = {r["model"]: r for r in report.tables[0].rows}
    assert classes["twin"][CLASSES[1]] >= 0.8 and classes["demo"][CLASSES[1]] <= 0.2
    assert classes["demo"][CLASSES[0]] >= 0.8
    where = {(r["model"], r["answers"]): r for r in report.tables[1].rows}
    assert where["twin", "correct"]["points on cue"] >= 0.6 and where["demo", "correct"]["points on cue"] == 0


def test_the_guides_study_runs_on_the_demo_model(tmp_path):
    import re
    import types

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "plugins.md").read_text(), flags=re.S)
    (source,) = [b for b in blocks if re.search(r"^class AnswerLength\(", b, flags=re.M)]
    module = types.ModuleType("guide_answer_length")
    exec(compile(source, "plugins.md:AnswerLength", "exec"), module.__dict__)  # noqa: S102 - our own documentation
    study = module.AnswerLength()
    records = run(study, {"demo": load_model(None)}, tmp_path, n=2)
    report = study.summarize(all_rows(records), study.resolve_params({}))
    assert report.tables[0].rows[0]["mean"] >= 3  # "the circle is red": four tokens
