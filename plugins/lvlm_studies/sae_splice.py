"""Study 6, SAE splice: what the model loses when a sparse autoencoder stands in for its activations.

For each question about each sample, three teacher-forced passes over prompt + answer (the dataset's
answer when it has one, else the model's own; ``splice_losses``): the answer's mean NLL with the
model as is, and with the coder's reconstruction x̂ in place of the activations x at its hook point,
and the KL divergence KL(original ‖ spliced) of the next-token distribution over the positions after
the image. Per model: the means over examples with 95% bootstrap intervals, and the paired change
in NLL (spliced − original; below 0 the splice lowered the loss).
"""

from __future__ import annotations

from typing import Any

from lvlm_studies.common import QUESTIONS, asked, by, error_bars
from lvlm_studio.api import (
    Param,
    Progress,
    Study,
    StudyFigure,
    StudyReport,
    StudyTable,
    demo_sae_path,
    load_coder,
    splice_losses,
    splice_summary,
)


class SaeSpliceStudy(Study):
    id = "sae_splice"
    title = "SAE splice: answer NLL and KL with a sparse autoencoder spliced in"
    description = ("The answer's NLL as is and with an SAE's reconstruction spliced in at its hook point, their "
                   "paired change and the KL divergence of the next-token distribution, with 95% bootstrap intervals.")
    demo_tasks = ("colour",)
    params = (
        Param("sae", "", "folder of the sparse autoencoder (default: the demo model's shipped vision SAE)"),
        QUESTIONS,
        Param("reference", True, "score the dataset's answer when it has one (else the model's own)"),
    )

    def __init__(self) -> None:
        self._coders: dict[str, Any] = {}

    def _coder(self, path: str) -> Any:
        if path not in self._coders:
            self._coders[path] = load_coder(path or demo_sae_path())
        return self._coders[path]

    def run_sample(self, sample, model, params, context):
        coder = self._coder(params["sae"])
        questions = asked(sample, params)
        examples = [(sample.image, q.text, q.answer if params["reference"] else None) for q in questions]
        yield Progress(0, len(examples), "splice")
        losses = yield from splice_losses(model, coder, examples, len(examples))
        return [{"question": q.text, "answer": e[2], "hook": coder.cfg.hook_name, "nll_original": x.nll_original,
                 "nll_spliced": x.nll_spliced, "kl": x.kl} for q, e, x in zip(questions, examples, losses)]

    def summarize(self, rows, params):
        table = []
        for (model, hook), group in by(rows, "model", "hook").items():
            summary = splice_summary(group)
            row = {"model": model, "hook": hook, "examples": len(group)}
            for name, label in (("nll_original", "NLL original"), ("nll_spliced", "NLL spliced"),
                                ("nll_change", "NLL change"), ("kl", "KL")):
                row.update({label: summary[name]["mean"], f"{label} low": summary[name]["ci_low"],
                            f"{label} high": summary[name]["ci_high"]})
            table.append(row)

        def draw(ax):
            labels = [r["model"] for r in table]
            error_bars(ax, [f"{m}\noriginal" for m in labels] + [f"{m}\nspliced" for m in labels],
                       [r["NLL original"] for r in table] + [r["NLL spliced"] for r in table],
                       [r["NLL original low"] for r in table] + [r["NLL spliced low"] for r in table],
                       [r["NLL original high"] for r in table] + [r["NLL spliced high"] for r in table],
                       "answer NLL, nats per token", "Answer NLL with the SAE spliced in (95% CI)")

        text = "\n".join(
            f"- **{r['model']}** ({r['hook']}, {r['examples']} answers): NLL {r['NLL original']:.3g} → "
            f"{r['NLL spliced']:.3g} nats per token with the SAE spliced in (change {r['NLL change']:+.3g}, 95% CI "
            f"{r['NLL change low']:+.3g} to {r['NLL change high']:+.3g}); KL {r['KL']:.3g} nats "
            f"(95% CI {r['KL low']:.3g} to {r['KL high']:.3g})." for r in table)
        return StudyReport(self.title, text, [StudyTable("per model", table, "Means over answers, 95% bootstrap CIs.")],
                           [StudyFigure("nll", draw)])
