"""The causal token subset's graph and its validation, read from a ``causal`` explanation.

The causal-subset method (``plugins/lvlm_explainers/causal.py``) learns, per attention head, a graph
over a few tokens (image tokens, text tokens, and the query that predicts the answer token: the
"target"), picks the image tokens near the target as the explaining subset, and validates it: the
drop in the token's probability (and log-odds) when the subset's patches are blurred, against the
drops for random subsets of the same size. All of it is kept in the explanation's provenance
(``tokens[str(t)]``); ``causal_graph`` turns that into something to draw: the union of the heads'
graphs (an edge's ``heads`` counts the heads that learned it), the chosen subset marked, a layout
(the target in the centre, the other nodes on rings by their number of edges from it), and the
validation numbers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lvlm_studio.core.errors import InputError


@dataclass
class GraphNode:
    position: int  # in the trace's sequence
    label: str
    kind: str  # "image", "text" or "target"
    in_subset: bool = False
    weight: float = 0.0  # the method's weight in the subset (0 outside it)
    distance: int = -1  # edges from the target in the union graph (-1: not connected)


@dataclass
class CausalGraph:
    """One answer token's causal graph (union over heads) and its validation."""

    token: int
    nodes: list[GraphNode]
    edges: list[tuple[int, int, int]]  # (node index, node index, heads that learned the edge)
    validation: dict[str, Any] = field(default_factory=dict)

    @property
    def subset(self) -> list[int]:
        """Positions of the chosen subset, heaviest first."""
        chosen = [n for n in self.nodes if n.in_subset]
        return [n.position for n in sorted(chosen, key=lambda n: (-n.weight, n.position))]

    def layout(self) -> np.ndarray:
        """[nodes, 2] drawing positions: the target at (0, 0), nodes d edges away on the circle of
        radius d (spread evenly, in sequence order), unconnected nodes on the outermost circle."""
        xy = np.zeros((len(self.nodes), 2))
        outer = max([n.distance for n in self.nodes] + [0]) + 1
        rings: dict[int, list[int]] = {}
        for i, node in enumerate(self.nodes):
            if node.kind != "target":
                rings.setdefault(node.distance if node.distance > 0 else outer, []).append(i)
        for radius, members in rings.items():
            members.sort(key=lambda i: self.nodes[i].position)
            angles = 2 * np.pi * np.arange(len(members)) / len(members) + 0.3 * radius
            xy[members] = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        return xy

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {"token": self.token, "subset": self.subset,
                "nodes": [vars(n).copy() for n in self.nodes],
                "edges": [list(e) for e in self.edges], "validation": dict(self.validation)}


#: The validation's keys copied from the provenance (those the method wrote).
VALIDATION_KEYS = ("probability", "subset_drop", "random_drop", "random_drops", "subset_log_odds_drop",
                   "random_log_odds_drop", "random_log_odds_drops", "outcome")


def position_label(trace: Any, position: int) -> str:
    """A readable name of a sequence position: "patch r,c" (with the region's number when there are
    several), the prompt token's text, or the answer token's."""
    for number, region in enumerate(trace.regions):
        where = np.flatnonzero(np.asarray(region.positions) == position)
        if len(where):
            row, col = divmod(int(where[0]), region.grid[1])
            return f"patch {row},{col}" + (f" (image {number + 1})" if len(trace.regions) > 1 else "")
    if position >= trace.answer_start:
        text = trace.answer_tokens[position - trace.answer_start]
    else:
        strings = getattr(trace, "token_strings", None) or []
        text = strings[position] if position < len(strings) else f"#{position}"
    return text.strip() or repr(text)


def causal_graph(trace: Any, explanation: Any, token: int) -> CausalGraph:
    """The graph and validation of answer token ``token`` in a causal-subset explanation."""
    found = explanation.provenance.get("tokens", {}).get(str(token))
    if explanation.method != "causal" and found is None:
        raise InputError(f"the {explanation.method} explanation has no causal graph.",
                         "Explain the token with the causal token subset method first.")
    if found is None:
        raise InputError(f"answer token {token} was not explained by the causal subset method.",
                         "Explain that token first.")
    heads = found.get("heads", {})
    if heads and not all("edge_list" in h for h in heads.values()):
        raise InputError("this causal explanation was made before its graph was kept.",
                         "Explain the token again to see its graph.")
    query = trace.answer_position(token) - 1
    image = {int(p) for p in trace.image_positions}
    weights = dict(zip((int(p) for p in found.get("subset", [])), found.get("weights", [])))
    positions = sorted({int(p) for h in heads.values() for p in h["nodes"]} | set(weights) | {query})
    index = {p: i for i, p in enumerate(positions)}
    counts: dict[tuple[int, int], int] = {}
    for h in heads.values():
        for a, b in h["edge_list"]:
            key = (min(index[int(a)], index[int(b)]), max(index[int(a)], index[int(b)]))
            counts[key] = counts.get(key, 0) + 1
    distance = _distances(len(positions), counts, index[query])
    nodes = [GraphNode(p, position_label(trace, p), "target" if p == query else "image" if p in image else "text",
                       p in weights, float(weights.get(p, 0.0)), distance.get(index[p], -1)) for p in positions]
    validation = {k: found[k] for k in VALIDATION_KEYS if k in found}
    return CausalGraph(token, nodes, [(a, b, n) for (a, b), n in sorted(counts.items())], validation)


def _distances(count: int, edges: dict[tuple[int, int], int], source: int) -> dict[int, int]:
    """Node -> edges from ``source`` (breadth-first), for the nodes connected to it."""
    neighbours: list[list[int]] = [[] for _ in range(count)]
    for a, b in edges:
        neighbours[a].append(b)
        neighbours[b].append(a)
    distance = {source: 0}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        for other in neighbours[node]:
            if other not in distance:
                distance[other] = distance[node] + 1
                queue.append(other)
    return distance
