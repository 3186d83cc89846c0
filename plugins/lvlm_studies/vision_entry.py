"""Study 5, when vision enters: across layers, and across the tokens of an answer.

For each answer the model gives, per answer token (``logit_lens``, ``attention_knockout``):

* the logit lens at the query that predicts the token: its probability and rank when the residual
  stream after each layer is read out through the final norm and LM head, and the first layer from
  which it stays the top token (the layer where the answer becomes decodable);
* the logit lens at the image positions: whether some image token already decodes to the answer token
  (its best rank over the image tokens, per layer);
* attention knockout: the drop in the token's log-probability when the attention from the answer's
  queries to the image tokens is cut in a window of ``window`` layers (sliding), and in every layer.

Summaries per model: per layer (lens probability, share of tokens on top, image tokens decoding the
answer, knockout drop of the window starting there), and per answer-token index (the timeline across
generation: entry layer, drop with every layer cut, the window whose knockout costs most).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lvlm_studies.common import MAX_NEW_TOKENS, QUESTIONS, answer, asked, by, mean_with_interval
from lvlm_studio.api import (
    Param,
    Progress,
    Study,
    StudyFigure,
    StudyReport,
    StudyTable,
    attention_knockout,
    logit_lens,
)


class VisionEntryStudy(Study):
    id = "vision_entry"
    title = "When vision enters: logit lens per layer and attention knockout from the answer to the image"
    description = ("Per answer token: the layer from which the logit lens decodes it (at its own position and at the "
                   "image tokens), and the drop in its log-probability when answer-to-image attention is knocked out "
                   "in sliding windows of layers; per model, per layer and across generation.")
    demo_tasks = ("colour",)
    params = (
        Param("window", 1, "layers knocked out together (a sliding window)", minimum=1),
        QUESTIONS,
        MAX_NEW_TOKENS,
    )

    def run_sample(self, sample, model, params, context):
        questions = asked(sample, params)
        rows: list[dict[str, Any]] = []
        for number, question in enumerate(questions):
            yield Progress(number, len(questions), f"question {number + 1}")
            trace = answer(model, sample, question, params["max_new_tokens"])
            if not len(trace.answer_ids):
                continue
            lens = logit_lens(model, trace)
            knockout = attention_knockout(model, trace, window=params["window"])
            entry = lens.entry_layer()
            for token in range(len(trace.answer_ids)):
                drops = knockout.drop[:, token]
                rows.append({
                    "question": question.text, "answer": trace.answer_text, "token": token,
                    "word": trace.answer_tokens[token].strip(), "layers": int(lens.answer_rank.shape[0]),
                    "entry_layer": int(entry[token]),
                    "lens_prob": lens.answer_prob[:, token].tolist(),
                    "lens_rank": lens.answer_rank[:, token].tolist(),
                    "image_best_rank": lens.image_best_rank[:, token].tolist() if lens.image_best_rank.size else [],
                    "windows": [list(w) for w in knockout.windows],
                    "knockout_drop": drops.tolist(), "knockout_drop_all": float(knockout.drop_all[token]),
                    "worst_window": int(knockout.windows[int(np.argmax(drops))][0]),
                    "log_prob": float(knockout.log_prob[token]),
                })
        return rows

    def summarize(self, rows, params):
        per_layer, timeline, overall = [], [], []
        for (model,), group in by(rows, "model").items():
            layers = max(r["layers"] for r in group)
            starts = [w[0] for w in group[0]["windows"]]
            for layer in range(layers):
                mine = [r for r in group if r["layers"] > layer]
                prob = mean_with_interval([r["lens_prob"][layer] for r in mine])
                image = [r["image_best_rank"][layer] == 0 for r in mine if r["image_best_rank"]]
                row = {"model": model, "layer": layer, "tokens": len(mine), "lens_prob": prob["mean"],
                       "lens_prob_low": prob["ci_low"], "lens_prob_high": prob["ci_high"],
                       "on_top": float(np.mean([r["lens_rank"][layer] == 0 for r in mine])),
                       "image_decodes": float(np.mean(image)) if image else float("nan")}
                if layer in starts:
                    index = starts.index(layer)
                    drop = mean_with_interval([r["knockout_drop"][index] for r in mine
                                               if len(r["knockout_drop"]) > index])
                    row.update({"knockout_drop": drop["mean"], "knockout_low": drop["ci_low"],
                                "knockout_high": drop["ci_high"]})
                else:
                    row.update({"knockout_drop": float("nan"), "knockout_low": float("nan"),
                                "knockout_high": float("nan")})
                per_layer.append(row)
            for (token,), at in sorted(by(group, "token").items()):
                entered = [r["entry_layer"] for r in at if r["entry_layer"] >= 0]
                drop = mean_with_interval([r["knockout_drop_all"] for r in at])
                worst = np.bincount([r["worst_window"] for r in at]).argmax()
                words = by(at, "word")
                timeline.append({"model": model, "token": token, "answers": len(at),
                                 "commonest word": max(words, key=lambda k: len(words[k]))[0],
                                 "entry_layer": float(np.mean(entered)) if entered else float("nan"),
                                 "drop_all_layers": drop["mean"], "drop_low": drop["ci_low"],
                                 "drop_high": drop["ci_high"], "worst_window_start": int(worst)})
            entered = [r["entry_layer"] for r in group if r["entry_layer"] >= 0]
            drop_all = mean_with_interval([r["knockout_drop_all"] for r in group])
            overall.append({"model": model, "tokens": len(group), "layers": layers,
                            "mean entry layer": float(np.mean(entered)) if entered else float("nan"),
                            "drop, all layers": drop_all["mean"], "drop_low": drop_all["ci_low"],
                            "drop_high": drop_all["ci_high"]})

        def draw_lens(ax):
            for (model,), group in by(per_layer, "model").items():
                ax.plot([r["layer"] for r in group], [r["lens_prob"] for r in group], marker="o", label=model)
            ax.set_xticks(sorted({r["layer"] for r in per_layer}))
            ax.set_xlabel("layer")
            ax.set_ylabel("p(answer token), logit lens")
            ax.set_title("When the answer becomes decodable")
            ax.set_ylim(0, 1)
            ax.legend(fontsize=7)

        def draw_knockout(ax):
            for (model,), group in by(per_layer, "model").items():
                shown = [r for r in group if np.isfinite(r["knockout_drop"])]
                ax.plot([r["layer"] for r in shown], [r["knockout_drop"] for r in shown], marker="o", label=model)
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xticks(sorted({r["layer"] for r in per_layer}))
            ax.set_xlabel(f"first layer of the knocked-out window ({params['window']} layer(s))")
            ax.set_ylabel("drop in log p(answer token), nats")
            ax.set_title("Answer -> image attention knocked out")
            ax.legend(fontsize=7)

        def draw_timeline(ax):
            for (model,), group in by(timeline, "model").items():
                ax.plot([r["token"] for r in group], [r["drop_all_layers"] for r in group], marker="o", label=model)
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xticks(sorted({r["token"] for r in timeline}))
            ax.set_xlabel("answer token")
            ax.set_ylabel("drop in log p, every layer knocked out")
            ax.set_title("Across generation")
            ax.legend(fontsize=7)

        text = "\n".join(
            f"- **{r['model']}**: answer tokens become decodable (and stay on top) from layer "
            f"{r['mean entry layer']:.1f} of {r['layers']} on average; cutting answer-to-image attention in every "
            f"layer costs {r['drop, all layers']:.2f} nats per token "
            f"(95% CI {r['drop_low']:.2f} to {r['drop_high']:.2f})."
            for r in overall)
        return StudyReport(self.title, text, [
            StudyTable("per model", overall, "Over every answer token."),
            StudyTable("per layer", per_layer, "Logit lens and knockout (window starting at the layer), per layer."),
            StudyTable("timeline", timeline, "Per answer-token index: across generation."),
        ], [StudyFigure("logit_lens", draw_lens), StudyFigure("knockout", draw_knockout),
            StudyFigure("across_generation", draw_timeline)])
