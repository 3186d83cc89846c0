"""Model diffing with a crosscoder: one dictionary over two models' activations at one hook point.

The crosscoder (``coders.Crosscoder`` with two sources) reads the same image's tokens in model A
and model B and writes both back from one set of features; each feature has a decoder vector per
model. A feature the two models share writes to both; one a fine-tune added writes to B only.
Its **relative decoder norm** says which:

    r = ‖d_B‖ / (‖d_A‖ + ‖d_B‖)     0: model A only, 1/2: both alike, 1: model B only

(Anthropic's crosscoder model diffing, 2024; Kissane et al. 2024). Features are called A-only
below ``low`` (0.1), B-only above ``high`` (0.9), shared in between; dead features (never firing on
the evaluation rows) are counted apart, since their decoder norms mean nothing. For the shared
ones the cosine between d_A and d_B says whether the feature writes the same direction in both.
The L1 penalty sums the per-model norms, so a feature pays for each model it writes to, which pushes
features that only one model needs to r ≈ 0 or 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lvlm_studio.sae.coders import Crosscoder

LOW, HIGH = 0.1, 0.9
CLASSES = ("A only", "shared", "B only")


def relative_norms(coder: Crosscoder) -> np.ndarray:
    """r = ‖d_B‖ / (‖d_A‖ + ‖d_B‖) per feature [d_sae] (NaN for a feature that writes nothing)."""
    norms = coder.source_norms().detach().double().cpu().numpy()  # [d_sae, 2]
    total = norms.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, norms[:, 1] / total, np.nan)


def decoder_cosines(coder: Crosscoder) -> np.ndarray:
    """cos(d_A, d_B) per feature [d_sae]."""
    rows = coder.W_dec.detach().double()
    return torch.nn.functional.cosine_similarity(rows[:, 0], rows[:, 1], dim=-1).cpu().numpy()


def classify(r: np.ndarray, low: float = LOW, high: float = HIGH) -> np.ndarray:
    """"A only", "shared" or "B only" per relative norm."""
    return np.where(r < low, CLASSES[0], np.where(r > high, CLASSES[2], CLASSES[1]))


@dataclass
class CrosscoderReport:
    """Per feature: relative norm, class, cosine of the two decoder vectors, firing rate."""

    relative_norm: np.ndarray
    cosine: np.ndarray
    density: np.ndarray
    model_a: str
    model_b: str

    @property
    def alive(self) -> np.ndarray:
        return self.density > 0

    @property
    def classes(self) -> np.ndarray:
        return classify(self.relative_norm)

    def counts(self) -> dict[str, int]:
        """Alive features per class, and the dead ones."""
        classes = self.classes[self.alive]
        return {**{name: int((classes == name).sum()) for name in CLASSES}, "dead": int((~self.alive).sum())}

    def to_dict(self) -> dict:
        return {"model_a": self.model_a, "model_b": self.model_b, "low": LOW, "high": HIGH, "counts": self.counts(),
                "features": [{"feature": i, "relative_norm": round(float(r), 4), "class": str(c),
                              "cosine": round(float(cos), 4), "density": round(float(d), 5)}
                             for i, (r, c, cos, d) in enumerate(zip(self.relative_norm, self.classes, self.cosine,
                                                                    self.density))]}


@torch.no_grad()
def crosscoder_report(coder: Crosscoder, rows: torch.Tensor, model_a: str = "A", model_b: str = "B"
                      ) -> CrosscoderReport:
    """The report for ``coder`` with feature densities measured on ``rows`` [n, 2, d]."""
    density = (coder.encode(rows) > 0).double().mean(dim=0).cpu().numpy()
    return CrosscoderReport(relative_norms(coder), decoder_cosines(coder), density, model_a, model_b)


def format_report(report: CrosscoderReport, top: int = 10) -> str:
    """Markdown: the class counts, a histogram of relative norms, and the most exclusive features."""
    counts = report.counts()
    alive = report.alive
    lines = [f"# Crosscoder: A = {report.model_a}, B = {report.model_b}", "",
             f"Relative decoder norm r = ‖d_B‖ / (‖d_A‖ + ‖d_B‖) per feature; A only below {LOW}, "
             f"B only above {HIGH}; dead features (never firing on the evaluation rows) apart.", "",
             "| A only | shared | B only | dead |", "|---:|---:|---:|---:|",
             f"| {counts['A only']} | {counts['shared']} | {counts['B only']} | {counts['dead']} |", "",
             "| r | features |", "|---|---:|"]
    edges = np.linspace(0, 1, 11)
    histogram, _ = np.histogram(report.relative_norm[alive], bins=edges)
    lines += [f"| {a:.1f}–{b:.1f} | {n} |" for a, b, n in zip(edges, edges[1:], histogram)]
    shared = alive & (report.classes == "shared")
    if shared.any():
        lines += ["", f"Shared features: median cos(d_A, d_B) {float(np.median(report.cosine[shared])):.3f}."]
    for name, order in (("A only", np.argsort(report.relative_norm)), ("B only", np.argsort(-report.relative_norm))):
        chosen = [i for i in order if alive[i] and report.classes[i] == name][:top]
        if chosen:
            lines += ["", f"## {name}", "", "| feature | r | firing rate |", "|---:|---:|---:|"]
            lines += [f"| {i} | {report.relative_norm[i]:.3f} | {report.density[i]:.4f} |" for i in chosen]
    return "\n".join(lines) + "\n"
