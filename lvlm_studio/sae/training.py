"""Train a sparse coder on activations streamed from a model: a cancellable job that checkpoints.

The stream runs the model on a few images at a time (stopping each pass at the hook point), pours
the rows into a shuffle buffer of several passes, and trains on minibatches drawn from it, so
memory stays at one buffer whatever the data set size. Activations are scaled so that their mean
norm is √d (one learning rate and one sparsity coefficient then suit every layer and model); the
scale is folded back into the weights at the end, so the saved coder reads raw activations.

Dead features (none of the last ``dead_after_tokens`` tokens fired them) are resampled every
``resample_every`` steps: each gets the direction of a token the coder reconstructs badly (drawn
with probability ∝ its squared error), a small encoder row, and fresh optimiser moments.

With a checkpoint folder, training saves its whole state there every ``checkpoint_every`` steps
and when cancelled (safetensors + JSON), and ``resume=True`` continues from it: same weights,
optimiser moments and dead-feature counters, the stream picking up at the first image not yet read.

Every architecture of ``coders.py`` trains with its own loss (standard ReLU + L1, TopK, JumpReLU,
gated, BatchTopK, Matryoshka-BatchTopK), with optional learning-rate warm-up and decay,
sparsity-coefficient warm-up, gradient-norm clipping, ``b_dec`` started at the geometric median,
and the auxiliary-k loss that revives dead TopK/BatchTopK features (``objectives.py``). The coder
training returns keeps the unit-norm decoder rows it trained with (``_Trainer.folded``); saving
makes a JumpReLU coder's rows unit-norm too, its norms folded into the encoder side.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.files import atomic_path, write_text
from lvlm_studio.core.plugin.jobs import Job, Progress
from lvlm_studio.sae.activations import (
    DEFAULT_PROMPT,
    TRAINING_SEED_BASE,
    check_hook,
    demo_text_examples,
    folder_images,
    image_batch_rows,
    open_images,
    text_rows,
)
from lvlm_studio.sae.coders import ARCHITECTURES, BATCH_TOPK, CoderConfig, SparseAutoencoder, build_coder
from lvlm_studio.sae.objectives import aux_k_loss, coefficient_at, geometric_median, lr_at

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel

CHECKPOINT_STATE = "trainer.json"
CHECKPOINT_TENSORS = "trainer.safetensors"


@dataclass
class TrainSettings:
    """What to train and how. ``data`` is "demo" (generated scenes from ``start_seed`` upward) or
    a folder of images; ``count`` how many images (demo: scenes; language coders: examples).

    ``architecture`` is one of ``coders.ARCHITECTURES``; ``k`` the features per token of TopK, or
    per token on average of BatchTopK; ``nested`` the Matryoshka prefix sizes (any architecture).
    Schedules count steps from 0: ``lr_warmup_steps`` and ``lr_decay_steps`` (``objectives.lr_at``),
    ``l1_warmup_steps`` (``objectives.coefficient_at``).
    ``clip_grad_norm`` > 0 clips the gradient's global norm. ``b_dec_init`` is "mean" or
    "geometric_median". ``aux_k_coefficient`` weighs the auxiliary-k loss of TopK and BatchTopK
    (``k_aux`` dead features per token; 0: half the input width).
    """

    hook_name: str
    architecture: str = "standard"
    kind: str = "sae"
    expansion: int = 4
    k: int = 16
    nested: tuple[int, ...] = ()  # Matryoshka prefix sizes (see SparseAutoencoder.loss)
    coefficient: float = 1e-3
    lr: float = 1e-3
    batch_tokens: int = 256
    data: str = "demo"
    count: int = 2000
    start_seed: int = TRAINING_SEED_BASE
    images_per_pass: int = 32
    buffer_passes: int = 8
    tokens: str = "patch"
    hook_name_out: str = ""
    hook_names: tuple[str, ...] = ()
    skip: bool = False
    dead_after_tokens: int = 20_000
    resample_every: int = 400
    checkpoint_every: int = 200
    log_every: int = 25
    seed: int = 0
    prompt: str = DEFAULT_PROMPT
    lr_warmup_steps: int = 0
    lr_decay_steps: int = 0
    l1_warmup_steps: int = 0
    clip_grad_norm: float = 0.0
    b_dec_init: str = "mean"
    aux_k_coefficient: float = 1 / 32
    k_aux: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"unknown sparse-coder architecture {self.architecture!r}.",
                             f"Choose one of: {', '.join(ARCHITECTURES)}.")
        if self.architecture == "matryoshka_batchtopk" and not self.nested:
            raise InputError("matryoshka_batchtopk needs the nested prefix sizes.", "Add --nested, e.g. 8,32,128.")
        if self.b_dec_init not in ("mean", "geometric_median"):
            raise InputError(f"unknown b_dec initialisation {self.b_dec_init!r}.", "Use mean or geometric_median.")

    def reads(self) -> list[str]:
        """Hook points read per pass: the input(s), then a transcoder's target."""
        if self.kind == "crosscoder":
            if len(self.hook_names) < 2:
                raise InputError("a crosscoder needs two or more hook points.", "Example: blocks.0.hook_resid_post,"
                                                                              "blocks.2.hook_resid_post.")
            return list(self.hook_names)
        if self.kind == "transcoder":
            if not self.hook_name_out:
                raise InputError("a transcoder needs the hook point it predicts.", "Example: blocks.1.hook_mlp_out.")
            return [self.hook_name, self.hook_name_out]
        return [self.hook_name]


