"""Sparse coders: a dictionary of feature directions that reconstructs activations sparsely.

All three kinds share one encoder and one decoder::

    pre = (x − b_dec·[apply_b_dec_to_input]) W_enc + b_enc
    f   = act(pre)        act ∈ {ReLU, TopK(k) then ReLU, JumpReLU(θ)}
    x̂   = f W_dec + b_dec  (+ x W_skip for a transcoder with a skip connection)

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

ARCHITECTURES = ("standard", "topk", "jumprelu")
KINDS = ("sae", "transcoder", "crosscoder")


@dataclass
class CoderConfig:
    """Everything needed to rebuild a coder; saved as ``cfg.json`` (SAELens field names where they exist).

    ``hook_name`` is where the coder reads; ``hook_name_out`` where a transcoder writes;
    ``hook_names`` the sources of a crosscoder. ``tokens`` says which tokens it was trained on
    ("patch", "cls", "all" for vision hook points; "text" for language ones).
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
        if self.architecture == "topk" and not 0 < self.k <= self.d_sae:
            raise InputError(f"TopK needs 0 < k <= d_sae, got k={self.k}.", "Set k, e.g. 16.")
        if self.kind == "transcoder":
            self.apply_b_dec_to_input = False  # input and output spaces differ
        if not self.d_out:
            self.d_out = self.d_in

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hook_names"] = list(self.hook_names)
        return data


class SparseAutoencoder(nn.Module):
    """Reconstructs activations ``x`` [..., d_in] through ``d_sae`` sparse features."""

    def __init__(self, cfg: CoderConfig):
        super().__init__()
        self.cfg = cfg
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_out
        self.W_enc = nn.Parameter(torch.zeros(*self._source_shape(), d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, *self._source_shape(), d_out))
        self.b_dec = nn.Parameter(torch.zeros(*self._source_shape(), d_out))
        if cfg.architecture == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((d_sae,), -2.0))

    def _source_shape(self) -> tuple[int, ...]:
        return ()

    # -- the coder ----------------------------------------------------------------------------
    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """The sparse code from pre-activations (differentiable the way training needs)."""
        architecture = self.cfg.architecture
        if architecture == "standard":
            return torch.relu(pre)
        if architecture == "topk":
            top = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        return _JumpReLU.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations f [..., d_sae]."""
        return self.activate(self.pre_activation(x))

    def decode(self, f: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction x̂ [..., d_out] (``x`` only matters to transcoders with a skip)."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x)

    def feature_direction(self, feature: int) -> torch.Tensor:
        """What feature ``feature`` adds to the output per unit of activation (its decoder row)."""
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
        """
        pre = self.pre_activation(x)
        f = self.activate(pre)
        prefixes = [m for m in nested if 0 < m < f.shape[-1]]
        errors = [self._squared_error(f, x, target, m) for m in [*prefixes, f.shape[-1]]]
        mse = errors[-1]  # the whole dictionary's: what explained variance is computed from
        architecture = self.cfg.architecture
        if architecture == "standard":
            sparsity = (f * self.decoder_norms()).sum(dim=-1).mean()
        elif architecture == "jumprelu":
            sparsity = _Step.apply(pre, self.threshold, self.cfg.jumprelu_bandwidth).sum(dim=-1).mean()
        else:
            sparsity = torch.zeros((), device=x.device)
        reconstruction = torch.stack(errors).mean()
        return {"mse": mse, "sparsity": sparsity, "loss": reconstruction + coefficient * sparsity, "features": f}

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
        self.b_enc.zero_()
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

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return torch.einsum("...sd,sdf->...f", x, self.W_enc) + self.b_enc

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
