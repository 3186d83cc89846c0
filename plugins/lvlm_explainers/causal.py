"""Causal token subsets (CLEANN-style): which image tokens does an answer token causally depend on?

Following Rohekar et al. (NeurIPS 2023), one attention head is read as a linear structural model
over the sequence, Z = A U with independent unit-variance noise U, so the tokens' covariance is
A A^T. For the target answer token at position p (predicted from query p - 1):

1. Nodes: the top-k image tokens by the attention of query p - 1 (k = min(max(2, #{a > theta}),
   ``max_image_tokens``)), the text tokens after the image that query p - 1 attends to more than
   theta, and the query itself (the "target" node).
2. Their correlation matrix is A_n A_n^T normalised to unit diagonal, A_n being the nodes' rows
   of the head's attention (keys 0..p - 1) with the residual path added as attention rollout adds
   it: (1 - r) A + r I, r = ``residual`` (0 gives the plain A A^T). Without it, a query and the
   image token it attends to need not correlate at all (their rows share no keys), although the
   query reads that token's state; with it, they do, in proportion to the attention.
3. PC (causal-learn) learns the graph with Fisher-z partial-correlation tests at ``alpha`` as if
   from ``samples`` observations: causal-learn's test reads a data matrix, so it is given one whose
   sample correlation is exactly the matrix of step 2 (whitened noise times its Cholesky factor).
4. The explanation: the image nodes within ``radius`` edges of the target. Each is weighted by
   sum over its edges inside the explanation of (1 - p), p the edge's unconditional Fisher-z
   p-value: tokens tied strongly and to many others of the explanation weigh most.

With ``head`` = -1 (the default) this is done for every head of the layer and the weights are
summed over heads, as the reference application (LVLM-Interpret) builds its total map: the subset
is the union of the heads' explanations. One head alone rarely covers an object: on the demo
model each head attends sharply to one or two of an object's patches, and blurring one patch
leaves the object recognisable from the rest. A given ``head`` explains with that head only.

The map holds those weights on the region grids (zero elsewhere). Validation, in the provenance:
the explaining tokens' patches are blurred (the LLR baseline, in original-image pixels) and the
drop in the target's probability is set beside the drop from ``random_draws`` random subsets of
the same size; the outcome ("beats", "ties" within ``TIE_TOLERANCE``, or "loses") compares the
drops in log-odds (the same order as probability, without float32 saturation) against the
random subsets' median (every draw's drop is kept, ``random_drops`` and ``random_log_odds_drops``,
and each head's graph as ``nodes`` and ``edge_list``, pairs of positions: the causal graph view
draws them); a smaller set
with the same drop is the better explanation. Models whose image enters through cross-attention
have no image tokens in the sequence to build the graph from.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from scipy.stats import norm

from lvlm_studio.api import (
    Explainer,
    Explanation,
    InputError,
    Param,
    Progress,
    attention_implementation,
    blend,
    blurred_baseline,
    image_tokens_reason,
    relay,
    require_applicable,
    score_images,
    split_by_region,
)


def correlation_from_rows(rows: np.ndarray) -> np.ndarray:
    """A A^T of attention rows, normalised to unit diagonal (rows with no mass become independent)."""
    rows = np.asarray(rows, dtype=np.float64)
    cov = rows @ rows.T
    scale = np.sqrt(np.clip(np.diag(cov), 1e-300, None))
    corr = cov / scale[:, None] / scale[None, :]
    corr[np.diag(cov) <= 0] = 0.0
    corr[:, np.diag(cov) <= 0] = 0.0
    np.fill_diagonal(corr, 1.0)
    return corr


def data_with_correlation(corr: np.ndarray, samples: int, seed: int = 0, ridge: float = 1e-6) -> np.ndarray:
    """A [samples, nodes] matrix whose sample correlation equals ``corr`` (plus a tiny ridge that
    keeps duplicated rows from making it singular)."""
    k = corr.shape[0]
    if samples <= k + 3:
        raise InputError(f"{samples} samples are too few for {k} nodes.", f"Use at least {k + 4} samples.")
    target = corr + ridge * np.eye(k)
    target /= np.sqrt(np.outer(np.diag(target), np.diag(target)))
    noise = np.random.default_rng(seed).standard_normal((samples, k))
    noise -= noise.mean(axis=0)
    white, _ = np.linalg.qr(noise)  # orthonormal, still centred columns: identity sample correlation
    return white @ np.linalg.cholesky(target).T


def fisher_z_pvalue(r: float, samples: int, conditioning: int = 0) -> float:
    """Two-sided p-value of Fisher's z test for a (partial) correlation ``r``."""
    r = float(np.clip(r, -1 + 1e-12, 1 - 1e-12))
    return float(2 * (1 - norm.cdf(np.sqrt(samples - conditioning - 3) * abs(np.arctanh(r)))))


