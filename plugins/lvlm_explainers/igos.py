"""iGOS++ for open-ended answers: deletion and insertion masks optimised with integrated gradients.

Score S(x) = sum of the log-probabilities of the answer's visually relevant tokens (the LLR rule
of ``lvlm_studio.core.tracing.relevance``), teacher-forced. With the blurred baseline b and a mask M
(1 = keep), phi(a, c, M) = a M + c (1 - M) and the integrated score along the straight path is
IS(a, c, M) = (1/N) sum_{k=1..N} S(phi(a, c, (k/N) M)). Two masks are learnt, deletion M_d
(removing what it marks should destroy the score) and insertion M_i (revealing what it marks
should restore it), by minimising

    1/2 [IS(x, b, M_d) - IS(b, x, M_i) + IS(x, b, M_d M_i) - IS(b, x, M_d M_i)]
    + lambda1 mean|1 - M| + lambda3 BTV(M) + lambda2 e^(-gamma i) sum (1 - M)^2,   M = M_d M_i

where BTV is a total variation whose weights fall across edges of the image (bilateral), so the
mask may change where the picture does. The map is 1 - M_d M_i.

Our choices, where the reference (a 224 px classifier) does not carry over:

* One mask per image region (AnyRes base view and high-res tiles each get their own), laid onto
  the processed pixels by ``lvlm_studio.core.perturbation.pixel_masks``; each mask has the region's grid shape,
  or ``mask_size`` cells a side when the grid is finer. A region's map is its own mask.
* Steps are Nesterov momentum steps of ``lr`` times the gradient divided by its largest entry:
  answers' log-probabilities differ in scale from model to model, so a raw learning rate tuned
  on one would be wrong on the next; masks are clamped to [0, 1] after each step.
* Every integration point of the four terms is one row of a batch: ``4 N`` rows per iteration,
  ``batch_size`` per forward + backward pass, one progress report per pass.

The score defaults to the visually relevant tokens (one map that explains the whole answer,
given to every target); with none relevant, the targets' own log-probabilities are used and the
provenance says so. ``score=target`` optimises one pair of masks per target instead.
Caveat from the method's review: iGOS++ optimises the deletion/insertion score it is judged by.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lvlm_studio.api import (
    Explainer,
    Explanation,
    InputError,
    Param,
    PixelLayout,
    Progress,
    answer_logprobs_with_grad,
    blurred_baseline,
    pixel_layout,
    visual_relevance,
)


def mask_shape(grid: tuple[int, int], mask_size: int) -> tuple[int, int]:
    """A region's mask: its grid, or ``mask_size`` cells a side where the grid is finer."""
    return min(grid[0], mask_size), min(grid[1], mask_size)


def bilateral_tv(mask: torch.Tensor, guide: torch.Tensor, sigma: float) -> torch.Tensor:
    """Total variation of ``mask`` [h, w], each squared difference weighted by
    exp(-|guide difference|^2 / sigma), ``guide`` being the image [3, h, w] in [0, 1]."""
    wx = torch.exp(-((guide[:, :, 1:] - guide[:, :, :-1]) ** 2).sum(0) / sigma)
    wy = torch.exp(-((guide[:, 1:, :] - guide[:, :-1, :]) ** 2).sum(0) / sigma)
    dx = (mask[:, 1:] - mask[:, :-1]) ** 2
    dy = (mask[1:, :] - mask[:-1, :]) ** 2
    terms = [(w * d).mean() for w, d in ((wx, dx), (wy, dy)) if d.numel()]
    return torch.stack(terms).sum() if terms else mask.new_zeros(())


def region_guide(image: Image.Image, box: tuple[float, float, float, float], shape: tuple[int, int]) -> torch.Tensor:
    """The part of the image a region shows, resized to its mask: [3, h, w] in [0, 1]."""
    left, top, right, bottom = box
    crop = image.convert("RGB").crop((round(left), round(top), round(right), round(bottom)))
    resized = crop.resize((shape[1], shape[0]), Image.Resampling.BOX)
    return torch.as_tensor(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)


def regularisation(masks: list[torch.Tensor], guides: list[torch.Tensor], params: dict[str, Any],
                   iteration: int) -> torch.Tensor:
    """lambda1 mean|1 - M| + lambda3 BTV(M) + lambda2 e^(-gamma i) sum (1 - M)^2, summed over regions."""
    decay = params["lambda2"] * math.exp(-params["gamma"] * iteration)
    total = masks[0].new_zeros(())
    for mask, guide in zip(masks, guides):
        total = total + params["lambda1"] * (1 - mask).abs().mean()
        total = total + params["lambda3"] * bilateral_tv(mask, guide, params["tv_sigma"])
        total = total + decay * ((1 - mask) ** 2).sum()
    return total


