"""Study 3, right for the wrong reasons: correct answers whose maps point away from the object.

Over a dataset with object masks, each question about an object (``StudyQuestion.object``) is
answered; the answer is correct when it matches the expected answer (``is_correct``). Each method
explains the answer's deciding token (``deciding_token``: its last content word that the question
does not already contain, "red" in "the circle is red"), and the map's maximum, resampled to the
image, is located among the sample's masks (``peak_on``; each grown by ``tolerance`` grid cells):
on the asked object, on another named mask (another object; the shortcut twin's corner mark "cue"),
or nowhere named. Each answer falls into one of three classes per method:

- **correct and grounded**: right, and the map points at the object;
- **correct, grounded elsewhere**: right, and the map points anywhere else (right for the wrong reasons);
- **wrong**.

Planted truth: the shortcut twin answers colour questions from a corner mark. With the mark
agreeing with the object (``--cue agree``) it is right, and its maps point at the mark: many
correct-but-elsewhere answers, "on cue". The honest demo model on the same scenes is right and
points at the object.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lvlm_studies.common import MAX_NEW_TOKENS, answer, by, explain, mean_with_interval
from lvlm_studio.api import Param, Progress, Study, StudyFigure, StudyReport, StudyTable, peak_on, to_pixels

CLASSES = ("correct and grounded", "correct, grounded elsewhere", "wrong")
FUNCTION_WORDS = frozenset("a an the is are was were it its this that there of on in at to and or be".split())


def words_of(text: str) -> list[str]:
    return [w.strip(".,?!;:\"'").lower() for w in text.split() if w.strip(".,?!;:\"'")]


def is_correct(given: str, expected: str) -> bool:
    """The answer matches the expected one word for word, or holds it when it is one word ("yes")."""
    got, want = words_of(given), words_of(expected)
    return got == want or (len(want) == 1 and want[0] in got)


def deciding_token(tokens: list[str], question: str) -> int:
    """The answer's last token that is a content word absent from the question; else its last token."""
    asked = set(words_of(question))
    for index in range(len(tokens) - 1, -1, -1):
        word = tokens[index].strip().strip(".,?!").lower().lstrip("\u2581\u0120")
        if word.isalnum() and word not in asked and word not in FUNCTION_WORDS:
            return index
    return len(tokens) - 1


class GroundingStudy(Study):
    id = "right_for_wrong_reasons"
    title = "Right for the wrong reasons: correct answers grounded elsewhere"
    description = ("Over questions about masked objects: correct and grounded / correct but grounded elsewhere / "
                   "wrong, per explanation method (the map's maximum on the object's mask, or elsewhere).")
    demo_tasks = ("colour",)
    needs_masks = True
    params = (
        Param("methods", "relevancy,raw_attention", "comma-separated explanation methods"),
        Param("tolerance", 0.5, "grid cells by which each mask is grown (the pointing zone)", minimum=0.0),
        MAX_NEW_TOKENS,
    )

    def run_sample(self, sample, model, params, context):
        methods = [m.strip() for m in params["methods"].split(",") if m.strip()]
        asked = [q for q in sample.questions if q.object is not None and q.answer is not None]
        rows: list[dict[str, Any]] = []
        for number, question in enumerate(asked):
            yield Progress(number, len(asked), f"question {number + 1}")
            trace = answer(model, sample, question, params["max_new_tokens"])
            if not len(trace.answer_ids):
                continue
            target = deciding_token(list(trace.answer_tokens), question.text)
            correct = is_correct(trace.answer_text, question.answer)
            # the asked object first: a peak in the overlap of grown masks counts for it
            masks = {question.object: sample.masks[question.object],
                     **{k: v for k, v in sample.masks.items() if k != question.object}}
            grow = params["tolerance"] * _cell_pixels(trace)
            for method in methods:
                explanation = yield from explain(context, method, trace, model, [target])
                pixels = to_pixels(explanation.maps[target], trace.regions, trace.image.size)
                on = peak_on(pixels, masks, grow)
                grounded = on == question.object
                rows.append({"method": method, "question": question.text, "expected": question.answer,
                             "answer": trace.answer_text, "word": trace.answer_tokens[target].strip(),
                             "correct": correct, "peak_on": "object" if grounded else (on or "none"),
                             "class": CLASSES[2] if not correct else CLASSES[0] if grounded else CLASSES[1]})
        return rows

    def summarize(self, rows, params):
        table, where = [], []
        places = sorted({r["peak_on"] for r in rows}, key=lambda p: (p != "object", p == "none", p))
        for (model, method), mine in by(rows, "model", "method").items():
            entry: dict[str, Any] = {"model": model, "method": method, "answers": len(mine)}
            for name in CLASSES:
                stats = mean_with_interval([1.0 if r["class"] == name else 0.0 for r in mine])
                entry[name] = stats["mean"]
                entry[f"{name} ci"] = f"{stats['ci_low']:.2f}-{stats['ci_high']:.2f}"
            table.append(entry)
            for answers, group in (("correct", [r for r in mine if r["correct"]]),
                                   ("wrong", [r for r in mine if not r["correct"]])):
                if group:
                    where.append({"model": model, "method": method, "answers": answers, "count": len(group),
                                  **{f"points on {p}": float(np.mean([r["peak_on"] == p for r in group]))
                                     for p in places}})

        def draw(ax):
            labels = [f"{r['model']}\n{r['method']}" for r in table]
            bottom = np.zeros(len(table))
            for name, colour in zip(CLASSES, ("#55a868", "#dd8452", "#c44e52")):
                values = np.array([r[name] for r in table], dtype=float)
                ax.bar(range(len(table)), values, bottom=bottom, color=colour, label=name)
                bottom += values
            ax.set_xticks(range(len(table)), labels, fontsize=7)
            ax.set_ylim(0, 1)
            ax.set_ylabel("share of answers")
            ax.set_title("Answers by correctness and grounding")
            ax.legend(fontsize=7, loc="lower right")

        text = "\n".join(f"- **{r['model']}**, {r['method']}: {r[CLASSES[1]]:.0%} of answers are correct but grounded "
                         f"elsewhere, {r[CLASSES[0]]:.0%} correct and grounded, {r[CLASSES[2]]:.0%} wrong "
                         f"({r['answers']} answers)." for r in table)
        return StudyReport(self.title, text, [
            StudyTable("answers by class", table, "Shares of answers, with 95% bootstrap intervals."),
            StudyTable("where the maps point", where,
                       "Among correct and among wrong answers: the share whose map's maximum lies on each named "
                       "mask (the asked object, other objects, the corner mark 'cue'), or on none."),
        ], [StudyFigure("classes", draw)])


def _cell_pixels(trace: Any) -> float:
    """The side of one grid cell of the first region, in image pixels."""
    left, top, right, bottom = trace.regions[0].box
    rows, cols = trace.regions[0].grid
    return float(min((right - left) / cols, (bottom - top) / rows))
