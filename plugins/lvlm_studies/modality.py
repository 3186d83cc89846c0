"""Study 1, modality influence: how much of each answer token's relevance lies on the image, and how
much on the words of the prompt.

For every question of a sample, the model answers; relevancy explains every answer token over the
whole sequence, and ``modality_influence`` splits the token's relevance into the image's part and
the prompt text's (per prompt word, sub-word tokens joined). The image share is image / (image +
prompt text): near 1, the token came from the picture; near 0, from the question ("text
dominance"). Per model, the share is averaged over each answer's tokens, then over samples, with a
95% bootstrap interval over samples; the tables also give it per answer word and the prompt words'
share of the text relevance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lvlm_studies.common import MAX_NEW_TOKENS, QUESTIONS, answer, asked, by, error_bars, explain, mean_with_interval
from lvlm_studio.api import Param, Progress, Study, StudyFigure, StudyReport, StudyTable, modality_influence


class ModalityInfluenceStudy(Study):
    id = "modality_influence"
    title = "Modality influence: relevance on the image vs the prompt text"
    description = ("Per answer token, the share of relevance (relevancy) on the image tokens vs the prompt's words, "
                   "per model, with 95% bootstrap intervals over samples.")
    demo_tasks = ("colour",)
    params = (
        Param("method", "relevancy", "explainer that records relevance over the text too (relevancy)"),
        QUESTIONS,
        MAX_NEW_TOKENS,
    )

    def run_sample(self, sample, model, params, context):
        questions = asked(sample, params)
        tokenizer = model.processor.tokenizer
        rows: list[dict[str, Any]] = []
        for number, question in enumerate(questions):
            yield Progress(number, len(questions), f"question {number + 1}")
            trace = answer(model, sample, question, params["max_new_tokens"])
            targets = list(range(len(trace.answer_ids)))
            if not targets:
                continue
            explanation = yield from explain(context, params["method"], trace, model, targets)
            for token in targets:
                influence = modality_influence(trace, explanation, tokenizer, token)
                rows.append({"question": question.text, "answer": trace.answer_text, "token": token,
                             "word": trace.answer_tokens[token].strip(), "image": influence.image,
                             "text": influence.text, "image_share": influence.image_share,
                             "prompt_words": [[w, v] for w, v in influence.words]})
        return rows

    def summarize(self, rows, params):
        models = list(dict.fromkeys(r["model"] for r in rows))
        overall, per_word, prompt = [], [], []
        for model in models:
            mine = [r for r in rows if r["model"] == model]
            # one number per answer (the mean over its tokens): answers, not tokens, are the samples
            answers = [np.nanmean([r["image_share"] for r in group]) if any(np.isfinite(r["image_share"])
                       for r in group) else float("nan")
                       for group in by(mine, "sample", "question").values()]
            stats = mean_with_interval(answers)
            overall.append({"model": model, "answers": len(answers), "tokens": len(mine),
                            "image_share": stats["mean"], "ci_low": stats["ci_low"], "ci_high": stats["ci_high"],
                            "text_share": 1 - stats["mean"] if np.isfinite(stats["mean"]) else float("nan")})
            for (word,), group in sorted(by(mine, "word").items(), key=lambda item: -len(item[1])):
                stats = mean_with_interval([r["image_share"] for r in group])
                per_word.append({"model": model, "answer word": word, "tokens": len(group),
                                 "image_share": stats["mean"], "ci_low": stats["ci_low"], "ci_high": stats["ci_high"]})
            shares: dict[str, list[float]] = {}
            for row in mine:
                total = sum(v for _, v in row["prompt_words"])
                for word, value in row["prompt_words"]:
                    if total > 0:
                        shares.setdefault(word, []).append(value / total)
            for word, values in sorted(shares.items(), key=lambda item: -np.mean(item[1])):
                stats = mean_with_interval(values)
                prompt.append({"model": model, "prompt word": word, "tokens": len(values),
                               "share_of_text": stats["mean"], "ci_low": stats["ci_low"], "ci_high": stats["ci_high"]})

        def draw_overall(ax):
            error_bars(ax, [r["model"] for r in overall], [r["image_share"] for r in overall],
                       [r["ci_low"] for r in overall], [r["ci_high"] for r in overall],
                       "image share of relevance", "Image vs prompt text, per model (95% CI)")
            ax.set_ylim(0, 1)
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")

        def draw_words(ax):
            shown = per_word[:12]
            error_bars(ax, [f"{r['answer word']} ({r['model']})" if len(models) > 1 else r["answer word"]
                            for r in shown], [r["image_share"] for r in shown], [r["ci_low"] for r in shown],
                       [r["ci_high"] for r in shown], "image share", "Image share per answer word (95% CI)",
                       colour="#dd8452")
            ax.set_ylim(0, 1)

        text = "\n".join(f"- **{r['model']}**: {r['image_share']:.0%} of the relevance of an answer token lies on the "
                         f"image (95% CI {r['ci_low']:.0%} to {r['ci_high']:.0%}), {r['text_share']:.0%} on the prompt "
                         f"text, over {r['answers']} answers." for r in overall if np.isfinite(r["image_share"]))
        return StudyReport(self.title, text, [
            StudyTable("image share per model", overall, "Mean over answers of the answer tokens' image share."),
            StudyTable("image share per answer word", per_word, "Every token of that word, across answers."),
            StudyTable("prompt words", prompt, "Each prompt word's share of the relevance on the prompt text."),
        ], [StudyFigure("image_share", draw_overall), StudyFigure("answer_words", draw_words)])