class IGOSPlusPlus(Explainer):
    id = "igos++"
    title = "iGOS++ (integrated-gradient optimised masks)"
    needs = frozenset({"model", "gradients"})
    params = (
        Param("score", "relevant", "what the masks explain: the sum of log-probs of the visually relevant tokens "
              "(one map for the answer) or each target token on its own", choices=("relevant", "target")),
        Param("iterations", 5, "optimisation steps", minimum=1, maximum=200),
        Param("steps", 10, "integration steps N along the path from the baseline", minimum=1, maximum=100),
        Param("mask_size", 32, "mask cells a side (a coarser region grid is used as it is)", minimum=1, maximum=256),
        Param("lambda1", 1.0, "weight of the L1 term mean|1 - M|", minimum=0.0),
        Param("lambda2", 0.1, "weight of the decaying L2 term sum (1 - M)^2", minimum=0.0),
        Param("lambda3", 10.0, "weight of the bilateral total variation", minimum=0.0),
        Param("gamma", 1.0, "decay rate of the L2 weight per iteration", minimum=0.0),
        Param("tv_sigma", 0.01, "bilateral TV: how fast smoothing weakens across image edges", minimum=1e-6),
        Param("lr", 0.2, "step: the largest mask change of a plain gradient step", minimum=1e-6, maximum=1.0),
        Param("momentum", 3.0, "Nesterov momentum i / (i + momentum)", minimum=0.0),
        Param("batch_size", 20, "integration points per forward + backward pass", minimum=1, maximum=1024),
    )

    def per_target(self, params: dict[str, Any]) -> bool:
        # One mask optimised per token (score "target"); the default shares one mask by all tokens.
        return params["score"] == "target"

    def explain(self, trace, model, targets, params: dict[str, Any]):
        if model is None:
            raise InputError("iGOS++ needs the model, not only a saved trace.", "Load the model first.")
        if not targets:
            raise InputError("no answer tokens were chosen to explain.", "Pick at least one answer token.")
        for t in targets:
            trace.answer_position(t)  # raises for a token that does not exist
        started = time.perf_counter()
        yield Progress(0, 1, "visual relevance and pixel layout")
        relevance = visual_relevance(trace, model)
        baseline = blurred_baseline(trace.image, relevance.blur_sigma)
        layout = pixel_layout(model, trace, baseline)
        relevant = relevance.relevant_indices
        fallback = params["score"] == "relevant" and not relevant
        if params["score"] == "target":
            jobs = [[t] for t in targets]
        else:
            jobs = [relevant or list(targets)]
        rows = 4 * params["steps"]
        passes_per_map = params["iterations"] * math.ceil(rows / params["batch_size"])
        total = passes_per_map * len(jobs)
        counter = {"passes": 0, "total": total}
        results = []
        for tokens in jobs:
            saliency, history = yield from self._optimise(trace, model, layout, tokens, params, counter)
            results.append((tokens, saliency, history))
        maps = {}
        for t in targets:  # one shared map (score over the relevant tokens) or one per target
            _, saliency, _ = results[0] if len(results) == 1 else results[targets.index(t)]
            maps[t] = [m.copy() for m in saliency]
        elapsed = time.perf_counter() - started
        provenance = {
            "method": self.id,
            "score": ("sum of log-probs of the visually relevant tokens" if params["score"] == "relevant"
                      and not fallback else "log-probs of the target token(s)"),
            "score_tokens": [[int(i) for i in tokens] for tokens, _, _ in results],
            "score_token_text": [[trace.answer_tokens[i] for i in tokens] for tokens, _, _ in results],
            "fallback": ("no answer token is visually relevant (LLR rule); the targets' own log-probs were "
                         "used" if fallback else None),
            "baseline": f"Gaussian blur, sigma {relevance.blur_sigma:.1f} px",
            "masks": [list(mask_shape(r.grid, params["mask_size"])) for r in trace.regions],
            "forward_backward_passes": counter["passes"],
            "rows_per_map": params["iterations"] * rows,
            "loss_history": [h for _, _, h in results],
            "model": model.describe(),
            "seconds": round(elapsed, 3),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return Explanation(self.id, maps, params, provenance)

    def _optimise(self, trace, model, layout: PixelLayout, tokens: list[int], params: dict[str, Any],
                  counter: dict[str, int]):
        """Learn M_d and M_i for the score over ``tokens``; returns (maps per region, loss history)."""
        shapes = [mask_shape(r.grid, params["mask_size"]) for r in trace.regions]
        device = model.device  # masks live beside the model: the blend and its gradients stay on the GPU
        guides = [region_guide(trace.image, r.box, s).to(device) for r, s in zip(trace.regions, shapes)]
        deletion = [torch.ones(s, device=device) for s in shapes]
        insertion = [torch.ones(s, device=device) for s in shapes]
        previous = [m.clone() for m in deletion + insertion]
        n = params["steps"]
        alphas = (torch.arange(1, n + 1, dtype=torch.float32) / n).tolist()
        # (term, alpha) for every row: terms 0 = del M_d, 1 = ins M_i, 2 = del M_d M_i, 3 = ins M_d M_i.
        plan = [(term, float(a)) for term in range(4) for a in alphas]
        index = torch.as_tensor(tokens, dtype=torch.long)
        history = []
        for iteration in range(params["iterations"]):
            leaves = [m.detach().clone().requires_grad_(True) for m in deletion + insertion]
            grads = [torch.zeros_like(m) for m in leaves]
            score_sum = [0.0] * 4
            for start in range(0, len(plan), params["batch_size"]):
                yield Progress(counter["passes"], counter["total"], f"iteration {iteration + 1}: scores and gradients")
                chunk = plan[start:start + params["batch_size"]]
                with torch.enable_grad():
                    masks_d, masks_i = leaves[: len(shapes)], leaves[len(shapes):]
                    region_rows = []
                    for r in range(len(shapes)):
                        terms = [masks_d[r], masks_i[r], masks_d[r] * masks_i[r], masks_d[r] * masks_i[r]]
                        region_rows.append(torch.stack([a * terms[term] for term, a in chunk]))
                    keep = layout.keep(region_rows)
                    insert = torch.tensor([term in (1, 3) for term, _ in chunk], device=device)
                    values = layout.blend(keep, insert)
                    logprobs = answer_logprobs_with_grad(model, trace, layout.model_inputs(values), len(chunk))
                    scores = logprobs[:, index.to(logprobs.device)].sum(dim=1)
                    sign = torch.where(insert, -1.0, 1.0).to(scores.device)
                    loss = (sign * scores).sum() / (2 * n)
                    step_grads = torch.autograd.grad(loss, leaves, allow_unused=True)
                for g, sg in zip(grads, step_grads):
                    if sg is not None:
                        g += sg.detach()
                for (term, _), s in zip(chunk, scores.detach().tolist()):
                    score_sum[term] += s / n
                counter["passes"] += 1
            with torch.enable_grad():
                masks_d, masks_i = leaves[: len(shapes)], leaves[len(shapes):]
                combined = [d * i for d, i in zip(masks_d, masks_i)]
                reg = regularisation(combined, guides, params, iteration)
                reg_grads = torch.autograd.grad(reg, leaves, allow_unused=True)
            for g, rg in zip(grads, reg_grads):
                if rg is not None:
                    g += rg
            history.append({"deletion": round(score_sum[0], 4), "insertion": round(score_sum[1], 4),
                            "combined_deletion": round(score_sum[2], 4), "combined_insertion": round(score_sum[3], 4),
                            "regularisation": round(float(reg.detach()), 4)})
            largest = max(float(g.abs().max()) for g in grads)
            if largest == 0:
                break
            momentum = iteration / (iteration + params["momentum"]) if params["momentum"] > 0 else 0.0
            current = [m.detach() for m in leaves]
            for k, (m, g) in enumerate(zip(current, grads)):
                step = m - params["lr"] * g / largest
                moved = step + momentum * (step - previous[k])
                previous[k] = step
                current[k] = moved.clamp(0.0, 1.0)
            deletion, insertion = current[: len(shapes)], current[len(shapes):]
        maps = []
        for r, region in enumerate(trace.regions):
            saliency = (1 - deletion[r] * insertion[r])[None, None]
            if tuple(saliency.shape[-2:]) != tuple(region.grid):
                saliency = F.interpolate(saliency, size=tuple(region.grid), mode="bilinear", align_corners=False)
            maps.append(saliency[0, 0].double().cpu().numpy())
        return maps, history
