"""Sparse coders: a dictionary of feature directions that reconstructs activations sparsely.

All three kinds share one encoder and one decoder::

    p   = (x − b_dec·[apply_b_dec_to_input]) W_enc
    pre = p + b_enc
    f   = act(pre)        act: see the architectures below
    x̂   = f W_dec + b_dec  (+ x W_skip for a transcoder with a skip connection)

The architectures (``CoderConfig.architecture``; SAELens's names and arithmetic):

* ``standard``: f = ReLU(pre).
* ``topk``: the k largest pre-activations of each token, then ReLU; the rest are 0.
* ``jumprelu``: f = ReLU(pre)·[pre > θ] with a learned threshold θᵢ per feature.
* ``gated`` (Rajamanoharan et al. 2024): no b_enc; a gate decides which features fire and a
  magnitude path, sharing W_enc up to a per-feature scale exp(r_mag), how strongly:
  f = [p + b_gate > 0] · ReLU(p ⊙ exp(r_mag) + b_mag).
* ``batchtopk`` (Bussmann et al. 2024): in training, the k·n largest ReLU(pre) of a batch of n
  tokens survive (k per token on average), and a single threshold θ follows the smallest survivor
  (an exponential moving average, rate ``topk_threshold_lr``). Outside training it is what SAELens
  turns it into when it saves one: a JumpReLU with θ for every feature, so a token's features no
  longer depend on the rest of its batch.
* ``matryoshka_batchtopk``: BatchTopK whose first ``matryoshka_widths`` features must also
  reconstruct on their own (the nested losses of ``loss``); the same JumpReLU outside training.

* ``SparseAutoencoder`` reconstructs its own input (one hook point).
* ``Transcoder`` reads one hook point and predicts another (an MLP's input to its output, say),
  so its features explain a computation rather than a representation.
* ``Crosscoder`` reads the same tokens at several sources (two layers, or two models) with one
  shared feature set: each source has its own encoder and decoder slice, the features are shared,
  so a feature's decoder norms per source say where it lives.

Training losses (``loss``): squared error summed over the feature axis, averaged over tokens, plus
a sparsity term: for ReLU, λ Σᵢ fᵢ ‖W_dec,ᵢ‖ (the L1 penalty made blind to decoder scale); for
JumpReLU, λ · L0 with straight-through gradients for the thresholds (Rajamanoharan et al. 2024);
none for TopK, whose sparsity is fixed by k.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lvlm_studio.core.errors import InputError

ARCHITECTURES = ("standard", "topk", "jumprelu", "gated", "batchtopk", "matryoshka_batchtopk")
#: SAELens's run-time normalisations that need no stored factor: each token is normalised before
#: encoding and the reconstruction mapped back with the same token's statistics (``normalise_in``)
NORMALISATIONS = ("none", "constant_norm_rescale", "layer_norm")
#: the architectures that keep a whole batch's k·n strongest activations in training
BATCH_TOPK = ("batchtopk", "matryoshka_batchtopk")
KINDS = ("sae", "transcoder", "crosscoder")


@dataclass
class CoderConfig:
    """Everything needed to rebuild a coder; saved as ``cfg.json`` (SAELens field names where they exist).

    ``hook_name`` is where the coder reads; ``hook_name_out`` where a transcoder writes;
    ``hook_names`` the sources of a crosscoder. ``tokens`` says which tokens it was trained on
    ("patch", "cls", "all" for vision hook points; "text" for language ones). ``k`` is TopK's
    features per token and BatchTopK's average per token; ``matryoshka_widths`` the nested prefix
    sizes of a Matryoshka coder (strictly increasing, the last one ``d_sae``).
    """

    d_in: int
    d_sae: int
    architecture: str = "standard"
    kind: str = "sae"
    k: int = 0
    hook_name: str = ""
    hook_name_out: str = ""
    hook_names: tuple[str, ...] = ()
    d_out: int = 0
    n_sources: int = 1
    skip: bool = False
    apply_b_dec_to_input: bool = True
    jumprelu_bandwidth: float = 0.05
    topk_threshold_lr: float = 0.01
    matryoshka_widths: tuple[int, ...] = ()
    normalize_activations: str = "none"
    tokens: str = "patch"
    model_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"unknown sparse-coder architecture {self.architecture!r}.",
                             f"Choose one of: {', '.join(ARCHITECTURES)}.")
        if self.kind not in KINDS:
            raise InputError(f"unknown sparse-coder kind {self.kind!r}.", f"Choose one of: {', '.join(KINDS)}.")
        if self.d_in < 1 or self.d_sae < 1:
            raise InputError(f"d_in={self.d_in} and d_sae={self.d_sae} must be positive.", "Check the config.")
        if self.architecture in ("topk", *BATCH_TOPK) and not 0 < self.k <= self.d_sae:
            raise InputError(f"{self.architecture} needs 0 < k <= d_sae, got k={self.k}.", "Set k, e.g. 16.")
        if self.architecture == "matryoshka_batchtopk":
            widths = self.matryoshka_widths
            if not widths or widths[-1] != self.d_sae or any(a >= b for a, b in zip(widths, widths[1:])) \
                    or widths[0] < 1:
                raise InputError(f"matryoshka_widths {list(widths)} must increase strictly from 1 or more and end "
                                 f"at d_sae={self.d_sae}.", f"For example [{max(1, self.d_sae // 4)}, {self.d_sae}].")
        if self.normalize_activations not in NORMALISATIONS:
            raise InputError(f"unknown run-time normalisation {self.normalize_activations!r}.",
                             f"Choose one of: {', '.join(NORMALISATIONS)}.")
        if self.normalize_activations != "none" and self.kind != "sae":
            raise InputError(f"a run-time normalisation ({self.normalize_activations}) is for sparse autoencoders "
                             f"only, not a {self.kind}.", "Use normalize_activations='none'.")
        if self.kind == "transcoder":
            self.apply_b_dec_to_input = False  # input and output spaces differ
        if not self.d_out:
            self.d_out = self.d_in

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hook_names"] = list(self.hook_names)
        data["matryoshka_widths"] = list(self.matryoshka_widths)
        return data


class SparseAutoencoder(nn.Module):
    """Reconstructs activations ``x`` [..., d_in] through ``d_sae`` sparse features."""

    def __init__(self, cfg: CoderConfig):
        super().__init__()
        self.cfg = cfg
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_out
        self.W_enc = nn.Parameter(torch.zeros(*self._source_shape(), d_in, d_sae))
        if cfg.architecture == "gated":
            self.b_gate = nn.Parameter(torch.zeros(d_sae))
            self.b_mag = nn.Parameter(torch.zeros(d_sae))
            self.r_mag = nn.Parameter(torch.zeros(d_sae))
        else:
            self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, *self._source_shape(), d_out))
        self.b_dec = nn.Parameter(torch.zeros(*self._source_shape(), d_out))
        if cfg.architecture == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((d_sae,), -2.0))
        if cfg.architecture in BATCH_TOPK:  # float64, as SAELens keeps it: the moving average creeps by tiny steps
            self.register_buffer("topk_threshold", torch.zeros((), dtype=torch.float64))

    def _source_shape(self) -> tuple[int, ...]:
        return ()

    # -- the coder ----------------------------------------------------------------------------
    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def normalise_in(self, x: torch.Tensor) -> torch.Tensor:
        """The run-time normalisation of each token before encoding (SAELens's, for a coder that has one):

        * ``constant_norm_rescale``: x · √d_in / ‖x‖, every token scaled to norm √d_in;
        * ``layer_norm``: (x − μ) / (σ + 10⁻⁵), μ and σ the token's mean and standard deviation
          (σ with Bessel's correction, as ``Tensor.std``).
        """
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            return x * (self.cfg.d_in ** 0.5 / x.norm(dim=-1, keepdim=True))
        if mode == "layer_norm":
            centred = x - x.mean(dim=-1, keepdim=True)
            return centred / (centred.std(dim=-1, keepdim=True) + 1e-5)
        return x

    def normalise_out(self, out: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """A reconstruction mapped back to the input's scale with the input token's statistics:
        out · ‖x‖ / √d_in, or out · σ + μ (SAELens adds no 10⁻⁵ on the way back)."""
        mode = self.cfg.normalize_activations
        if mode == "none":
            return out
        if x is None:
            raise ValueError(f"a coder with normalize_activations={mode!r} needs its input to decode")
        if mode == "constant_norm_rescale":
            return out / (self.cfg.d_in ** 0.5 / x.norm(dim=-1, keepdim=True))
        return out * (x - x.mean(dim=-1, keepdim=True)).std(dim=-1, keepdim=True) + x.mean(dim=-1, keepdim=True)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """p = (x − b_dec) W_enc (b_dec only with ``apply_b_dec_to_input``; x normalised first if the
        coder has a run-time normalisation): the encoder without its bias."""
        x = self.normalise_in(x)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """What the activation reads: p + b_enc, or for a gated coder its magnitude path
        p ⊙ exp(r_mag) + b_mag (SAELens's ``hidden_pre``)."""
        p = self.project(x)
        if self.cfg.architecture == "gated":
            return p * self.r_mag.exp() + self.b_mag
        return p + self.b_enc

    def gate_pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """A gated coder's gate, p + b_gate: feature i fires where it is positive."""
        return self.project(x) + self.b_gate

    def activate(self, pre: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """The sparse code from pre-activations (differentiable the way training needs); a gated
        coder also needs its gate pre-activation."""
        architecture = self.cfg.architecture
        if architecture == "standard":
            return torch.relu(pre)
        if architecture == "topk":
            top = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        if architecture == "gated":
            if gate is None:
                raise ValueError("a gated coder needs its gate pre-activation to activate")
            return (gate > 0).to(pre.dtype) * torch.relu(pre)
        if architecture in BATCH_TOPK:
            if self.training:
                return _batch_topk(pre, self.cfg.k)
            return torch.relu(pre) * (pre > self.topk_threshold.to(pre.dtype)).to(pre.dtype)
        return _JumpReLU.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations f [..., d_sae]."""
        gate = self.gate_pre_activation(x) if self.cfg.architecture == "gated" else None
        return self.activate(self.pre_activation(x), gate)

    def decode(self, f: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction x̂ [..., d_out] (``x`` only matters to transcoders with a skip, and to
        coders with a run-time normalisation, whose output is mapped back with x's statistics)."""
        return self.normalise_out(f @ self.W_dec + self.b_dec, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x)

    def feature_direction(self, feature: int) -> torch.Tensor:
        """What feature ``feature`` adds to the output per unit of activation (its decoder row; for a
        coder with a run-time normalisation, in the normalised space)."""
        return self.W_dec[feature]

    # -- training ------------------------------------------------------------------------------
    def decoder_norms(self) -> torch.Tensor:
        """‖W_dec,ᵢ‖ per feature (over every source for a crosscoder)."""
        return self.W_dec.flatten(1).norm(dim=1)

    def loss(self, x: torch.Tensor, target: torch.Tensor, coefficient: float,
             nested: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
        """Reconstruction and sparsity losses on a batch of tokens (``target`` is ``x`` for an SAE).

        ``nested`` makes it a Matryoshka coder (Bussmann et al. 2025; Nabeshima 2024): the first m
        features must also reconstruct the input on their own, for each m in ``nested``, and the
        reconstruction loss is the mean over those prefixes and the whole dictionary. The first
        features then hold general concepts (a colour on every patch it covers) instead of the
        many narrow ones a plain coder splits them into ("red top edge", "red interior", ...).
        A ``matryoshka_batchtopk`` coder uses its ``matryoshka_widths`` when ``nested`` is empty.
        In training mode, a BatchTopK coder's threshold moves with each call (``update_threshold``).
        """
        architecture = self.cfg.architecture
        gate = self.gate_pre_activation(x) if architecture == "gated" else None
        pre = self.pre_activation(x)
        f = self.activate(pre, gate)
        if architecture == "matryoshka_batchtopk" and not nested:
            nested = self.cfg.matryoshka_widths
        prefixes = [m for m in nested if 0 < m < f.shape[-1]]
        errors = [self._squared_error(f, x, target, m) for m in [*prefixes, f.shape[-1]]]
        mse = errors[-1]  # the whole dictionary's: what explained variance is computed from
        if architecture == "standard":
            sparsity = (f * self.decoder_norms()).sum(dim=-1).mean()
        elif architecture == "jumprelu":
            sparsity = _Step.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth).sum(dim=-1).mean()
        elif architecture == "gated":
            # SAELens's two gated terms: the gate's L1 (blind to decoder scale), and the gate alone
            # reconstructing the target through the decoder, so the gate learns magnitudes too
            gate_acts = torch.relu(gate)
            sparsity = (gate_acts * self.decoder_norms()).sum(dim=-1).mean()
            auxiliary = (self.decode(gate_acts, x) - target).pow(2).flatten(1).sum(dim=1).mean()
        else:
            sparsity = torch.zeros((), device=x.device)
        if architecture in BATCH_TOPK and self.training:
            self.update_threshold(f)
        loss = torch.stack(errors).mean() + coefficient * sparsity
        if architecture == "gated":
            loss = loss + auxiliary
        return {"mse": mse, "sparsity": sparsity, "loss": loss, "features": f}

    @torch.no_grad()
    def update_threshold(self, f: torch.Tensor) -> None:
        """BatchTopK's threshold follows the smallest activation that survived the batch:
        θ ← (1 − r)·θ + r·min(f > 0), r = ``topk_threshold_lr`` (SAELens's rule)."""
        positive = f[f > 0]
        if positive.numel():
            rate = self.cfg.topk_threshold_lr
            self.topk_threshold.copy_((1 - rate) * self.topk_threshold + rate * positive.min().double())

    def _squared_error(self, f: torch.Tensor, x: torch.Tensor, target: torch.Tensor, used: int) -> torch.Tensor:
        """Mean over tokens of ‖x̂ − target‖² when only the first ``used`` features are kept."""
        if used < f.shape[-1]:
            f = torch.cat([f[..., :used], torch.zeros_like(f[..., used:])], dim=-1)
        return (self.decode(f, x) - target).pow(2).flatten(1).sum(dim=1).mean()

    @torch.no_grad()
    def initialise(self, sample: torch.Tensor, target: torch.Tensor | None = None, seed: int = 0) -> None:
        """Random unit decoder rows, the encoder tied to them, b_dec at the data mean."""
        generator = torch.Generator().manual_seed(seed)
        shape = self.W_dec.shape
        directions = torch.randn(shape, generator=generator).to(self.W_dec)
        directions /= directions.flatten(1).norm(dim=1).view(-1, *[1] * (len(shape) - 1))
        self.W_dec.copy_(directions)
        self.W_enc.copy_(self._tied_encoder(directions))
        for name in ("b_enc", "b_gate", "b_mag", "r_mag"):
            if hasattr(self, name):
                getattr(self, name).zero_()
        self.b_dec.copy_((sample if target is None else target).mean(dim=0))
        if self.cfg.kind == "transcoder" and self.cfg.skip:
            self.W_skip.zero_()

    def _tied_encoder(self, directions: torch.Tensor) -> torch.Tensor:
        return directions.T.clone() if self.cfg.kind == "sae" else 0.1 * torch.randn_like(self.W_enc)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Unit-norm decoder rows (not for JumpReLU, whose penalty does not scale with them)."""
        norms = self.decoder_norms().clamp(min=1e-8)
        self.W_dec.div_(norms.view(-1, *[1] * (self.W_dec.dim() - 1)))


class Transcoder(SparseAutoencoder):
    """Reads ``hook_name`` and predicts ``hook_name_out``; with ``skip``, a linear path x W_skip too."""

    def __init__(self, cfg: CoderConfig):
        super().__init__(cfg)
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_out))

    def decode(self, f: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        out = f @ self.W_dec + self.b_dec
        if self.cfg.skip:
            if x is None:
                raise ValueError("a transcoder with a skip connection needs its input to decode")
            out = out + x @ self.W_skip
        return out


class Crosscoder(SparseAutoencoder):
    """Shared features over ``n_sources`` sources: x [..., n_sources, d_in] → f [..., d_sae]."""

    def _source_shape(self) -> tuple[int, ...]:
        return (self.cfg.n_sources,)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return torch.einsum("...sd,sdf->...f", x, self.W_enc)

    def decode(self, f: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return torch.einsum("...f,fsd->...sd", f, self.W_dec) + self.b_dec

    def _tied_encoder(self, directions: torch.Tensor) -> torch.Tensor:
        return directions.permute(1, 2, 0).clone()  # [d_sae, s, d] -> [s, d, d_sae]

    def decoder_norms(self) -> torch.Tensor:
        """Σₛ ‖W_dec[i, s]‖: the crosscoder penalty, so a feature pays for each source it writes to."""
        return self.source_norms().sum(dim=-1)

    def source_norms(self) -> torch.Tensor:
        """‖W_dec[i, s]‖ [d_sae, n_sources]: where each shared feature writes."""
        return self.W_dec.norm(dim=-1)


def build_coder(cfg: CoderConfig) -> SparseAutoencoder:
    """The coder class that ``cfg.kind`` names, with zero weights (load or ``initialise`` them)."""
    return {"sae": SparseAutoencoder, "transcoder": Transcoder, "crosscoder": Crosscoder}[cfg.kind](cfg)


def _batch_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """The k·n largest of ReLU(pre) over all n tokens of the batch kept, the rest 0 (BatchTopK)."""
    acts = torch.relu(pre)
    flat = acts.flatten()
    top = flat.topk(min(k * pre.shape[:-1].numel(), flat.numel()))
    return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(acts.shape)


# -- JumpReLU with straight-through gradients for the threshold --------------------------------------
def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """z·H(z − θ). d/dz is H(z − θ); d/dθ is −(θ/ε)·K((z − θ)/ε) with a rectangle kernel K:
    the pseudo-derivative that lets thresholds learn although the step has zero gradient."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > threshold).to(pre.dtype)
        grad_threshold = -(threshold / eps) * _rectangle((pre - threshold) / eps) * grad
        return grad_pre, grad_threshold.reshape(-1, threshold.shape[-1]).sum(dim=0), None


class _Step(torch.autograd.Function):
    """H(z − θ) (the L0 count). No gradient to z; d/dθ is −(1/ε)·K((z − θ)/ε)."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = -(1.0 / eps) * _rectangle((pre - threshold) / eps) * grad
        return torch.zeros_like(pre), grad_threshold.reshape(-1, threshold.shape[-1]).sum(dim=0), None