def learn_graph(corr: np.ndarray, samples: int, alpha: float) -> np.ndarray:
    """Adjacency (bool, symmetric) of the graph PC learns from ``corr`` with Fisher-z tests."""
    from causallearn.search.ConstraintBased.PC import pc

    data = data_with_correlation(corr, samples)
    graph = pc(data, alpha=alpha, indep_test="fisherz", show_progress=False, verbose=False).G.graph
    adjacency = (graph != 0) | (graph.T != 0)
    np.fill_diagonal(adjacency, False)
    return adjacency


def within_radius(adjacency: np.ndarray, source: int, radius: int) -> dict[int, int]:
    """Node -> number of edges from ``source``, for nodes at most ``radius`` edges away."""
    distance = {source: 0}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        if distance[node] == radius:
            continue
        for other in np.flatnonzero(adjacency[node]):
            if int(other) not in distance:
                distance[int(other)] = distance[node] + 1
                queue.append(int(other))
    return distance


def select_nodes(attention: np.ndarray, image_positions: np.ndarray, query: int, threshold: float,
                 max_image_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(image node positions, text node positions) for ``query``'s row of one head [T, T]."""
    on_image = attention[query, image_positions]
    k = min(max(2, int((on_image > threshold).sum())), max_image_tokens, len(image_positions))
    order = np.argsort(-on_image, kind="stable")[:k]
    after = np.arange(int(image_positions.max()) + 1, query)
    text = after[attention[query, after] > threshold] if len(after) else after
    return image_positions[order], text


class CausalSubset(Explainer):
    id = "causal"
    title = "Causal token subset (CLEANN-style)"
    needs = frozenset({"model", "eager_attention"})
    params = (
        Param("layer", -1, "decoder layer whose attention is read (negative counts from the last)"),
        Param("head", -1, "attention head; -1 explains with every head and sums their weights"),
        Param("threshold", 0.01, "attention above which a token becomes a node", minimum=0.0, maximum=1.0),
        Param("residual", 0.5, "weight of each token's own state (the residual path) in its row", minimum=0.0,
              maximum=1.0),
        Param("max_image_tokens", 50, "most image tokens taken as nodes", minimum=2, maximum=1000),
        Param("alpha", 1e-5, "significance level of the Fisher-z tests", minimum=1e-12, maximum=0.5),
        Param("samples", 128, "effective sample size of the tests", minimum=8, maximum=100_000),
        Param("radius", 3, "explanation: image nodes within this many edges of the target", minimum=1, maximum=20),
        Param("random_draws", 5, "random subsets of the same size in the validation", minimum=1, maximum=1000),
        Param("seed", 0, "seed of the random subsets"),
        Param("batch_size", 16, "images per forward pass in the validation", minimum=1, maximum=1024),
    )

    def applies_to(self, model, params: dict[str, Any]) -> str | None:
        return image_tokens_reason(model, "the causal token subset")

    def per_target(self, params: dict[str, Any]) -> bool:
        return True  # a graph and a validation per token: the selected token's map comes first in the app

    def explain(self, trace, model, targets, params: dict[str, Any]):
        if model is None:
            raise InputError("the causal subset needs the model, not only a saved trace.", "Load the model first.")
        if not targets:
            raise InputError("no answer tokens were chosen to explain.", "Pick at least one answer token.")
        queries = [trace.answer_position(t) - 1 for t in targets]
        require_applicable(self, model, params)
        image_positions = trace.image_positions
        if len(image_positions) == 0:
            raise InputError("the prompt has no image tokens.", "Ask about an image.")
        layers = model.adapter.attention_modules()
        layer = params["layer"] if params["layer"] >= 0 else len(layers) + params["layer"]
        if not 0 <= layer < len(layers):
            raise InputError(f"layer {params['layer']} does not exist.", f"This model has {len(layers)} layers.")
        total = 1 + len(targets) * 2
        yield Progress(0, total, "attention of one layer")
        attention = self._attention(trace, model, layers[layer], max(queries) + 1)  # [heads, T, T]
        if params["head"] >= attention.shape[0]:
            raise InputError(f"head {params['head']} does not exist.", f"Layer {layer} has {attention.shape[0]} heads.")
        baseline = blurred_baseline(trace.image)
        maps, details = {}, {}
        for i, (t, query) in enumerate(zip(targets, queries)):
            yield Progress(1 + 2 * i, total, f"causal graph for token {t}")
            found = self._explain_heads(attention, image_positions, query, params)
            weights = np.zeros(len(image_positions))
            index = {int(p): j for j, p in enumerate(image_positions)}
            for position, weight in found["weights"].items():
                weights[index[position]] = weight
            maps[t] = split_by_region(weights, trace.regions)
            subset = [int(p) for p in found["weights"]]
            # Each token's random subsets are seeded by the token too: asked alone or with others
            # (the app asks for the selected token first), a token's validation is the same.
            rng = np.random.default_rng((params["seed"], t))
            validation = yield from self._validate(trace, model, baseline, t, subset, rng, params,
                                                   Progress(2 + 2 * i, total, f"validation for token {t}"))
            details[str(t)] = {**{k: v for k, v in found.items() if k != "weights"},
                               "subset": subset, "weights": [found["weights"][p] for p in subset], **validation}
        provenance = {
            "method": self.id, "layer": layer, "tokens": details,
            "graph": "PC (causal-learn), Fisher-z tests on each head's A A^T correlation; weights summed over heads",
            "model": model.describe(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return Explanation(self.id, maps, params, provenance)

    @staticmethod
    def _attention(trace, model, module: torch.nn.Module, upto: int) -> np.ndarray:
        """One layer's attention [heads, upto, upto], from one eager forward."""
        kept: list[torch.Tensor] = []

        def hook(mod: torch.nn.Module, args: tuple, output: tuple) -> None:
            if output[1] is None:
                raise RuntimeError("the attention module returned no weights; is the implementation eager?")
            kept.append(output[1][0].float().cpu())

        handle = module.register_forward_hook(hook)
        try:
            with torch.no_grad(), attention_implementation(model.model, "eager"):
                model.model(**trace.teacher_forced_inputs(model, upto=upto), use_cache=False, logits_to_keep=1)
        finally:
            handle.remove()
        return kept[-1].numpy()

    @classmethod
    def _explain_heads(cls, attention: np.ndarray, image_positions: np.ndarray, query: int,
                       params: dict[str, Any]) -> dict[str, Any]:
        """The chosen head's explanation, or (head -1) every head's, with weights summed over heads.
        The subset's order: by weight, heaviest first (ties by position)."""
        heads = range(attention.shape[0]) if params["head"] < 0 else [params["head"]]
        per_head = {h: cls._explain_one(attention[h], image_positions, query, params) for h in heads}
        weights: dict[int, float] = {}
        for found in per_head.values():
            for position, weight in found["weights"].items():
                weights[position] = weights.get(position, 0.0) + weight
        order = sorted(weights, key=lambda p: (-weights[p], p))
        candidates = sorted({n for f in per_head.values() for n in f["nodes"][: f["image_nodes"]]})
        return {"heads": {str(h): found for h, found in per_head.items()}, "image_nodes": candidates,
                "weights": {p: weights[p] for p in order}}

    @staticmethod
    def _explain_one(a: np.ndarray, image_positions: np.ndarray, query: int,
                     params: dict[str, Any]) -> dict[str, Any]:
        """One head's graph and explanation; ``a`` is its attention [T, T]."""
        image_nodes, text_nodes = select_nodes(a, image_positions, query, params["threshold"],
                                               params["max_image_tokens"])
        nodes = np.concatenate([image_nodes, text_nodes, [query]]).astype(int)
        rows = (1 - params["residual"]) * a[nodes, : query + 1]
        rows[np.arange(len(nodes)), nodes] += params["residual"]
        corr = correlation_from_rows(rows)
        samples = max(params["samples"], len(nodes) + 4)
        adjacency = learn_graph(corr, samples, params["alpha"])
        target = len(nodes) - 1
        near = within_radius(adjacency, target, params["radius"])
        explaining = [j for j in near if j < len(image_nodes)]
        members = set(near)
        weights = {}
        for j in sorted(explaining, key=lambda j: (near[j], j)):
            edges = [k for k in np.flatnonzero(adjacency[j]) if int(k) in members]
            weights[int(nodes[j])] = float(sum(1 - fisher_z_pvalue(corr[j, k], samples) for k in edges))
        return {"nodes": [int(n) for n in nodes], "image_nodes": len(image_nodes),
                "text_nodes": [int(n) for n in text_nodes], "edges": int(adjacency.sum() // 2),
                "edge_list": [[int(nodes[j]), int(nodes[k])] for j, k in zip(*np.nonzero(np.triu(adjacency)))],
                "samples": samples, "distances": {int(nodes[j]): near[j] for j in explaining}, "weights": weights}

    @staticmethod
    def _validate(trace, model, baseline, target: int, subset: list[int], rng: np.random.Generator,
                  params: dict[str, Any], progress: Progress):
        """Drop in the target's probability when the subset's patches are blurred, and the mean
        drop for random subsets of the same size."""
        yield progress
        if not subset:
            return {"probability": float(np.exp(trace.logprobs[target])), "subset_drop": 0.0,
                    "random_drop": 0.0, "random_drops": [], "outcome": "empty", "beats_random": False}
        positions = trace.image_positions
        draws = [sorted(rng.choice(positions, size=len(subset), replace=False).tolist())
                 for _ in range(params["random_draws"])]
        images = [trace.image] + [blend(trace.image, baseline, token_keep(trace, s)) for s in [subset, *draws]]
        scores = yield from relay(
            score_images(model, trace, images, params["batch_size"], "validation images", log_odds=True,
                         upto=target + 1),
            lambda step: Progress(progress.done, progress.total,
                                  f"{progress.message}: {step.done}/{step.total} images"))
        log_odds = scores[:, target].astype(np.float64)
        p = 1.0 / (1.0 + np.exp(-log_odds))
        drops, odds_drops = p[0] - p[1:], log_odds[0] - log_odds[1:]
        outcome = compare_drops(odds_drops[0], np.median(odds_drops[1:]))
        return {"probability": float(p[0]), "subset_drop": float(drops[0]), "random_drop": float(drops[1:].mean()),
                "random_drops": [float(d) for d in drops[1:]], "subset_log_odds_drop": float(odds_drops[0]),
                "random_log_odds_drops": [float(d) for d in odds_drops[1:]],
                "random_log_odds_drop": float(np.median(odds_drops[1:])), "outcome": outcome,
                "beats_random": outcome == "beats"}


#: Drops in log-odds closer than this are a tie. The outcome is decided in log-odds, log(p / (1 - p)),
#: which orders images exactly as p does but does not saturate: a model with p = 0.99999 moves p by
#: less than float32 can show when one patch is blurred, while its log-odds still move measurably.
TIE_TOLERANCE = 1e-3


def compare_drops(subset_drop: float, random_drop: float, tolerance: float = TIE_TOLERANCE) -> str:
    """"beats", "ties" or "loses": the subset's drop in log-odds against the random subsets' median."""
    if subset_drop > random_drop + tolerance:
        return "beats"
    return "loses" if subset_drop < random_drop - tolerance else "ties"


def token_keep(trace, positions: list[int]) -> np.ndarray:
    """Keep mask (height, width) of the original image: 0 over the patches of the given image
    tokens (each token's cell of its region's box), 1 elsewhere."""
    width, height = trace.image.size
    keep = np.ones((height, width), dtype=np.float32)
    wanted = set(int(p) for p in positions)
    for region in trace.regions:
        rows, cols = region.grid
        left, top, right, bottom = region.box
        cell_w, cell_h = (right - left) / cols, (bottom - top) / rows
        for index, position in enumerate(region.positions):
            if int(position) not in wanted:
                continue
            r, c = divmod(index, cols)
            x0, x1 = int(np.floor(left + c * cell_w)), int(np.ceil(left + (c + 1) * cell_w))
            y0, y1 = int(np.floor(top + r * cell_h)), int(np.ceil(top + (r + 1) * cell_h))
            keep[max(0, y0):max(0, min(height, y1)), max(0, x0):max(0, min(width, x1))] = 0.0
    return keep
