"""Study 4, architecture vs scale: does the vision architecture change where an answer looks, more
than the size of the language model does?

Every model answers the same questions about the same images. For each answer, the answer's attention
over the image tokens (every layer and head that sees the image, from the queries that predict answer
tokens) is summed up in four statistics (``trace_stats``): its entropy, its spatial spread, the
distance from its centre of mass to the nearest object, and its share on fine detail. Each model's
vision architecture and LLM size come from its folder's ``study_meta.json`` (or ``--param
meta=MANIFEST``; inferred from the model when neither says). Per statistic, a type-II ANOVA with the
image as a block (``factor_anova``) tests both factors: p-value and partial eta squared for each.
"""

from __future__ import annotations

from typing import Any

from lvlm_studies.common import MAX_NEW_TOKENS, QUESTIONS, answer, asked, by, error_bars, mean_with_interval
from lvlm_studio.api import (
    ATTENTION_STATISTICS,
    InputError,
    Param,
    Progress,
    Study,
    StudyFigure,
    StudyReport,
    StudyTable,
    factor_anova,
    model_meta,
    read_meta_file,
    trace_stats,
)

FACTORS = ("vision_architecture", "llm_size")
LABELS = {"entropy": "attention entropy (0-1)", "spread": "spread (fraction of the diagonal)",
          "object_distance": "distance to the nearest object (fraction of the diagonal)",
          "fine_share": "share of attention on fine detail"}


class ArchitectureScaleStudy(Study):
    id = "architecture_vs_scale"
    title = "Architecture vs scale: attention patterns by vision architecture and LLM size"
    description = ("Attention-pattern statistics (entropy, spread, distance to the nearest object, share on fine "
                   "detail) of every model's answers on the same images, and a two-factor ANOVA (image as a block): "
                   "p-value and partial eta squared for vision architecture and for LLM size.")
    demo_tasks = ("colour",)
    min_models = 2
    params = (
        QUESTIONS,
        MAX_NEW_TOKENS,
        Param("meta", "", "JSON manifest: model label or folder -> {vision_architecture, llm_size} "
                          "(default: each folder's study_meta.json)"),
    )

    def run_sample(self, sample, model, params, context):
        manifest = read_meta_file(params["meta"]) if params["meta"] else None
        meta = model_meta(model, context.model_label, manifest)
        masks = list(sample.masks.values())
        questions = asked(sample, params)
        rows: list[dict[str, Any]] = []
        for number, question in enumerate(questions):
            yield Progress(number, len(questions), f"question {number + 1}")
            trace = answer(model, sample, question, params["max_new_tokens"])
            if not len(trace.answer_ids):
                continue
            stats = trace_stats(model, trace, masks)
            rows.append({"question": question.text, "answer": trace.answer_text, **meta, **stats})
        return rows

    def summarize(self, rows, params):
        per_model = []
        for (model,), group in by(rows, "model").items():
            entry = {"model": model, **{f: group[0][f] for f in FACTORS}, "meta": group[0]["source"],
                     "answers": len(group)}
            for name in ATTENTION_STATISTICS:
                stats = mean_with_interval([r[name] for r in group])
                entry.update({name: stats["mean"], f"{name}_low": stats["ci_low"], f"{name}_high": stats["ci_high"]})
            per_model.append(entry)
        effects, notes = [], []
        # a factor every model shares cannot be tested; the other one still can
        varied = [f for f in FACTORS if len({r[f] for r in rows}) > 1]
        notes += [f"- every model has the same {f} ({rows[0][f]}): not tested." for f in FACTORS
                  if rows and f not in varied]
        for name in ATTENTION_STATISTICS if varied else ():
            try:
                fitted = factor_anova(rows, name, varied, block="sample")
            except InputError as exc:
                notes.append(f"- {name}: not fitted: {exc.message}")
                continue
            for effect in fitted:
                effects.append({"statistic": name, "factor": effect.factor, "levels": effect.levels,
                                "df": effect.df, "F": effect.f_value, "p": effect.p_value,
                                "partial eta^2": effect.partial_eta_squared})
        lines = [f"- **{e['statistic']}**: {e['factor']} p = {e['p']:.3g}, partial eta² = {e['partial eta^2']:.2f}"
                 for e in effects]
        text = "\n".join(lines + notes)
        text += ("\n\nType-II ANOVA of each statistic on vision architecture and LLM size (categorical), with the "
                 "image as a block; partial eta² = SS_factor / (SS_factor + SS_residual).")

        def figure(name):
            def draw(ax):
                error_bars(ax, [f"{r['model']}\n{r['vision_architecture']}, {r['llm_size']}" for r in per_model],
                           [r[name] for r in per_model],
                           [r[f"{name}_low"] for r in per_model], [r[f"{name}_high"] for r in per_model],
                           LABELS[name], f"{name} per model (95% CI)")
            return StudyFigure(name, draw)

        return StudyReport(self.title, text, [
            StudyTable("statistics per model", per_model, "Means over answers, with 95% bootstrap intervals."),
            StudyTable("effects", effects, "Per statistic and factor: the ANOVA's F, p and partial eta squared."),
        ], [figure(name) for name in ATTENTION_STATISTICS])

