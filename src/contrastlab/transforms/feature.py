"""Feature Transformation (Zhu et al., ICCV 2021): harder positives and more diverse negatives.

The transformation acts on the unit-norm embeddings just before the InfoNCE logits:

* positive extrapolation (paper §2), λ_ex = 1 + Beta(α_ex, α_ex) ∈ [1, 2]::

      q̂ = λ·q + (1 − λ)·k        k̂ = λ·k + (1 − λ)·q

  which pushes the pair apart along its difference, so the positive score q̂·k̂ always drops;
* positive interpolation (a variant in the reference code): the same formula with λ ∈ [0, 1];
* negative interpolation (paper §3), λ_in = Beta(α_in, α_in) ∈ [0, 1] and a random permutation π of
  the K queue slots::

      n̂_j = λ·n_j + (1 − λ)·n_π(j)

The method then scores ``l_pos = (q̂ * k̂).sum(1)`` and ``l_neg = q̂ @ n̂.T``. Everything here is
a few element-wise ops on the features' device: λ and π are drawn there (never a K×d sample on the
host), nothing reads a value back to the host, and the queue itself is never written to.
See docs/feature-transformation.md for the closed forms and the config keys.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastlab.config import VALID, FTConfig

__all__ = [
    "FTOutput",
    "check_ft_config",
    "check_features",
    "extrapolate_positive",
    "feature_transform",
    "interpolate_negatives",
    "interpolate_positive",
    "is_active",
    "lambda_shape",
    "mean_log_values",
    "side_granularity",
    "sample_beta",
    "sample_lambda",
    "transform_features",
]


@dataclass
class FTOutput:
    """The transformed features of one step, with the random draws that produced them.

    ``lam_pos`` / ``lam_neg`` have the shape of their granularity (``[]``, ``[rows, 1]`` or
    ``[rows, d]``) and are ``None`` where that side is off, as is ``perm`` without negative mixing.
    """

    q: Tensor
    k: Tensor
    negatives: Tensor
    lam_pos: Tensor | None = None
    lam_neg: Tensor | None = None
    perm: Tensor | None = None

    def as_tuple(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.q, self.k, self.negatives

    def log_values(self) -> dict[str, Tensor]:
        """Mean λ of each active side, ``{"ft/lam_pos": ..., "ft/lam_neg": ...}`` (a side that
        is off, or the whole step before ``ft.start_epoch``, has no entry), as 0-dim float32
        device tensors: nothing waits for the device (``.item()`` them when logging). The
        trainer logs their epoch means under these names (``mean_log_values``)."""
        out = {}
        if self.lam_pos is not None:
            out["ft/lam_pos"] = self.lam_pos.detach().float().mean()
        if self.lam_neg is not None:
            out["ft/lam_neg"] = self.lam_neg.detach().float().mean()
        return out


def mean_log_values(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The mean of each entry of several ``FTOutput.log_values()`` (the two directions of a
    symmetric loss, the spaces of LooC), over the parts that have it; empty when none has any."""
    names = dict.fromkeys(name for part in parts for name in part)
    return {
        name: torch.stack([part[name] for part in parts if name in part]).mean() for name in names
    }


# ----------------------------------------------------------------------------------------------
# Checking the inputs (Python-level: shapes, dtypes, devices and choices; never a value)
# ----------------------------------------------------------------------------------------------

POS_CHOICES = ("none", "extrapolate", "interpolate")
NEG_CHOICES = ("none", "interpolate")
GRANULARITIES = ("step", "sample", "element")
DISTRIBUTIONS = ("beta", "uniform")


