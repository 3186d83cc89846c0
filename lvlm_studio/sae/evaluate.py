"""How good is a sparse coder? Sparsity, reconstruction, and what the model loses when it uses it.

Per example (an image, a prompt, and an answer: the reference one, or the model's own greedy one):

* the coder's rows at its hook point give L0 (active features per token: per patch and per class
  token for vision coders, per text position for language ones), explained variance
  1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², and which features fired at all (dead vs alive). For a transcoder,
  which reads x at ``hook_name`` and predicts the output y at ``hook_name_out``, every
  reconstruction metric compares its prediction ŷ with the true y (1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖²,
  cos(y, ŷ), ‖ŷ‖ / ‖y‖), and the spliced passes replace y (``splice.splice_points``);
* the same rows give the shape of the reconstruction: cosine similarity between x and x̂ and the L2
  ratio ‖x̂‖ / ‖x‖ (below 1: shrinkage, the usual price of an L1 penalty), both averaged over rows,
  and explained variance separately for patch rows and class-token rows (a vision coder trained on
  patches is also run on the class token, which it never saw);
* feature density: the fraction of rows on which each feature fires; dead features never fire,
  dense ones fire on more than ``DENSE_THRESHOLD`` (10%) of rows; ``density_histogram`` bins
  log10 of the density;
* three teacher-forced passes give the answer's mean NLL with the model as is, with x̂ spliced in
  place of x (the substitution test), and with zeros in place of x; CE recovered is
  (NLL_zero − NLL_coder) / (NLL_zero − NLL_original): 1 when the coder loses nothing. The spliced
  pass also gives the KL divergence KL(p_original ‖ p_spliced) of the next-token distribution,
  averaged over the positions from the end of the image to the end of the answer (the positions
  whose prediction can depend on the image), then over examples.

CE recovered is *saturated* (``ce_saturated``) when it cannot rank coders, under either of two rules:

* the clean answer loss is at its floor: NLL_original < ``SATURATED_NLL`` (0.01 nats per token,
  p(answer token) > 0.99). There, any coder that keeps the answer's argmax recovers more than 0.99,
  a random one included (the demo model: 0.9993 for a random TopK SAE with explained variance −1.37);
* zero-ablation leaves no room: NLL_zero − NLL_original < ``SATURATED_ROOM`` (0.01 nats) or below
  10% of NLL_original (``SATURATED_RELATIVE``): the quotient is then a ratio of small noisy numbers.

A saturated CE recovered is printed with "(saturated)"; read the KL divergence, cosine and explained
variance instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from lvlm_studio.core.models.hooks import hook_points, hooks, run_with_cache
from lvlm_studio.core.plugin.jobs import Job, Progress
from lvlm_studio.sae.activations import vision_rows
from lvlm_studio.sae.coders import SparseAutoencoder
from lvlm_studio.sae.splice import row_index, splice_hooks, splice_points

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel

Example = tuple[Image.Image, str, "str | None"]

#: A feature firing on more than this fraction of rows is "dense".
DENSE_THRESHOLD = 0.1
#: CE recovered is saturated below this clean answer NLL (nats per token) ...
SATURATED_NLL = 0.01
#: ... or when NLL_zero − NLL_original is below this many nats ...
SATURATED_ROOM = 0.01
#: ... or below this fraction of NLL_original.
SATURATED_RELATIVE = 0.1
#: Bin edges of the density histogram, log10 of the fraction of rows a feature fires on; dead
#: features (density 0) are counted apart.
DENSITY_BINS = tuple(float(v) for v in np.arange(-7.0, 0.5, 0.5))


@dataclass
class Evaluation:
    hook_name: str  # where the coder reads
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
    kl: float = float("nan")  # KL(original ‖ spliced) of the next-token distribution, nats per position
    cosine: float = float("nan")  # mean cos(x, x̂) over rows
    l2_ratio: float = float("nan")  # mean ‖x̂‖ / ‖x‖ over rows
    explained_variance_cls: float | None = None  # on class-token rows, where the tower has them
    explained_variance_patch: float | None = None  # on patch rows (vision coders; tokens="all" split by type)
    dense: int = 0  # features firing on more than DENSE_THRESHOLD of rows
    density: list[float] = field(default_factory=list)  # per feature: fraction of rows it fires on
    hook_name_out: str = ""  # where a transcoder writes (what the reconstruction metrics compare)
    mse: float = float("nan")  # mean over rows of ‖x − x̂‖² (summed over coordinates; y and ŷ for a transcoder)

    @property
    def ce_recovered(self) -> float:
        gap = self.nll_zero - self.nll_original
        return float("nan") if abs(gap) < 1e-12 else (self.nll_zero - self.nll_coder) / gap

    @property
    def ce_saturated(self) -> bool:
        """True when CE recovered cannot rank coders (rules in the module docstring)."""
        return ce_saturated(self.nll_original, self.nll_zero)

    def density_histogram(self) -> tuple[list[int], int]:
        """(counts per ``DENSITY_BINS`` interval of log10 density, dead features)."""
        return density_histogram(np.asarray(self.density))

    def to_dict(self) -> dict[str, Any]:
        counts, dead = self.density_histogram()
        return asdict(self) | {"ce_recovered": self.ce_recovered, "ce_saturated": self.ce_saturated,
                               "dense_threshold": DENSE_THRESHOLD,
                               "density_histogram": {"log10_edges": list(DENSITY_BINS), "counts": counts,
                                                     "dead": dead}}


def ce_saturated(nll_original: float, nll_zero: float) -> bool:
    """CE recovered cannot rank coders: the clean loss is at its floor, or zero-ablation leaves no room."""
    room = nll_zero - nll_original
    return bool(nll_original < SATURATED_NLL or room < max(SATURATED_ROOM, SATURATED_RELATIVE * nll_original))


def density_histogram(density: np.ndarray) -> tuple[list[int], int]:
    """Counts of log10(density) per ``DENSITY_BINS`` interval (the lowest bin also takes anything
    rarer, the top one density 1), and the dead features apart; together they count every feature."""
    density = np.asarray(density, dtype=np.float64)
    alive = density[density > 0]
    edges = np.asarray(DENSITY_BINS)
    logs = np.clip(np.log10(alive), edges[0], edges[-1])
    counts, _ = np.histogram(logs, bins=edges)
    return [int(c) for c in counts], int((density <= 0).sum())


def random_topk_like(coder: SparseAutoencoder, k: int = 16, seed: int = 0) -> SparseAutoencoder:
    """A random TopK coder with ``coder``'s hook points, tokens and sizes: unit random decoder rows,
    no biases, the encoder tied to the decoder (an SAE) or random (a transcoder, whose input and
    output differ). The baseline every metric should tell apart from a trained coder."""
    from lvlm_studio.sae.coders import CoderConfig, build_coder

    cfg = coder.cfg
    transcoder = cfg.kind == "transcoder"
    generator = torch.Generator().manual_seed(seed)
    baseline = build_coder(CoderConfig(d_in=cfg.d_in, d_sae=cfg.d_sae, architecture="topk", k=min(k, cfg.d_sae),
                                       hook_name=cfg.hook_name, tokens=cfg.tokens, model_name=cfg.model_name,
                                       kind="transcoder" if transcoder else "sae",
                                       hook_name_out=cfg.hook_name_out if transcoder else "",
                                       d_out=cfg.d_out if transcoder else 0))
    directions = torch.nn.functional.normalize(torch.randn(cfg.d_sae, baseline.cfg.d_out, generator=generator), dim=1)
    encoder = (torch.nn.functional.normalize(torch.randn(cfg.d_sae, cfg.d_in, generator=generator), dim=1)
               if transcoder else directions)
    with torch.no_grad():
        baseline.W_dec.copy_(directions)
        baseline.W_enc.copy_(encoder.T)
    return baseline


def reconstruction_stats(x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: cos(x, x̂) and ‖x̂‖ / ‖x‖ (a zero row counts as cosine 0 and ratio 0 / ratio of its x̂)."""
    norm_x = x.norm(dim=-1)
    norm_hat = x_hat.norm(dim=-1)
    cosine = (x * x_hat).sum(-1) / (norm_x * norm_hat).clamp_min(1e-12)
    return cosine, norm_hat / norm_x.clamp_min(1e-12)


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² over the rows of ``x`` (x̄ their mean)."""
    total = float((x - x.mean(dim=0)).pow(2).sum())
    return 1.0 - float((x - x_hat).pow(2).sum()) / max(total, 1e-12)


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


def _log_probs(loaded: LoadedModel, inputs: dict[str, torch.Tensor], start: int) -> torch.Tensor:
    """Next-token log-probabilities [positions, vocab] from position ``start`` to the last but one."""
    logits = loaded.model(**inputs, use_cache=False).logits[0, start:-1].float()
    return torch.log_softmax(logits, dim=-1)


def _kl_start(loaded: LoadedModel, inputs: dict[str, torch.Tensor]) -> int:
    """The last image position (its prediction is the first to see the whole image), or 0."""
    from lvlm_studio.sae.activations import _image_token_id

    image = (inputs["input_ids"][0] == _image_token_id(loaded)).nonzero()
    return int(image[-1, 0]) if len(image) else 0


@dataclass(frozen=True)
class ExampleLosses:
    """What splicing a coder in costs on one example: the answer's mean NLL (nats per token) with the
    model as is, with x̂ in place of x, and with zeros in place of x (NaN when not asked for), and
    KL(original ‖ spliced) of the next-token distribution over the positions after the image."""

    nll_original: float
    nll_spliced: float
    nll_zero: float
    kl: float


@torch.no_grad()
def example_losses(loaded: LoadedModel, coder: SparseAutoencoder, inputs: dict[str, torch.Tensor], n_answer: int,
                   zero: bool = True) -> ExampleLosses:
    """The teacher-forced passes over one example's ``inputs`` (from ``_inputs``): clean, spliced
    (``reconstruct``) and, with ``zero``, zero-ablated (a transcoder's output replaced at
    ``hook_name_out``: ``splice.splice_hooks``)."""
    original = _nll(loaded, inputs, n_answer)
    start = _kl_start(loaded, inputs)
    clean = _log_probs(loaded, inputs, start)
    with hooks(loaded, splice_hooks(loaded, coder, inputs, "reconstruct")):
        spliced_nll = _nll(loaded, inputs, n_answer)
        spliced = _log_probs(loaded, inputs, start)
    kl = float((clean.exp() * (clean - spliced)).sum(-1).mean())
    zeroed = float("nan")
    if zero:
        with hooks(loaded, splice_hooks(loaded, coder, inputs, "zero")):
            zeroed = _nll(loaded, inputs, n_answer)
    return ExampleLosses(original, spliced_nll, zeroed, kl)


@torch.no_grad()
def splice_losses(loaded: LoadedModel, coder: SparseAutoencoder, examples: Iterable[Example], total: int
                  ) -> Job[list[ExampleLosses]]:
    """``example_losses`` (without the zero-ablated pass) on every example, one progress report each:
    the per-example numbers that intervals over a dataset are drawn from."""
    out = []
    for image, prompt, answer in examples:
        inputs, n_answer = _inputs(loaded, image.convert("RGB"), prompt, answer)
        out.append(example_losses(loaded, coder, inputs, n_answer, zero=False))
        yield Progress(len(out), total, f"KL {out[-1].kl:.4f}")
    return out


def splice_summary(losses: Sequence[ExampleLosses | dict[str, float]], level: float = 0.95, seed: int = 0
                   ) -> dict[str, Any]:
    """Means over examples with percentile bootstrap intervals (``core.metrics.intervals``): the answer
    NLL as is and with the coder spliced in, their paired difference (spliced − original, resampled
    per example, so the interval is that of the change) and the KL divergence. ``losses`` are
    ``ExampleLosses`` or dicts with their fields (a study's saved rows)."""
    from lvlm_studio.core.metrics.intervals import bootstrap_interval

    def column(name: str) -> np.ndarray:
        return np.asarray([x[name] if isinstance(x, dict) else getattr(x, name) for x in losses], dtype=np.float64)

    original, spliced = column("nll_original"), column("nll_spliced")
    columns = {"nll_original": original, "nll_spliced": spliced, "nll_change": spliced - original, "kl": column("kl")}
    out = {}
    for name, values in columns.items():
        finite = values[np.isfinite(values)]
        low, high = bootstrap_interval(finite, level=level, seed=seed)
        out[name] = {"mean": float(finite.mean()) if len(finite) else float("nan"), "ci_low": low, "ci_high": high,
                     "n": int(len(finite))}
    return out


@torch.no_grad()
def evaluate_coder(loaded: LoadedModel, coder: SparseAutoencoder, examples: Iterable[Example], total: int
                   ) -> Job[Evaluation]:
    """Evaluate ``coder`` on ``examples`` (a job: one progress report per example, three passes each);
    a transcoder whose output hook point is not one of the model's is refused (``splice_points``)."""
    cfg = coder.cfg
    source, target = splice_points(loaded, coder)
    point = hook_points(loaded)[source]
    fired = torch.zeros(cfg.d_sae, dtype=torch.float64)  # rows each feature fired on
    l0_sum = l0_cls_sum = 0.0
    rows = cls_rows = 0
    error = 0.0
    xs_sum = None
    nll = np.zeros(3)
    kl = cosine = l2_ratio = 0.0
    count = 0
    seen: list[torch.Tensor] = []  # the target rows, for the variance around their mean at the end
    seen_cls: list[tuple[torch.Tensor, torch.Tensor]] = []  # class-token target rows and their reconstruction
    seen_patch: list[tuple[torch.Tensor, torch.Tensor]] = []  # patch rows, when tokens="all" mixes both
    for image, prompt, answer in examples:
        inputs, n_answer = _inputs(loaded, image.convert("RGB"), prompt, answer)
        _, cache = run_with_cache(loaded, inputs, list(dict.fromkeys([source, target])))
        activation, output = cache[source], cache[target]
        x, y = (a.reshape(-1, a.shape[-1]).index_select(0, row_index(loaded, coder, inputs, a).to(a.device)).float()
                for a in (activation, output))
        f = coder.encode(x)
        l0_sum += float((f > 0).sum())
        rows += len(x)
        fired += (f > 0).sum(dim=0).cpu().double()
        y_hat = coder.decode(f, x)  # the reconstruction of x (SAE: y = x) or the prediction of y (transcoder)
        error += float((y_hat - y).pow(2).sum())
        row_cosine, row_ratio = reconstruction_stats(y, y_hat)
        cosine += float(row_cosine.sum())
        l2_ratio += float(row_ratio.sum())
        seen.append(y)
        xs_sum = y.sum(dim=0) if xs_sum is None else xs_sum + y.sum(dim=0)
        if point.part == "vision" and cfg.tokens == "patch":
            cls_x, cls_y = _cls_rows(loaded, inputs, activation), _cls_rows(loaded, inputs, output)
            if cls_x is not None and cls_y is not None:
                cls_f = coder.encode(cls_x.float())
                l0_cls_sum += float((cls_f > 0).sum())
                cls_rows += len(cls_x)
                seen_cls.append((cls_y.float(), coder.decode(cls_f, cls_x.float())))
        if point.part == "vision" and cfg.tokens == "all":
            is_cls = _cls_mask(loaded, inputs, activation)
            if is_cls is not None:
                is_cls = is_cls.to(x.device)
                l0_cls_sum += float((f[is_cls] > 0).sum())
                cls_rows += int(is_cls.sum())
                seen_cls.append((y[is_cls], y_hat[is_cls]))
                seen_patch.append((y[~is_cls], y_hat[~is_cls]))
        losses = example_losses(loaded, coder, inputs, n_answer)
        nll += (losses.nll_original, losses.nll_spliced, losses.nll_zero)
        kl += losses.kl
        count += 1
        yield Progress(count, total, f"L0 {l0_sum / max(rows, 1):.1f}")
    mean = xs_sum / rows
    total_var = sum(float((x - mean).pow(2).sum()) for x in seen)
    nll /= max(count, 1)
    l0_cls = (l0_cls_sum / cls_rows) if cls_rows else None
    if point.part == "vision" and cfg.tokens == "cls":
        l0_cls = l0_sum / max(rows, 1)
    ev_all = 1.0 - error / max(total_var, 1e-12)
    ev_cls = ev_patch = None
    if seen_cls:
        ev_cls = explained_variance(torch.cat([c for c, _ in seen_cls]), torch.cat([h for _, h in seen_cls]))
    elif point.part == "vision" and cfg.tokens == "cls":
        ev_cls = ev_all
    if seen_patch:
        ev_patch = explained_variance(torch.cat([c for c, _ in seen_patch]), torch.cat([h for _, h in seen_patch]))
    elif point.part == "vision" and cfg.tokens == "patch":
        ev_patch = ev_all
    density = (fired / max(rows, 1)).tolist()
    return Evaluation(cfg.hook_name, cfg.tokens, count, rows, l0_sum / max(rows, 1), l0_cls,
                      ev_all, int((fired > 0).sum()), int((fired == 0).sum()),
                      cfg.d_sae, float(nll[0]), float(nll[1]), float(nll[2]),
                      kl=kl / max(count, 1), cosine=cosine / max(rows, 1), l2_ratio=l2_ratio / max(rows, 1),
                      explained_variance_cls=ev_cls, explained_variance_patch=ev_patch,
                      dense=int((fired / max(rows, 1) > DENSE_THRESHOLD).sum()),
                      density=density, hook_name_out=target if target != source else "", mse=error / max(rows, 1))


def _cls_mask(loaded: LoadedModel, inputs: dict[str, torch.Tensor], activation: torch.Tensor
              ) -> torch.Tensor | None:
    """For tokens="all" rows (per image: its class token, then its patches), which are class tokens;
    None when the tower has no class token."""
    grids = loaded.adapter.vision_patch_grids(inputs)
    if not (activation.dim() == 3 and activation.shape[1] == grids[0].size + 1):
        return None
    return torch.cat([torch.arange(g.size + 1) == 0 for g in grids])


def _cls_rows(loaded: LoadedModel, inputs: dict[str, torch.Tensor], activation: torch.Tensor) -> torch.Tensor | None:
    grids = loaded.adapter.vision_patch_grids(inputs)
    if not (activation.dim() == 3 and activation.shape[1] == grids[0].size + 1):
        return None
    return vision_rows(activation, grids, "cls")


def format_evaluations(evaluations: Sequence[tuple[str, Evaluation]]) -> str:
    """A Markdown table, one column per coder (e.g. vision beside language), then each coder's
    feature density in one line of text."""
    def show(value: float | None, digits: int = 3) -> str:
        return "-" if value is None or value != value else f"{value:.{digits}f}"

    def ce(e: Evaluation) -> str:
        return show(e.ce_recovered) + (" (saturated)" if e.ce_saturated else "")

    header = "| metric | " + " | ".join(name for name, _ in evaluations) + " |"
    lines = [header, "|---|" + "---:|" * len(evaluations)]
    table = [
        ("hook point", [e.hook_name + (f" → {e.hook_name_out}" if e.hook_name_out else "") for _, e in evaluations]),
        ("tokens", [f"{e.tokens} ({e.rows} rows, {e.examples} examples)" for _, e in evaluations]),
        ("features (d_sae)", [str(e.d_sae) for _, e in evaluations]),
        ("L0 per token", [show(e.l0, 1) for _, e in evaluations]),
        ("L0 per CLS token", [show(e.l0_cls, 1) for _, e in evaluations]),
        ("L0 / d_sae", [show(e.l0 / e.d_sae) for _, e in evaluations]),
        ("explained variance", [show(e.explained_variance) for _, e in evaluations]),
        ("explained variance, patch tokens", [show(e.explained_variance_patch) for _, e in evaluations]),
        ("explained variance, CLS token", [show(e.explained_variance_cls) for _, e in evaluations]),
        ("MSE ‖x − x̂‖² per token", [show(e.mse, 4) for _, e in evaluations]),
        ("cosine(x, x̂)", [show(e.cosine) for _, e in evaluations]),
        ("L2 ratio ‖x̂‖/‖x‖", [show(e.l2_ratio) for _, e in evaluations]),
        ("alive / dead features", [f"{e.alive} / {e.dead}" for _, e in evaluations]),
        (f"dense features (> {DENSE_THRESHOLD:.0%} of tokens)", [str(e.dense) for _, e in evaluations]),
        ("KL(original ‖ spliced), nats", [show(e.kl, 4) for _, e in evaluations]),
        ("answer NLL, original", [show(e.nll_original, 4) for _, e in evaluations]),
        ("answer NLL, coder spliced in", [show(e.nll_coder, 4) for _, e in evaluations]),
        ("answer NLL, zero-ablated", [show(e.nll_zero, 4) for _, e in evaluations]),
        ("CE recovered", [ce(e) for _, e in evaluations]),
    ]
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in table]
    text = "\n".join(lines) + "\n"
    if any(e.ce_saturated for _, e in evaluations):
        text += (f"\n(saturated: the clean answer NLL is below {SATURATED_NLL} nats, or zero-ablation adds less "
                 f"than max({SATURATED_ROOM}, {SATURATED_RELATIVE:g} x clean NLL); CE recovered cannot rank "
                 "coders then: read KL, cosine and explained variance.)\n")
    for name, e in evaluations:
        text += "\n" + format_density(name, e)
    return text


