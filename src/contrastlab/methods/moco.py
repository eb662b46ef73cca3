"""MoCo v1/v2: Momentum Contrast (He et al., CVPR 2020; Chen et al., 2020).

Reading guide, in the order of the paper:
  1. a query encoder f_q and a key encoder f_k of the same architecture (``Encoder``);
  2. f_k follows f_q by a moving average, never by gradients (``momentum_update``);
  3. q = f_q(x_q), k = f_k(x_k), both L2-normalized; k is computed without gradient, with shuffle BN
     (or split BN on one device) so batch statistics cannot reveal the positive (``encode_keys``);
  4. logits [q·k, q·queue] / T and cross-entropy with the positive at index 0 (``contrast``); the
     Feature Transformation hook sits between the features and the logits. The scores are
     computed in float32 with autocast off (``pair_scores``), so that a bf16 step neither rounds
     the logits nor the recorded score statistics;
  5. the batch's keys, gathered from every process, replace the oldest entries of the queue
     (``enqueue``, any queue size and batch size).
The queue and its pointer are buffers, so they are saved in checkpoints and restored on resume.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastlab import distributed
from contrastlab.config import Config, ModelConfig, validate
from contrastlab.errors import plural
from contrastlab.models import build_backbone, build_head
from contrastlab.models.split_bn import split_bn_layer
from contrastlab.scores import ScoreStats, autocast_off, score_stats
from contrastlab.transforms.feature import check_epoch, feature_transform, mean_log_values


@dataclass
class StepOutput:
    """What a method's forward returns to the trainer."""

    loss: Tensor
    # (space, stage) -> statistics; stage is "raw" (cosine scores) or "effective" (after FT)
    scores: dict[tuple[str, str], ScoreStats] = field(default_factory=dict)
    # the step's mean Feature Transformation λ per side, {"ft/lam_pos": 0-dim tensor, ...}
    # (FTOutput.log_values); empty where the transformation is off at this epoch
    ft: dict[str, Tensor] = field(default_factory=dict)


class Encoder(nn.Module):
    """Backbone followed by a projection head; outputs unit vectors."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.backbone, self.feature_dim = build_backbone(
            cfg, norm_layer=split_bn_layer(cfg.bn_splits)
        )
        self.head = build_head(cfg, self.feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.backbone(x)), dim=1)


def make_momentum_copy(module: nn.Module) -> nn.Module:
    """A copy that is never trained by gradient (the key encoder)."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


@torch.no_grad()
def momentum_update(online: nn.Module, momentum_copy: nn.Module, m: float) -> None:
    """θ_k ← m·θ_k + (1 − m)·θ_q for every parameter (one fused call over all tensors)."""
    params_k = [p for p in momentum_copy.parameters()]
    params_q = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(params_k, params_q, 1.0 - m)


def random_unit_queue(size: int, dim: int) -> Tensor:
    return F.normalize(torch.randn(size, dim), dim=1)


@torch.no_grad()
def enqueue(queue: Tensor, ptr: Tensor, keys: Tensor) -> None:
    """Write ``keys`` over the oldest queue entries, wrapping around the end; advance ``ptr``.

    Works for any queue size K and any number of keys n (if n > K only the newest K are kept).
    ``ptr`` stays a device tensor, so this never waits for the device.
    """
    size, n = queue.shape[0], keys.shape[0]
    start = ptr
    if n > size:
        keys, start = keys[n - size :], ptr + (n - size)
    slots = (start + torch.arange(keys.shape[0], device=queue.device)) % size
    queue.index_copy_(0, slots, keys.to(queue.dtype))
    ptr.copy_((ptr + n) % size)