@dataclass
class TrainResult:
    coder: SparseAutoencoder  # reads raw activations (scale folded in)
    history: list[dict[str, float]] = field(default_factory=list)
    tokens_seen: int = 0
    seconds: float = 0.0
    activation_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / max(self.seconds - self.activation_seconds, 1e-9)


def train_coder(loaded: LoadedModel, settings: TrainSettings, checkpoint: str | Path | None = None,
                resume: bool = False, twin: LoadedModel | None = None) -> Job[TrainResult]:
    """Train per ``settings`` on ``loaded``'s activations. A job: yields ``Progress`` per step.

    With ``twin`` (a second model: a fine-tune, say), a crosscoder reads ``settings.hook_name`` in
    both models on the same images: its two sources are model ``loaded`` and model ``twin``."""
    if twin is not None:
        if settings.kind != "crosscoder":
            raise InputError("a second model is read by a crosscoder only.", "Use kind crosscoder.")
        settings = replace(settings, hook_names=(settings.hook_name, settings.hook_name))
    reads = [settings.hook_name] if twin is not None else settings.reads()
    part = None
    for model in (loaded, twin) if twin is not None else (loaded,):
        for name in reads:
            part = check_hook(model, name, settings.tokens)
    checkpoint = Path(checkpoint) if checkpoint else None
    state = _load_checkpoint(checkpoint, settings) if resume else None
    if resume and state is None:
        raise InputError(f"there is no checkpoint to resume in {checkpoint}.", "Drop --resume to start afresh.")
    started = time.perf_counter()
    trainer: _Trainer | None = state
    items_done = trainer.items_done if trainer else 0
    stream = _stream(loaded, settings, reads, part == "language", items_done)
    if twin is not None:  # the same images through both models: [rows in A, rows in B] per pass
        twin_stream = _stream(twin, settings, reads, part == "language", items_done)
        stream = _paired(stream, twin_stream, settings.hook_name)
    activation_seconds = 0.0
    try:
        while True:
            tick = time.perf_counter()
            buffer = _fill(stream, settings.buffer_passes, 4 * settings.batch_tokens, settings.kind)
            activation_seconds += time.perf_counter() - tick
            if buffer is None:
                break
            x, target, read = buffer
            if trainer is None:
                steps = settings.count * len(x) // max(read, 1) // settings.batch_tokens  # for the schedules
                names = [Path(str(model.source)).name for model in (loaded, twin) if model is not None]
                trainer = _Trainer.start(" | ".join(names), settings, x, target, steps)
            trainer.items_done += read
            for _ in trainer.train_buffer(x, target):
                yield Progress(trainer.items_done, settings.count,
                               f"step {trainer.step}: EV {trainer.last.get('explained_variance', 0):.3f}, "
                               f"L0 {trainer.last.get('l0', 0):.1f}, dead {trainer.last.get('dead', 0)}")
                if checkpoint and trainer.step % settings.checkpoint_every == 0:
                    trainer.save(checkpoint)
        if trainer is None:
            raise InputError("no activations were read.", "Give at least one image (--count, or a fuller folder).")
        if trainer.last and trainer.history[-1:] != [trainer.last]:
            trainer.history.append(trainer.last)  # the curve always ends at the last step
        if checkpoint:
            trainer.save(checkpoint)
    except GeneratorExit:  # cancelled: keep what was learned, so that --resume can go on from here
        if checkpoint and trainer is not None:
            trainer.save(checkpoint)
        raise
    seconds = time.perf_counter() - started
    return TrainResult(trainer.folded(), trainer.history, trainer.tokens_seen, seconds,
                       activation_seconds)