def check_ft_config(cfg: FTConfig) -> None:
    """Raise ``ValueError`` naming the valid values for a choice of ``cfg`` that is none of them,
    and the range of a number out of it (an ``FTConfig`` built in Python is not checked like a
    loaded config; a misspelt ``pos`` must not run as another transformation). Each message
    names its key (``ft.alpha_pos``). Python values only: nothing waits for the device."""
    for key, value, valid in (
        ("pos", cfg.pos, POS_CHOICES),
        ("neg", cfg.neg, NEG_CHOICES),
        ("distribution", cfg.distribution, DISTRIBUTIONS),
        ("granularity", cfg.granularity, GRANULARITIES),
        ("granularity_pos", cfg.granularity_pos, (None, *GRANULARITIES)),
        ("granularity_neg", cfg.granularity_neg, (None, *GRANULARITIES)),
    ):
        if value not in valid:
            names = ", ".join("null" if v is None else v for v in valid)
            raise ValueError(f"ft.{key}={value!r} is not valid; valid values: {names}")
    for key in ("alpha_pos", "alpha_neg", "start_epoch"):
        value, spec = getattr(cfg, key), VALID[f"ft.{key}"]
        kind = numbers.Integral if spec.integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind) or not spec.ok(value):
            raise ValueError(f"ft.{key} must be {spec.describe()}, got {value!r}")
    for key in ("renormalize", "renormalize_negatives"):
        if not isinstance(getattr(cfg, key), bool):
            raise ValueError(f"ft.{key} must be True or False, got {getattr(cfg, key)!r}")