def pair_scores(
    q: Tensor, k: Tensor, negatives: Tensor, others: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Scores of queries with their positives and negatives, in float32 with autocast off.

    ``q``, ``k`` [B, d]; ``negatives`` [K, d]; ``others`` [n, B, d], optional extra negatives per
    query (LooC: the same image's other keys), placed before the K shared ones. Returns
    ``l_pos`` [B] = q·k and ``l_neg`` [B, n + K]. Under bf16 autocast a matmul returns bf16 (8 bits
    of mantissa: a score near 1 is known to ±0.004), which would round the logits and hide the
    variance of a collapsed space (~1e-8) in the recorded statistics; float32 costs little at
    these sizes. float64 inputs stay float64. Gradient flows to ``q`` (and wherever else it is
    required) as usual.
    """
    dtype = torch.promote_types(q.dtype, torch.float32)
    with autocast_off(q.device):
        q, k, negatives = q.to(dtype), k.to(dtype), negatives.to(dtype)
        l_pos = torch.einsum("nc,nc->n", q, k)
        l_neg = q @ negatives.T
        if others is not None:
            l_neg = torch.cat([torch.einsum("nc,jnc->nj", q, others.to(dtype)), l_neg], dim=1)
    return l_pos, l_neg


def check_images(x, what: str, device: torch.device, channels: int, dtype: torch.dtype) -> None:
    """Raise ``ValueError`` unless ``x`` is a batch of floating-point images [B, C, H, W] with
    C = ``channels`` on ``device`` that a model of ``dtype`` takes: ``dtype`` itself, or under
    autocast on that device any floating-point dtype but float64. ``what`` names ``x`` in the
    message ("view 0", "x"). Reads only the shape, dtype and device."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{what} must be a tensor [B, {channels}, H, W], got {type(x).__name__}")
    where = f"shape {list(x.shape)}, {x.dtype} on {x.device}"
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{what} must be a batch of images [B, {channels}, H, W], got {where}")
    if not x.is_floating_point():
        raise ValueError(
            f"{what} must be floating-point images (normalized, as the training views), got {where}"
        )
    if x.device != device:
        raise ValueError(f"{what} is on {x.device} but the model is on {device}; move it there")
    autocast = torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float64
    if x.dtype != dtype and not autocast:
        to = {torch.float32: ".float()", torch.float64: ".double()"}.get(dtype, f".to({dtype})")
        raise ValueError(
            f"{what} is {x.dtype} but the model's weights are {dtype}; convert it with "
            f"x{to} (or run under torch.autocast)"
        )


def image_input(encoder: nn.Module) -> nn.Conv2d | None:
    """The first convolution of contrastlab's encoders (``backbone.conv1``), which says what
    images they take; None for an encoder of one's own without it (assigned to ``encoder_q``),
    whose inputs are its own business."""
    conv1 = getattr(getattr(encoder, "backbone", None), "conv1", None)
    return conv1 if isinstance(conv1, nn.Conv2d) else None


def check_input(x, what: str, device: torch.device) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor with a batch dimension on ``device`` (what
    an encoder of one's own is given: no shape or dtype is assumed)."""
    if not isinstance(x, Tensor) or x.dim() == 0:
        got = "a 0-d tensor" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{what} must be a tensor with a batch dimension first, got {got}")
    if x.device != device:
        raise ValueError(f"{what} is on {x.device} but the model is on {device}; move it there")


def check_views(
    views,
    num_views: int,
    needs: str,
    device: torch.device,
    channels: int | None,
    bn_groups: int | None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Raise ``ValueError`` unless ``views`` is a list of ``num_views`` floating-point image
    batches [B, C, H, W] with the same B >= 1 and C = ``channels``, on ``device``, of a dtype
    the model takes (``check_images``). Their heights and widths may differ. ``bn_groups``:
    the batch-norm groups of a training step (``model.bn_splits``), each of which needs at least
    2 samples; None in eval mode (running statistics). ``needs`` says what the method takes
    ("MoCo needs 2 views [x_q, x_k]"). ``channels`` None: an encoder of one's own
    (``image_input``), whose views need only be tensors of one batch size B >= 1 on ``device``.
    Reads only shapes, dtypes and devices, so it never waits for the device."""
    if not isinstance(views, (list, tuple)):
        raise ValueError(f"{needs} as a list, got {type(views).__name__}")
    if len(views) != num_views:
        raise ValueError(f"{needs}, got {len(views)}")
    batch = None
    for i, x in enumerate(views):
        if channels is None:
            check_input(x, f"view {i}", device)
        else:
            check_images(x, f"view {i}", device, channels, dtype)
        if batch is None:
            batch = x.shape[0]
        elif x.shape[0] != batch:
            raise ValueError(
                f"every view must hold the same images: view 0 has {batch}, view {i} "
                f"has {x.shape[0]}"
            )
    if batch == 0:
        raise ValueError("the views are empty (batch of 0 images)")
    if bn_groups is not None and (batch % bn_groups or batch // bn_groups < 2):
        raise ValueError(
            f"a training step of {plural(batch, 'image')} with model.bn_splits={bn_groups} needs a "
            f"multiple of {bn_groups} images with at least 2 per group; give at least "
            f"{2 * bn_groups} images, or call model.eval() to score without training"
        )


def _concat_stats(parts: list[ScoreStats]) -> ScoreStats:
    """Statistics of two loss directions (symmetric loss) as one batch of queries."""
    if len(parts) == 1:
        return parts[0]

    def cat(name: str):
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else torch.cat(values)

    return ScoreStats(
        pos=cat("pos"),
        neg_mean=cat("neg_mean"),
        neg_var=cat("neg_var"),
        pos_hist=sum(p.pos_hist for p in parts),
        neg_hist=sum(p.neg_hist for p in parts),
        pos_exp=cat("pos_exp"),
        neg_exp=cat("neg_exp"),
    )


class MoCo(nn.Module):
    """MoCo with a query encoder, a momentum key encoder and one queue of negatives."""

    spaces = ("z",)
    feature_spaces = ("backbone", "z")
    num_views = 2

    def __init__(self, cfg: Config):
        super().__init__()
        validate(cfg, need_data_path=False)  # a config built in Python is checked here too
        self.cfg = cfg
        self.encoder_q = Encoder(cfg.model)
        self.encoder_k = make_momentum_copy(self.encoder_q)
        self.register_buffer("queue", random_unit_queue(cfg.moco.queue_size, cfg.model.dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @property
    def backbone(self) -> nn.Module:
        return self.encoder_q.backbone

    # -- the training step ------------------------------------------------------------------
    def forward(self, views: list[Tensor], epoch: int = 0) -> StepOutput:
        """The loss and score statistics of one batch of views ``[x_q, x_k]``, each [B, 3, H, W].

        In training mode (``model.train()``) this is a training step: the key encoder first
        follows the query encoder (momentum update), and the batch's keys then enter the queue.
        In eval mode (``model.eval()``, as ``checkpoint.load_model`` returns it) the loss and
        scores are computed with the current key encoder, queue and batch-norm running
        statistics, and the model is left unchanged: scoring held-out data with a loaded
        checkpoint does not alter it. Raises ``ValueError`` for views that are not a list of 2
        floating-point image batches of one batch size on the model's device in a dtype it
        takes (its weights' dtype, or any but float64 under autocast), and for an ``epoch``
        that is not an integer >= 0. The two views may differ in height and width (as
        multi-crop views do): each goes through its encoder on its own. An encoder of one's
        own assigned to ``encoder_q``/``encoder_k`` (one without contrastlab's
        ``backbone.conv1``) takes views of any shape and dtype: they need only be tensors of one
        batch size on the model's device.
        """
        conv1 = image_input(self.encoder_q)
        check_views(
            views,
            self.num_views,
            "MoCo needs 2 views [x_q, x_k]",
            self.queue.device,
            None if conv1 is None else conv1.in_channels,
            self.cfg.model.bn_splits if self.training and conv1 is not None else None,
            torch.float32 if conv1 is None else conv1.weight.dtype,
        )
        check_epoch(epoch)
        x_q, x_k = views[0], views[1]
        if self.training:
            momentum_update(self.encoder_q, self.encoder_k, self.cfg.moco.momentum)
        lam: list[dict[str, Tensor]] = []  # the draws of each direction
        loss, stats, k = self.contrast(x_q, x_k, epoch, lam)
        if self.cfg.moco.symmetric:  # the same pair with the roles of the views swapped
            loss_21, stats_21, k_21 = self.contrast(x_k, x_q, epoch, lam)
            loss = loss + loss_21
            stats = {key: _concat_stats([stats[key], stats_21[key]]) for key in stats}
            k = torch.cat([k, k_21])
        if self.training:
            enqueue(self.queue, self.queue_ptr, distributed.gather_cat(k))
        return StepOutput(loss=loss, scores=stats, ft=mean_log_values(lam))

    @torch.no_grad()
    def encode_keys(self, x_k: Tensor) -> Tensor:
        # Shuffle BN across processes under DDP; on one device, split BN needs a local shuffle
        # so that a query and its key land in different sub-batches.
        # In eval mode batch norm uses running statistics: nothing to shuffle (and no other
        # process to wait for).
        model = self.cfg.model
        shuffle = distributed.is_distributed() or model.bn_splits > 1
        if self.training and model.shuffle_bn and shuffle:
            x_k, undo = distributed.shuffle_batch(x_k)
            return distributed.unshuffle_batch(self.encoder_k(x_k), undo)
        return self.encoder_k(x_k)

    def contrast(self, x_q: Tensor, x_k: Tensor, epoch: int, lam: list | None = None):
        """InfoNCE of queries x_q against keys x_k and the queue; returns (loss, stats, keys).

        ``lam``, a list, receives the Feature Transformation's mean λ of this call
        (``FTOutput.log_values``)."""
        q = self.encoder_q(x_q)
        k = self.encode_keys(x_k).to(q.dtype)
        # The queue changes in place after this step. It stays float32 (not rounded to a bf16
        # query's dtype): the negatives' spread is what the score statistics measure.
        negatives = self.queue.clone()
        ft = feature_transform(q, k, negatives, self.cfg.ft, epoch)
        if lam is not None:
            lam.append(ft.log_values())
        q_hat, k_hat, n_hat = ft.as_tuple()
        l_pos, l_neg = pair_scores(q_hat, k_hat, n_hat)  # float32 even under autocast
        logits = torch.cat([l_pos[:, None], l_neg], dim=1) / self.cfg.moco.temperature
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits, labels)  # autocast runs cross-entropy in float32
        transformed = not (q_hat is q and k_hat is k and n_hat is negatives)
        return loss, self.pair_stats(q, k, negatives, l_pos, l_neg, transformed), k

    def pair_stats(self, q, k, negatives, l_pos, l_neg, transformed: bool) -> dict:
        """Raw (cosine, before FT) and effective (in the loss) score statistics of this step."""
        sc = self.cfg.scores
        if not sc.record:
            return {}
        t = self.cfg.moco.temperature
        eff = score_stats(l_pos, l_neg, sc.bins, sc.low, sc.high, t)
        if not transformed:
            raw = eff  # no transformation this step: raw and effective scores are the same
        else:
            with torch.no_grad():
                raw = score_stats(*pair_scores(q, k, negatives), sc.bins, sc.low, sc.high, t)
        return {("z", "raw"): raw, ("z", "effective"): eff}

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, x: Tensor, space: str = "backbone") -> Tensor:
        """Frozen features of the query encoder: the pooled backbone output, or the projection.

        Raises ``ValueError`` for ``x`` that is not a batch of images [B, 3, H, W] as a view
        of ``forward`` (floating-point, on the model's device, in a dtype it takes)."""
        conv1 = image_input(self.encoder_q)
        device = self.queue.device
        if conv1 is None:  # an encoder of one's own
            check_input(x, "x", device)
            if space == "backbone" and not hasattr(self.encoder_q, "backbone"):
                raise ValueError("this encoder has no backbone; use space='z'")
        else:
            check_images(x, "x", device, conv1.in_channels, conv1.weight.dtype)
        if space == "backbone":
            return self.encoder_q.backbone(x)
        if space == "z":
            return self.encoder_q(x)
        raise ValueError(
            f"unknown feature space '{space}'; valid: {', '.join(self.feature_spaces)}"
        )