def format_density(name: str, evaluation: Evaluation) -> str:
    """One line per coder: the log10-density histogram as ``[lo,hi):count`` for non-empty bins."""
    counts, dead = evaluation.density_histogram()
    parts = [f"[{lo:g},{hi:g}):{c}" for lo, hi, c in zip(DENSITY_BINS, DENSITY_BINS[1:], counts) if c]
    return (f"{name} feature density (log10 fraction of tokens fired on): {' '.join(parts) or '-'}; "
            f"dead {dead}; dense (> {DENSE_THRESHOLD:g}) {evaluation.dense}\n")


def plot_density(evaluations: Sequence[tuple[str, Evaluation]], path: Any) -> None:
    """A PNG of each coder's log10 feature-density histogram (dead features left out, counted in the
    legend), written atomically to ``path``."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lvlm_studio.core.io.files import write_bytes

    figure, axis = plt.subplots(figsize=(6, 3.5))
    for name, e in evaluations:
        density = np.asarray(e.density)
        alive = density[density > 0]
        axis.hist(np.clip(np.log10(alive), DENSITY_BINS[0], DENSITY_BINS[-1]) if len(alive) else [],
                  bins=list(DENSITY_BINS), alpha=0.5, label=f"{name} (dead {int((density <= 0).sum())})")
    axis.axvline(np.log10(DENSE_THRESHOLD), color="grey", linestyle="--", linewidth=1)
    axis.set_xlabel("log10 fraction of tokens a feature fires on")
    axis.set_ylabel("features")
    axis.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    write_bytes(path, buffer.getvalue())