def _where(t: Tensor) -> str:
    return f"shape {list(t.shape)}, {t.dtype} on {t.device}"


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Same type, and the same index where both name one (``torch.Generator("cuda")`` may not)."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_features(
    q: Tensor, k: Tensor, negatives: Tensor, generator: torch.Generator | None = None
) -> None:
    """Raise ``ValueError`` unless ``q``, ``k`` are [B, d] and ``negatives`` [K, d] floating-point
    tensors on one device (and ``generator``, if given, on that device too). Reads only shapes,
    dtypes and devices: no value, so no wait for the device."""
    for name, t in (("q", q), ("k", k), ("negatives", negatives)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 2:
            want = "[K, d]" if name == "negatives" else "[B, d]"
            raise ValueError(f"{name} must be a 2-D tensor {want}, got {_where(t)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating-point features, got {_where(t)}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; move them together")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {list(q.shape)}, got {list(k.shape)}")
    if negatives.shape[1] != q.shape[1]:
        raise ValueError(
            f"negatives have dimension {negatives.shape[1]} but q has {q.shape[1]}; "
            "both must be embeddings of the same size"
        )
    if generator is not None and not _same_device(torch.device(generator.device), q.device):
        raise ValueError(
            f"generator is on {generator.device} but the features are on {q.device}; pass a "
            "torch.Generator of the features' device, or none"
        )


# ----------------------------------------------------------------------------------------------
# Drawing λ
# ----------------------------------------------------------------------------------------------


def check_epoch(epoch) -> None:
    """Raise ``ValueError`` unless ``epoch`` is an integer >= 0 (it sets the FT schedule)."""
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
        raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")


def is_active(cfg: FTConfig, epoch: int) -> bool:
    """Whether the transformation changes anything at this epoch (``ValueError`` for a value of
    ``cfg`` that is not a valid choice, and for an ``epoch`` that is no integer >= 0)."""
    check_ft_config(cfg)
    check_epoch(epoch)
    return (cfg.pos != "none" or cfg.neg != "none") and epoch >= cfg.start_epoch


def side_granularity(cfg: FTConfig, side: str) -> str:
    """The granularity of λ on one side ("pos" or "neg"): ``ft.granularity_pos`` /
    ``ft.granularity_neg`` when set, else ``ft.granularity``. The reference code's ``dim_mask``
    (pos / neg / both / none: which sides draw one λ per element) is one of these combinations."""
    own = cfg.granularity_pos if side == "pos" else cfg.granularity_neg
    return own if own is not None else cfg.granularity


def lambda_shape(granularity: str, rows: int, dim: int) -> tuple[int, ...]:
    """Shape of λ for ``rows`` vectors of size ``dim``; it broadcasts against ``[rows, dim]``.

    "step": one scalar for the whole batch (or queue), as in the published runs;
    "sample": one per vector; "element": one per coordinate.
    """
    if granularity == "step":
        return ()
    if granularity == "sample":
        return (rows, 1)
    if granularity == "element":
        return (rows, dim)
    raise ValueError(f"unknown granularity {granularity!r}; valid: step, sample, element")


def sample_beta(
    shape: tuple[int, ...],
    alpha: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Beta(α, α) samples drawn on ``device``, as X / (X + Y) with X, Y ~ Gamma(α, 1).

    The Gamma ratio (rather than ``torch.distributions.Beta``) keeps the draw on the device, takes a
    ``generator`` for reproducible runs, and validates nothing on the host.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha > 0:
        raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
    concentration = torch.full((2, *shape), float(alpha), device=device, dtype=dtype)
    x, y = torch._standard_gamma(concentration, generator=generator).unbind(0)
    total = x + y
    # Both draws can underflow to 0 for a tiny α; Beta(α, α) is symmetric, so 0.5 is fair.
    return torch.where(total > 0, x / total.clamp_min(torch.finfo(dtype).tiny), 0.5)


def sample_lambda(
    shape: tuple[int, ...],
    alpha: float,
    distribution: str = "beta",
    *,
    low: float = 0.0,
    high: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """λ = low + (high − low)·X with X ~ Beta(α, α) or Uniform(0, 1) (α is then unused).

    Extrapolation uses ``low=1, high=2`` (λ_ex = 1 + Beta), interpolation the default ``[0, 1]``.
    """
    if distribution == "beta":
        x = sample_beta(shape, alpha, device=device, dtype=dtype, generator=generator)
    elif distribution == "uniform":
        x = torch.rand(shape, device=device, dtype=dtype, generator=generator)
    else:
        raise ValueError(f"unknown distribution {distribution!r}; valid: beta, uniform")
    if low == 0.0 and high == 1.0:
        return x
    return low + (high - low) * x


# ----------------------------------------------------------------------------------------------
# The transformations (pure functions of the features and the draws)
# ----------------------------------------------------------------------------------------------


def _mix_pair(q: Tensor, k: Tensor, lam: Tensor | float) -> tuple[Tensor, Tensor]:
    if q.shape != k.shape:
        raise ValueError(
            f"q and k must have the same shape, got {list(q.shape)} and {list(k.shape)}"
        )
    # Gradient reaches q through q̂ (factor λ) and through k̂ (factor 1 − λ).
    return lam * q + (1 - lam) * k, lam * k + (1 - lam) * q


def extrapolate_positive(q: Tensor, k: Tensor, lam: Tensor | float) -> tuple[Tensor, Tensor]:
    """Harder positives (paper §2): q̂ = λq + (1−λ)k, k̂ = λk + (1−λ)q with λ ∈ [1, 2].

    For unit vectors with s = q·k: q̂·k̂ = s − 2λ(λ−1)(1−s) ≤ s and ‖q̂‖² = 1 + 2λ(λ−1)(1−s).
    """
    return _mix_pair(q, k, lam)


def interpolate_positive(q: Tensor, k: Tensor, lam: Tensor | float) -> tuple[Tensor, Tensor]:
    """Easier positives (the reference code's variant): the same formula with λ ∈ [0, 1].

    Both vectors move towards each other, so q̂·k̂ ≥ s; the closed forms above still hold.
    """
    return _mix_pair(q, k, lam)


def interpolate_negatives(negatives: Tensor, lam: Tensor | float, perm: Tensor) -> Tensor:
    """More diverse negatives (paper §3): n̂_j = λ·n_j + (1−λ)·n_π(j), as a new tensor.

    ``lam`` is a scalar, ``[K, 1]`` or ``[K, d]``; ``perm`` a permutation of ``range(K)``.
    The input (the queue) is only read. ``lerp`` makes one pass over K x d after the gather,
    where the written-out formula makes four.
    """
    if negatives.dim() != 2:
        raise ValueError(f"negatives must be a 2-D tensor [K, d], got {_where(negatives)}")
    if perm.shape != negatives.shape[:1]:
        raise ValueError(
            f"perm must be a permutation of the {negatives.shape[0]} negatives, got shape "
            f"{list(perm.shape)}"
        )
    if isinstance(lam, Tensor):
        lam = lam.to(negatives.dtype)
    return torch.lerp(negatives[perm], negatives, lam)


# ----------------------------------------------------------------------------------------------
# One step
# ----------------------------------------------------------------------------------------------


def feature_transform(
    q: Tensor,
    k: Tensor,
    negatives: Tensor,
    cfg: FTConfig,
    epoch: int,
    *,
    generator: torch.Generator | None = None,
    lam_pos: Tensor | float | None = None,
    lam_neg: Tensor | float | None = None,
    perm: Tensor | None = None,
) -> FTOutput:
    """Apply ``cfg`` to one step's features and return them with the draws used.

    ``q`` [B, d] carries gradient; ``k`` [B, d] and ``negatives`` [K, d] are constants (they are
    detached here). When the transformation is off, or ``epoch < cfg.start_epoch``, the inputs are
    returned as they are (same objects). ``lam_pos``, ``lam_neg`` and ``perm`` replace the random
    draws (tests, ablations); ``generator`` must live on the features' device.

    The mixing runs in float32, or float64 if the features are float64, so that λ keeps its
    precision under bf16 autocast; the outputs have that dtype. Each side draws λ at its own
    granularity (:func:`side_granularity`). ``cfg.renormalize`` puts q̂ and k̂ back on the unit
    sphere, and the mixed negatives too unless ``cfg.renormalize_negatives`` is false (the
    reference code's ``postmix_norm``, which leaves the negatives as they are).

    Raises ``ValueError`` for features that are not [B, d], [B, d], [K, d] floating-point tensors
    on one device (with the generator), for a value of ``cfg`` that is not a valid choice, and for
    an ``epoch`` that is not an integer >= 0 (as ``MoCo.forward``), whether or not the
    transformation is active at this epoch.
    """
    check_features(q, k, negatives, generator)
    if not is_active(cfg, epoch):
        return FTOutput(q, k, negatives)

    dtype = torch.promote_types(q.dtype, torch.float32)
    device = q.device
    q = q.to(dtype)
    k = k.detach().to(dtype)
    negatives = negatives.detach().to(dtype)

    def draw(side: str, rows: int, alpha: float, low: float, high: float) -> Tensor:
        shape = lambda_shape(side_granularity(cfg, side), rows, q.shape[1])
        return sample_lambda(
            shape,
            alpha,
            cfg.distribution,
            low=low,
            high=high,
            device=device,
            dtype=dtype,
            generator=generator,
        )

    out = FTOutput(q, k, negatives)
    if cfg.pos != "none":
        # the choices are checked above (is_active); each one named, none a fall-through
        if cfg.pos == "extrapolate":
            mix, low, high = extrapolate_positive, 1.0, 2.0
        elif cfg.pos == "interpolate":
            mix, low, high = interpolate_positive, 0.0, 1.0
        else:  # pragma: no cover - check_ft_config refused it
            raise ValueError(
                f"ft.pos={cfg.pos!r} is not valid; valid values: {', '.join(POS_CHOICES)}"
            )
        if lam_pos is None:
            lam_pos = draw("pos", q.shape[0], cfg.alpha_pos, low, high)
        out.q, out.k = mix(q, k, lam_pos)
        out.lam_pos = torch.as_tensor(lam_pos, dtype=dtype, device=device)
    if cfg.neg == "interpolate":
        if lam_neg is None:
            lam_neg = draw("neg", negatives.shape[0], cfg.alpha_neg, 0.0, 1.0)
        if perm is None:
            perm = torch.randperm(negatives.shape[0], device=device, generator=generator)
        out.negatives = interpolate_negatives(negatives, lam_neg, perm)
        out.lam_neg = torch.as_tensor(lam_neg, dtype=dtype, device=device)
        out.perm = perm
    if cfg.renormalize:
        if cfg.pos != "none":
            out.q = F.normalize(out.q, dim=1)
            out.k = F.normalize(out.k, dim=1)
        if cfg.neg == "interpolate" and cfg.renormalize_negatives:
            out.negatives = F.normalize(out.negatives, dim=1)
    return out


def transform_features(
    q: Tensor,
    k: Tensor,
    negatives: Tensor,
    cfg: FTConfig,
    epoch: int,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(q̂, k̂, n̂)`` for ``l_pos = (q̂ * k̂).sum(1)`` and ``l_neg = q̂ @ n̂.T``.

    The same objects come back, at no cost, when the transformation is off. Use
    :func:`feature_transform` to also get the λ values and the permutation.
    """
    return feature_transform(q, k, negatives, cfg, epoch, generator=generator).as_tuple()
