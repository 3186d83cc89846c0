"""How good is a sparse coder? Sparsity, reconstruction, and what the model loses when it uses it.

Per example (an image, a prompt, and an answer: the reference one, or the model's own greedy one):

* the coder's rows at its hook point give L0 (active features per token: per patch and per class
  token for vision coders, per text position for language ones), explained variance
  1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², and which features fired at all (dead vs alive);
* three teacher-forced passes give the answer's mean NLL with the model as is, with x̂ spliced in
  place of x (the substitution test), and with zeros in place of x; CE recovered is
  (NLL_zero − NLL_coder) / (NLL_zero − NLL_original): 1 when the coder loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from lvlm_studio.core.models.hooks import hook_points, hooks, run_with_cache
from lvlm_studio.core.plugin.jobs import Job, Progress
from lvlm_studio.sae.activations import vision_rows
from lvlm_studio.sae.coders import SparseAutoencoder
from lvlm_studio.sae.splice import row_index, splice_hook

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel

Example = tuple[Image.Image, str, "str | None"]


@dataclass
class Evaluation:
    hook_name: str
    tokens: str
    examples: int
    rows: int
    l0: float  # per row the coder reads (patch, or text position)
    l0_cls: float | None  # per class token, for vision towers that have one
    explained_variance: float
    alive: int
    dead: int
    d_sae: int
    nll_original: float
    nll_coder: float
    nll_zero: float

    @property
    def ce_recovered(self) -> float:
        gap = self.nll_zero - self.nll_original
        return float("nan") if abs(gap) < 1e-12 else (self.nll_zero - self.nll_coder) / gap

    def to_dict(self) -> dict[str, float | int | str | None]:
        return asdict(self) | {"ce_recovered": self.ce_recovered}


def _inputs(loaded: LoadedModel, image: Image.Image, prompt: str, answer: str | None
            ) -> tuple[dict[str, torch.Tensor], int]:
    """Teacher-forced inputs over prompt + answer, and how many answer tokens end the sequence."""
    from lvlm_studio.core.models.inputs import forward_inputs
    from lvlm_studio.core.tracing.trace import generate_trace, prompt_with_template

    if answer is None:
        answer = generate_trace(loaded, image, prompt).answer_text
    tokenizer = loaded.processor.tokenizer
    encoded = loaded.processor(images=[image], text=[prompt_with_template(loaded.processor, prompt)],
                               return_tensors="pt")
    answer_ids = tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if tokenizer.eos_token_id is not None:  # the end of the answer is part of what the model must predict
        answer_ids = torch.cat([answer_ids, torch.tensor([[tokenizer.eos_token_id]])], dim=1)
    ids = torch.cat([encoded["input_ids"], answer_ids], dim=1).to(loaded.device)
    extras = {k: v.to(loaded.device) for k, v in encoded.items() if k not in ("input_ids", "attention_mask")}
    return forward_inputs(ids, extras, loaded.model.dtype, loaded.adapter.generated_token_inputs), answer_ids.shape[1]


def _nll(loaded: LoadedModel, inputs: dict[str, torch.Tensor], n_answer: int) -> float:
    logits = loaded.model(**inputs, use_cache=False, logits_to_keep=n_answer + 1).logits[0, :-1].float()
    targets = inputs["input_ids"][0, -n_answer:].to(logits.device)
    return float(torch.nn.functional.cross_entropy(logits, targets))


@torch.no_grad()
def evaluate_coder(loaded: LoadedModel, coder: SparseAutoencoder, examples: Iterable[Example], total: int
                   ) -> Job[Evaluation]:
    """Evaluate ``coder`` on ``examples`` (a job: one progress report per example, three passes each)."""
    cfg = coder.cfg
    point = hook_points(loaded)[cfg.hook_name]
    fired = torch.zeros(cfg.d_sae, dtype=torch.bool)
    l0_sum = l0_cls_sum = 0.0
    rows = cls_rows = 0
    error = 0.0
    xs_sum = None
    nll = np.zeros(3)
    count = 0
    seen: list[torch.Tensor] = []  # the rows, for the variance around their mean at the end
    for image, prompt, answer in examples:
        inputs, n_answer = _inputs(loaded, image.convert("RGB"), prompt, answer)
        _, cache = run_with_cache(loaded, inputs, [cfg.hook_name])
        activation = cache[cfg.hook_name]
        x = activation.reshape(-1, activation.shape[-1]).index_select(
            0, row_index(loaded, coder, inputs, activation).to(activation.device)).float()
        f = coder.encode(x)
        l0_sum += float((f > 0).sum())
        rows += len(x)
        fired |= (f > 0).any(dim=0).cpu()
        residual = coder.decode(f, x) - x
        error += float(residual.pow(2).sum())
        seen.append(x)
        xs_sum = x.sum(dim=0) if xs_sum is None else xs_sum + x.sum(dim=0)
        if point.part == "vision" and cfg.tokens == "patch":
            cls_x = _cls_rows(loaded, inputs, activation)
            if cls_x is not None:
                l0_cls_sum += float((coder.encode(cls_x.float()) > 0).sum())
                cls_rows += len(cls_x)
        nll[0] += _nll(loaded, inputs, n_answer)
        for slot, mode in ((1, "reconstruct"), (2, "zero")):
            with hooks(loaded, [(cfg.hook_name, splice_hook(loaded, coder, inputs, mode))]):
                nll[slot] += _nll(loaded, inputs, n_answer)
        count += 1
        yield Progress(count, total, f"L0 {l0_sum / max(rows, 1):.1f}")
    mean = xs_sum / rows
    total_var = sum(float((x - mean).pow(2).sum()) for x in seen)
    nll /= max(count, 1)
    l0_cls = (l0_cls_sum / cls_rows) if cls_rows else None
    if point.part == "vision" and cfg.tokens in ("cls", "all"):
        l0_cls = None if cfg.tokens == "all" else l0_sum / max(rows, 1)
    return Evaluation(cfg.hook_name, cfg.tokens, count, rows, l0_sum / max(rows, 1), l0_cls,
                      1.0 - error / max(total_var, 1e-12), int(fired.sum()), int((~fired).sum()), cfg.d_sae,
                      float(nll[0]), float(nll[1]), float(nll[2]))


def _cls_rows(loaded: LoadedModel, inputs: dict[str, torch.Tensor], activation: torch.Tensor) -> torch.Tensor | None:
    grids = loaded.adapter.vision_patch_grids(inputs)
    if not (activation.dim() == 3 and activation.shape[1] == grids[0].size + 1):
        return None
    return vision_rows(activation, grids, "cls")


def format_evaluations(evaluations: Sequence[tuple[str, Evaluation]]) -> str:
    """A Markdown table, one column per coder (e.g. vision beside language)."""
    def show(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    header = "| metric | " + " | ".join(name for name, _ in evaluations) + " |"
    lines = [header, "|---|" + "---:|" * len(evaluations)]
    table = [
        ("hook point", [e.hook_name for _, e in evaluations]),
        ("tokens", [f"{e.tokens} ({e.rows} rows, {e.examples} examples)" for _, e in evaluations]),
        ("features (d_sae)", [str(e.d_sae) for _, e in evaluations]),
        ("L0 per token", [show(e.l0, 1) for _, e in evaluations]),
        ("L0 per CLS token", [show(e.l0_cls, 1) for _, e in evaluations]),
        ("L0 / d_sae", [show(e.l0 / e.d_sae) for _, e in evaluations]),
        ("explained variance", [show(e.explained_variance) for _, e in evaluations]),
        ("alive / dead features", [f"{e.alive} / {e.dead}" for _, e in evaluations]),
        ("answer NLL, original", [show(e.nll_original, 4) for _, e in evaluations]),
        ("answer NLL, coder spliced in", [show(e.nll_coder, 4) for _, e in evaluations]),
        ("answer NLL, zero-ablated", [show(e.nll_zero, 4) for _, e in evaluations]),
        ("CE recovered", [show(e.ce_recovered) for _, e in evaluations]),
    ]
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in table]
    return "\n".join(lines) + "\n"
