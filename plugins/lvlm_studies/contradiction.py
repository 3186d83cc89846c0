"""Study 2, contradiction probe: pairs of opposite questions, and the pairs a model answers yes/yes
or no/no.

Two questions share a pair id when they are opposites ("is the door open?" / "is the door closed?",
or a question and its negation): a consistent model answers one of them yes and the other no. A
manifest gives the pairs (``pair``, and ``negated`` on the member that asks the negation); on demo
scenes they are made from the demo grammar's templates: "is there a X?" and "is there not a X?",
for one object that is there and one that is not.

``yes_no`` reads an answer as yes or no: a leading "yes"/"no" (or "true"/"false"); otherwise the
answer is a statement ("the red circle is there", "... is not there", the demo model's form), which
agrees with a plain question when it is not negated and with a negated question when it is; a
statement that does not speak of what was asked ("the red circle") reads as neither. A pair
whose answers read the same (yes/yes, no/no) is flagged, with each answer's modality influence
(the image's share of its tokens' relevance), so a contradiction can be told apart by whether the
model was reading the image or the question. Per model: the rate of flagged pairs with a 95%
bootstrap interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lvlm_studies.common import MAX_NEW_TOKENS, answer, by, error_bars, explain, mean_with_interval
from lvlm_studio.api import Param, Progress, Study, StudyFigure, StudyReport, StudyTable, modality_influence

YES, NO = ("yes", "true", "yeah", "correct"), ("no", "false", "nope", "incorrect")
NEGATIONS = ("not", "no", "never", "n't", "none", "nothing", "isn't", "aren't", "doesn't", "don't")


def yes_no(answer_text: str, negated: bool = False, question: str = "") -> bool | None:
    """True for yes, False for no, None when the answer says neither (see the module).

    A statement counts only when it speaks of what the question asks (``predicate``: "there" for
    "is there ...?", else the question's last word): "the yellow circle" or "the circle is at the top
    right" answer "is there a yellow circle?" with neither yes nor no.
    """
    words = _words(answer_text)
    if not words:
        return None
    if words[0] in YES:
        return True
    if words[0] in NO:
        return False
    asked = predicate(question)
    if asked and asked not in words:
        return None
    denies = any(w in NEGATIONS or w.endswith("n't") for w in words)
    return denies == negated


def predicate(question: str) -> str:
    """The word a statement must contain to answer ``question``: "there" for "is/are there ...?",
    else its last word that is not a negation; "" for an empty question."""
    words = [w for w in _words(question) if w not in NEGATIONS]
    if len(words) >= 2 and words[0] in ("is", "are") and words[1] == "there":
        return "there"
    return words[-1] if words else ""


def _words(text: str) -> list[str]:
    return [w.strip(".,!?;:\"'") for w in text.lower().split() if w.strip(".,!?;:\"'")]


def pairs_of(questions: list[Any]) -> list[tuple[str, Any, Any]]:
    """(pair id, first, second) for each pair id held by exactly two questions, in order."""
    groups: dict[str, list[Any]] = {}
    for question in questions:
        if question.pair is not None:
            groups.setdefault(question.pair, []).append(question)
    return [(pair, group[0], group[1]) for pair, group in groups.items() if len(group) == 2]


class ContradictionStudy(Study):
    id = "contradiction"
    title = "Contradiction probe: opposite questions answered alike"
    description = ("Pairs of opposite questions (manifest pairs, or demo templates 'is there a X?' / 'is there not a "
                   "X?'); flags pairs answered yes/yes or no/no, each answer with its image share of relevance; the "
                   "rate per model with a 95% bootstrap interval.")
    demo_tasks = ("exist-pair",)
    params = (
        Param("method", "relevancy", "explainer for the answers' modality influence ('' for none: faster)"),
        MAX_NEW_TOKENS,
    )

    def run_sample(self, sample, model, params, context):
        pairs = pairs_of(sample.questions)
        rows: list[dict[str, Any]] = []
        for number, (pair, first, second) in enumerate(pairs):
            yield Progress(number, len(pairs), f"pair {pair}")
            row: dict[str, Any] = {"pair": pair}
            for side, question in (("a", first), ("b", second)):
                trace = answer(model, sample, question, params["max_new_tokens"])
                row[f"question_{side}"] = question.text
                row[f"answer_{side}"] = trace.answer_text
                reading = yes_no(trace.answer_text, question.negated, question.text)
                row[f"yes_{side}"] = reading
                row[f"image_share_{side}"] = (yield from self._image_share(trace, model, params, context))
            both = (row["yes_a"], row["yes_b"])
            row["contradiction"] = ("yes/yes" if both == (True, True) else "no/no" if both == (False, False) else "")
            row["readable"] = None not in both
            rows.append(row)
        return rows

    def _image_share(self, trace, model, params, context):
        targets = list(range(len(trace.answer_ids)))
        if not params["method"] or not targets:
            return float("nan")
        explanation = yield from explain(context, params["method"], trace, model, targets)
        tokenizer = model.processor.tokenizer
        shares = [modality_influence(trace, explanation, tokenizer, t).image_share for t in targets]
        finite = [s for s in shares if np.isfinite(s)]
        return float(np.mean(finite)) if finite else float("nan")

    def summarize(self, rows, params):
        rates, flagged = [], []
        for (model,), mine in by(rows, "model").items():
            readable = [r for r in mine if r["readable"]]
            stats = mean_with_interval([1.0 if r["contradiction"] else 0.0 for r in readable])
            consistent = [r for r in readable if not r["contradiction"]]
            contradicted = [r for r in readable if r["contradiction"]]
            rates.append({"model": model, "pairs": len(mine), "read": len(readable),
                          "yes/yes": sum(r["contradiction"] == "yes/yes" for r in readable),
                          "no/no": sum(r["contradiction"] == "no/no" for r in readable),
                          "rate": stats["mean"], "ci_low": stats["ci_low"], "ci_high": stats["ci_high"],
                          "image_share_contradicted": _mean_share(contradicted),
                          "image_share_consistent": _mean_share(consistent)})
            for r in contradicted:
                flagged.append({"model": model, "sample": r["sample"], "kind": r["contradiction"],
                                "question_a": r["question_a"], "answer_a": r["answer_a"],
                                "image_share_a": r["image_share_a"], "question_b": r["question_b"],
                                "answer_b": r["answer_b"], "image_share_b": r["image_share_b"]})

        def draw(ax):
            error_bars(ax, [r["model"] for r in rates], [r["rate"] for r in rates], [r["ci_low"] for r in rates],
                       [r["ci_high"] for r in rates], "contradicted pairs", "Contradiction rate per model (95% CI)",
                       colour="#c44e52")
            ax.set_ylim(0, 1)

        text = "\n".join(f"- **{r['model']}**: {r['yes/yes'] + r['no/no']} of {r['read']} readable pairs contradict "
                         f"({r['yes/yes']} yes/yes, {r['no/no']} no/no)." for r in rates)
        return StudyReport(self.title, text, [
            StudyTable("contradiction rate per model", rates,
                       "Pairs whose two answers read alike, among the pairs whose answers read as yes or no."),
            StudyTable("contradicted pairs", flagged[:200], "Each flagged pair with its answers' image share."),
        ], [StudyFigure("contradiction_rate", draw)])


def _mean_share(rows: list[dict[str, Any]]) -> float:
    values = [v for r in rows for v in (r["image_share_a"], r["image_share_b"]) if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")