def train_on_rows(x: torch.Tensor, settings: TrainSettings, target: torch.Tensor | None = None, epochs: int = 1,
                  model_name: str = "") -> Job[TrainResult]:
    """Train on rows already in memory ([n, d], or [n, sources, d] for a crosscoder), ``epochs``
    shuffled passes over them: for activations gathered elsewhere, and for tests on planted data."""
    target = x if target is None else target
    started = time.perf_counter()
    steps = epochs * (len(x) // settings.batch_tokens)
    trainer = _Trainer.start(model_name, settings, x, target, steps)
    for _ in range(epochs):
        for _ in trainer.train_buffer(x, target):
            yield Progress(trainer.step, steps, f"step {trainer.step}: EV {trainer.last['explained_variance']:.3f}")
    if trainer.last and trainer.history[-1:] != [trainer.last]:
        trainer.history.append(trainer.last)
    return TrainResult(trainer.folded(), trainer.history, trainer.tokens_seen,
                       time.perf_counter() - started)


# -- the stream ----------------------------------------------------------------------------------------
def _stream(loaded: LoadedModel, settings: TrainSettings, reads: list[str], language: bool, skip: int
            ) -> Iterator[tuple[list[torch.Tensor], int]]:
    """Row tensors per hook point, one forward pass at a time, with how many images (or examples)
    the pass consumed; the first ``skip`` are passed over (resuming)."""
    if language:
        if settings.data != "demo":
            raise InputError("language coders train on the demo tasks' prompts and answers.", "Use --data demo.")
        examples = demo_text_examples(settings.count, settings.start_seed)
        for index, (image, prompt, answer) in enumerate(examples):
            if index >= skip:
                yield text_rows(loaded, reads, image, prompt, answer), 1
        return
    if settings.data == "demo":
        from lvlm_studio.demo.scenes import make_scene

        items: Sequence[Any] = [settings.start_seed + i for i in range(settings.count)]

        def load(chunk):
            return [make_scene(seed).image for seed in chunk]
    else:
        files = folder_images(settings.data)
        items = [files[i % len(files)] for i in range(settings.count)]  # cycle a small folder

        def load(chunk):
            return list(open_images(chunk))
    for start in range(skip, len(items), settings.images_per_pass):
        chunk = items[start:start + settings.images_per_pass]
        yield image_batch_rows(loaded, reads, load(chunk), settings.tokens, settings.prompt), len(chunk)


def _paired(stream, twin_stream, hook_name: str) -> Iterator[tuple[list[torch.Tensor], int]]:
    """One model's rows beside the other's, pass by pass (the same images in both)."""
    for (rows, count), (twin_rows, _) in zip(stream, twin_stream):
        if rows[0].shape != twin_rows[0].shape:
            raise InputError(f"the two models' activations at {hook_name} differ in shape ({tuple(rows[0].shape)} "
                             f"and {tuple(twin_rows[0].shape)}).",
                             "A crosscoder over two models needs the same architecture (a model and its fine-tune).")
        yield [rows[0], twin_rows[0]], count


def _fill(stream, passes: int, min_rows: int, kind: str) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """At least ``passes`` passes and ``min_rows`` rows (a language pass is one short example):
    (inputs, targets, items read), or None when the stream is dry. A crosscoder's inputs stack its
    sources [n, sources, d]; a transcoder's target is its second read."""
    inputs, targets, read, rows_read = [], [], 0, 0
    for rows, count in stream:
        inputs.append(torch.stack(rows, dim=1) if kind == "crosscoder" else rows[0])
        targets.append(rows[1] if kind == "transcoder" else inputs[-1])
        read += count
        rows_read += len(inputs[-1])
        if len(inputs) >= passes and rows_read >= min_rows:
            break
    if not inputs:
        return None
    return torch.cat(inputs), torch.cat(targets), read


# -- the optimisation ----------------------------------------------------------------------------------
class _Trainer:
    """The coder in scaled space, its optimiser, dead-feature counters and history."""

    def __init__(self, coder: SparseAutoencoder, settings: TrainSettings, scale_in: torch.Tensor,
                 scale_out: torch.Tensor, total_steps: int = 0):
        self.coder, self.settings = coder, settings
        self.total_steps = total_steps  # what the learning-rate decay counts down to
        self.scale_in, self.scale_out = scale_in, scale_out
        self.optimizer = torch.optim.Adam(coder.parameters(), lr=settings.lr, fused=True)  # one kernel per step
        self.since_fired = torch.zeros(coder.cfg.d_sae, dtype=torch.long)
        self.step = 0
        self.tokens_seen = 0
        self.items_done = 0
        self.history: list[dict[str, float]] = []
        self.last: dict[str, float] = {}
        self.generator = torch.Generator().manual_seed(settings.seed)

    @classmethod
    def start(cls, model_name: str, settings: TrainSettings, x: torch.Tensor, target: torch.Tensor,
              total_steps: int = 0) -> _Trainer:
        crosscoder = settings.kind == "crosscoder"
        d_in = x.shape[-1]
        architecture, d_sae = settings.architecture, settings.expansion * d_in
        cfg = CoderConfig(
            d_in=d_in, d_sae=d_sae, architecture=architecture, kind=settings.kind,
            k=settings.k if architecture in ("topk", *BATCH_TOPK) else 0,
            matryoshka_widths=(*settings.nested, d_sae) if architecture == "matryoshka_batchtopk" else (),
            hook_name=settings.hook_name if not crosscoder else settings.hook_names[0],
            hook_name_out=settings.hook_name_out, hook_names=tuple(settings.hook_names),
            d_out=target.shape[-1], n_sources=x.shape[1] if crosscoder else 1, skip=settings.skip,
            tokens=settings.tokens, model_name=model_name,
            extra={"trained_on": settings.data, "count": settings.count, "start_seed": settings.start_seed,
                   **({"nested": list(settings.nested)} if settings.nested else {})},
        )
        scale_in = _scale(x)
        scale_out = scale_in if settings.kind != "transcoder" else _scale(target)
        coder = build_coder(cfg)
        coder.initialise(x * scale_in, None if settings.kind != "transcoder" else target * scale_out, settings.seed)
        if settings.b_dec_init == "geometric_median":
            with torch.no_grad():
                coder.b_dec.copy_(geometric_median(target * scale_out))
        return cls(coder, settings, scale_in, scale_out, total_steps)

    def train_buffer(self, x: torch.Tensor, target: torch.Tensor) -> Iterator[None]:
        """Shuffle one buffer and take a step per minibatch (yielding after each)."""
        settings, coder = self.settings, self.coder
        order = torch.randperm(len(x), generator=self.generator)
        x, target = x[order] * self.scale_in, target[order] * self.scale_out
        for start in range(0, len(x) - settings.batch_tokens + 1, settings.batch_tokens):
            xb, tb = x[start:start + settings.batch_tokens], target[start:start + settings.batch_tokens]
            losses = self._step(xb, tb)
            if settings.architecture != "jumprelu":
                coder.normalise_decoder()
            features = losses["features"].detach()
            fired = (features > 0).any(dim=0)
            self.since_fired += len(xb)
            self.since_fired[fired] = 0
            self.step += 1
            self.tokens_seen += len(xb)
            self.last = self._record(xb, tb, features, losses)
            if self.step % settings.resample_every == 0:
                self.resample(xb, tb)
            yield

    def _step(self, xb: torch.Tensor, tb: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimiser step on a minibatch, at this step's learning rate and sparsity coefficient."""
        settings, coder = self.settings, self.coder
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, settings.lr, self.total_steps, settings.lr_warmup_steps,
                                settings.lr_decay_steps)
        coefficient = coefficient_at(self.step, settings.coefficient, settings.l1_warmup_steps)
        losses = coder.loss(xb, tb, coefficient, settings.nested)  # a BatchTopK coder's threshold moves here
        loss = losses["loss"]
        dead = self.since_fired >= settings.dead_after_tokens
        if settings.architecture in ("topk", *BATCH_TOPK) and settings.aux_k_coefficient > 0 and bool(dead.any()):
            pre = coder.pre_activation(xb)
            residual = (tb - coder.decode(losses["features"], xb)).detach()
            k_aux = settings.k_aux or xb.shape[-1] // 2
            losses["aux_k"] = aux_k_loss(coder, pre, residual, dead, k_aux, xb)
            loss = loss + settings.aux_k_coefficient * losses["aux_k"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(coder.parameters(), settings.clip_grad_norm)
        self.optimizer.step()
        return losses

    @torch.no_grad()
    def _record(self, xb, tb, features, losses) -> dict[str, float]:
        centred = (tb - tb.mean(dim=0)).pow(2).sum()
        explained = 1.0 - float(losses["mse"]) * len(tb) / max(float(centred), 1e-12)
        entry = {"step": self.step, "tokens": self.tokens_seen, "mse": float(losses["mse"]),
                 "explained_variance": explained, "l0": float((features > 0).sum(dim=-1).float().mean()),
                 "dead": int((self.since_fired >= self.settings.dead_after_tokens).sum()),
                 "lr": float(self.optimizer.param_groups[0]["lr"]),
                 "coefficient": coefficient_at(self.step - 1, self.settings.coefficient, self.settings.l1_warmup_steps)}
        if self.step % self.settings.log_every == 0 or self.step == 1:
            self.history.append(entry)
        return entry

    @torch.no_grad()
    def resample(self, xb: torch.Tensor, tb: torch.Tensor) -> int:
        """Give dead features the directions of badly reconstructed tokens; returns how many."""
        coder = self.coder
        dead = (self.since_fired >= self.settings.dead_after_tokens).nonzero()[:, 0]
        if len(dead) == 0:
            return 0
        residual = (tb - coder(xb)).flatten(1)
        weights = residual.pow(2).sum(dim=1).pow(2)
        if float(weights.sum()) <= 0:
            return 0
        picks = torch.multinomial(weights, len(dead), replacement=True, generator=self.generator)
        directions = residual[picks] / residual[picks].norm(dim=1, keepdim=True).clamp(min=1e-8)
        source = directions if coder.cfg.kind == "sae" else xb.flatten(1)[picks]
        source = source / source.norm(dim=1, keepdim=True).clamp(min=1e-8)
        alive = torch.ones(coder.cfg.d_sae, dtype=torch.bool)
        alive[dead] = False
        enc = coder.W_enc.reshape(-1, coder.cfg.d_sae)  # [inputs, d_sae] (sources flattened)
        norm = float(enc[:, alive].norm(dim=0).mean()) if alive.any() else 1.0
        coder.W_dec[dead] = directions.reshape(len(dead), *coder.W_dec.shape[1:])
        enc[:, dead] = (0.2 * norm * source).T
        coder.W_enc.copy_(enc.reshape(coder.W_enc.shape))
        biases = [getattr(coder, name) for name in ("b_enc", "b_gate", "b_mag", "r_mag") if hasattr(coder, name)]
        for bias in biases:
            bias[dead] = 0.0
        for parameter in (coder.W_enc, coder.W_dec, *biases):
            moments = self.optimizer.state.get(parameter, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in moments:
                    if parameter is coder.W_dec:
                        moments[key][dead] = 0.0
                    else:
                        moments[key][..., dead] = 0.0
        self.since_fired[dead] = 0
        return len(dead)

    def folded(self) -> SparseAutoencoder:
        """A copy that reads and writes raw (unscaled) activations.

        Training scaled inputs by s_in and targets by s_out. A crosscoder's per-source scales go
        into its encoder and decoder slices. Any other coder keeps its decoder as trained (unit
        rows, for every architecture but JumpReLU) and reads features 1/s_out as large: W_enc·s_in/s_out,
        biases (b_enc, b_gate, b_mag) and thresholds /s_out, which every activation here allows
        (ReLU, TopK's ranking, a gate's sign and thresholds scale along). A JumpReLU coder's rows
        become unit-norm when it is saved (``formats.saelens_tensors``)."""
        coder = build_coder(replace(self.coder.cfg))
        coder.load_state_dict(self.coder.state_dict())
        s_in, s_out = self.scale_in, self.scale_out
        with torch.no_grad():
            if coder.cfg.kind == "crosscoder":  # per-source scales [s, 1]
                coder.W_enc.mul_(s_in[..., None])
                coder.W_dec.div_(s_out[None])
            else:
                coder.W_enc.mul_(s_in / s_out)
                for name in ("b_enc", "b_gate", "b_mag"):
                    if hasattr(coder, name):
                        getattr(coder, name).div_(s_out)
                if coder.cfg.architecture == "jumprelu":
                    coder.log_threshold.sub_(s_out.log())
                if coder.cfg.architecture in BATCH_TOPK:
                    coder.topk_threshold.div_(s_out.double())
            coder.b_dec.div_(s_out)
            if coder.cfg.kind == "transcoder" and coder.cfg.skip:
                coder.W_skip.mul_(s_in / s_out)
        return coder.eval()

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {f"coder.{k}": v.detach().contiguous() for k, v in self.coder.state_dict().items()}
        for index, parameter in enumerate(self.coder.parameters()):
            for key, value in self.optimizer.state.get(parameter, {}).items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().clone().contiguous()
        tensors["since_fired"] = self.since_fired.clone()
        tensors["scale_in"] = self.scale_in.reshape(-1).clone()
        tensors["scale_out"] = self.scale_out.reshape(-1).clone()
        tensors["generator"] = self.generator.get_state()
        state = {"settings": _settings_dict(self.settings), "coder": self.coder.cfg.to_dict(), "step": self.step,
                 "total_steps": self.total_steps,
                 "tokens_seen": self.tokens_seen, "items_done": self.items_done, "history": self.history,
                 "scale_shape": list(self.scale_in.shape)}
        with atomic_path(folder / CHECKPOINT_TENSORS) as temporary:
            save_file(tensors, str(temporary))
        write_text(folder / CHECKPOINT_STATE, json.dumps(state, indent=1))


def _settings_dict(settings: TrainSettings) -> dict[str, Any]:
    data = asdict(settings)
    data["hook_names"] = list(settings.hook_names)
    data["nested"] = list(settings.nested)
    return data


def _load_checkpoint(folder: Path | None, settings: TrainSettings) -> _Trainer | None:
    from safetensors.torch import load_file

    if folder is None or not (folder / CHECKPOINT_STATE).exists():
        return None
    state = json.loads((folder / CHECKPOINT_STATE).read_text())
    saved = state["settings"]
    for name in ("hook_name", "architecture", "kind", "expansion", "tokens", "hook_name_out", "data", "start_seed"):
        if saved.get(name) != _settings_dict(settings).get(name):
            raise InputError(f"the checkpoint in {folder} was trained with {name}={saved.get(name)!r}, "
                             f"not {_settings_dict(settings).get(name)!r}.",
                             "Resume with the same settings, or use another --checkpoint folder.")
    tensors = load_file(str(folder / CHECKPOINT_TENSORS))
    cfg = dict(state["coder"])
    cfg["hook_names"] = tuple(cfg.get("hook_names", ()))
    coder = build_coder(CoderConfig(**cfg))
    coder.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("coder.")})
    shape = state["scale_shape"]
    trainer = _Trainer(coder, settings, tensors["scale_in"].reshape(shape), tensors["scale_out"].reshape(shape),
                       state.get("total_steps", 0))
    for index, parameter in enumerate(coder.parameters()):
        moments = {key.rsplit(".", 1)[1]: value for key, value in tensors.items()
                   if key.startswith(f"optim.{index}.")}
        if moments:
            trainer.optimizer.state[parameter] = moments
    trainer.since_fired = tensors["since_fired"]
    trainer.generator.set_state(tensors["generator"])
    trainer.step, trainer.tokens_seen = state["step"], state["tokens_seen"]
    trainer.items_done, trainer.history = state["items_done"], state["history"]
    return trainer


def _scale(x: torch.Tensor) -> torch.Tensor:
    """The factor that makes the mean row norm √d (per source for [n, sources, d])."""
    norms = x.norm(dim=-1).mean(dim=0)  # scalar, or [sources]
    scale = math.sqrt(x.shape[-1]) / norms.clamp(min=1e-8)
    return scale[..., None] if scale.dim() else scale
