"""LooC / LooC++: leave-one-out contrastive learning (Xiao et al., ICLR 2021; docs/looc.md).

Reading guide, next to the paper:
  1. views (``data/looc_views.py``): query q, key k0 (everything redrawn) and one key k_i per atomic
     augmentation i that shares only augmentation i's parameters with q;
  2. network (``LoocEncoder``): a shared backbone and n + 1 MLP heads giving the spaces
     Z_0 (invariant to every augmentation) and Z_i (sensitive to augmentation i); LooC++ gives each
     head its own copy of the last backbone stage; a momentum copy of all of it encodes the keys;
  3. loss (``looc_loss``, the paper's Eq. 2): in Z_0, invariant to every augmentation, every key
     k_0..k_n is a positive of q (a multi-positive numerator; ``looc.z0_positives=k0`` keeps k0
     as the only one) and the negatives are queue 0; in Z_i the positive is k_i and the negatives
     are queue i plus the same image's other keys k_j (j != i), which differ from q in
     augmentation i. Scores are computed in float32 even under bf16 autocast (``pair_scores``);
  4. queues: one per space; after the step k0 enters queue 0 and k_i enters queue i (the key that
     is the positive in that space), gathered from every process under DDP.
The keys go through the key encoder only, in one batched forward without gradient.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastlab import distributed
from contrastlab.config import Config, FTConfig, ModelConfig, ScoresConfig, validate
from contrastlab.methods.moco import (
    StepOutput,
    check_epoch,
    check_images,
    check_views,
    enqueue,
    image_input,
    make_momentum_copy,
    momentum_update,
    pair_scores,
    random_unit_queue,
)
from contrastlab.models import build_backbone, build_head
from contrastlab.models.split_bn import split_bn_layer
from contrastlab.scores import ScoreStats, score_stats
from contrastlab.transforms.feature import feature_transform, mean_log_values

Z0 = "z0"


def _trunk(net: nn.Module, x: Tensor) -> Tensor:
    """A torchvision ResNet up to and including layer3 (LooC++'s shared part)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer3(net.layer2(net.layer1(x)))


class LoocEncoder(nn.Module):
    """Backbone and ``num_heads`` projection heads; ``forward`` returns ``[num_heads, B, dim]`` unit vectors.

    LooC: every head reads the pooled backbone output V. LooC++ (``plus_plus``): conv1..layer3 are
    shared and head i > 0 reads its own copy of layer4 (``branches[i - 1]``, initialized from the
    shared one); head 0 reads the backbone's own layer4, so ``backbone`` stays a complete
    torchvision ResNet (fc = Identity) whose output is the Z_0 branch's pooled layer4.
    """

    def __init__(self, cfg: ModelConfig, num_heads: int, plus_plus: bool):
        super().__init__()
        self.plus_plus = plus_plus
        self.backbone, self.feature_dim = build_backbone(
            cfg, norm_layer=split_bn_layer(cfg.bn_splits)
        )
        self.heads = nn.ModuleList(build_head(cfg, self.feature_dim) for _ in range(num_heads))
        self.branches = nn.ModuleList()
        if plus_plus:
            for _ in range(num_heads - 1):
                # starts as the shared layer4, then trains on its own
                self.branches.append(copy.deepcopy(self.backbone.layer4))

    def pooled(self, x: Tensor) -> list[Tensor]:
        """The pooled feature vector each head reads: one shared V (LooC) or one per head (LooC++)."""
        if not self.plus_plus:
            return [self.backbone(x)]
        h = _trunk(self.backbone, x)
        stages = [self.backbone.layer4, *self.branches]
        return [torch.flatten(self.backbone.avgpool(stage(h)), 1) for stage in stages]

    def project(self, pooled: list[Tensor]) -> Tensor:
        if len(pooled) == 1:
            pooled = pooled * len(self.heads)
        return torch.stack([F.normalize(head(v), dim=1) for head, v in zip(self.heads, pooled)])

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.pooled(x))


# ----------------------------------------------------------------------------------------------
# The loss (Eq. 2) for given embeddings: a pure function, so it can be checked on its own.
# ----------------------------------------------------------------------------------------------


def looc_loss(
    zq: Tensor,
    zk: Tensor,
    queues: Tensor,
    temperature: float,
    ft: FTConfig | None = None,
    epoch: int = 0,
    spaces: tuple[str, ...] | None = None,
    scores: ScoresConfig | None = None,
    z0_positives: str = "all",
    lam: list | None = None,
) -> tuple[Tensor, dict[tuple[str, str], ScoreStats]]:
    """Eq. 2 of the paper, averaged over the batch.

    ``zq`` [S, B, d]: query embeddings in each space (S = n + 1, space 0 = Z_0).
    ``zk`` [S, S, B, d]: ``zk[i, j]`` = key k_j embedded in space i by the key encoder.
    ``queues`` [S, K, d]: the negatives of each space (read only).

    Space 0, ``z0_positives="all"`` (the paper's form): every key is a positive,
    -log Σ_j E_0j / (Σ_j E_0j + N_0); ``"k0"``: only k0, -log E_00 / (E_00 + N_0). Space i:
    logits [q·k_i, q·k_j (j != i), q·queue_i] / T and cross-entropy with label 0, i.e.
    -log E_ii / (Σ_j E_ij + N_i). The loss is the mean over the n + 1 spaces. Feature
    Transformation, when on, acts in every space on (q, k_i, queue_i); the same image's other keys
    are scored against the transformed query as they are. Scores are float32 (float64 for float64
    inputs) with autocast off. The recorded statistics of Z_0 use k0 as the positive and queue 0
    as the negatives in both forms. ``lam``, a list, receives the Feature Transformation's mean
    λ of each space (``FTOutput.log_values``). Raises ``ValueError`` for an unknown
    ``z0_positives``.
    """
    if z0_positives not in ("all", "k0"):
        raise ValueError(f"unknown z0_positives {z0_positives!r}; valid: all, k0")
    num_spaces = zq.shape[0]
    spaces = spaces or tuple(f"z{i}" for i in range(num_spaces))
    ft = ft or FTConfig()
    loss_dtype = torch.float64 if zq.dtype == torch.float64 else torch.float32
    total = zq.new_zeros((), dtype=loss_dtype)
    stats: dict[tuple[str, str], ScoreStats] = {}
    for i in range(num_spaces):
        q = zq[i]
        k = zk[i, i]
        negatives = queues[i]
        # the same image's other keys: negatives in Z_i, extra positives in Z_0 ("all")
        others = zk[i, [j for j in range(num_spaces) if j != i]]  # [n, B, d]
        multi = i == 0 and z0_positives == "all" and num_spaces > 1
        if i == 0 and not multi:
            others = None
        out = feature_transform(q, k, negatives, ft, epoch)
        if lam is not None:
            lam.append(out.log_values())
        q_hat, k_hat, n_hat = out.as_tuple()
        l_pos, l_neg = pair_scores(q_hat, k_hat, n_hat, others)
        if multi:
            n_extra = num_spaces - 1
            positives = torch.cat([l_pos[:, None], l_neg[:, :n_extra]], dim=1) / temperature
            l_neg = l_neg[:, n_extra:]  # queue 0 only
            logits = torch.cat([positives, l_neg / temperature], dim=1).to(loss_dtype)
            total = (
                total
                + (
                    torch.logsumexp(logits, dim=1)
                    - torch.logsumexp(positives.to(loss_dtype), dim=1)
                ).mean()
            )
        else:
            logits = torch.cat([l_pos[:, None], l_neg], dim=1) / temperature
            labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            total = total + F.cross_entropy(logits.to(loss_dtype), labels)
        if scores is not None and scores.record:
            transformed = not (q_hat is q and k_hat is k and n_hat is negatives)
            stats.update(
                _space_stats(
                    spaces[i],
                    (q, k, negatives, others if i > 0 else None),
                    l_pos,
                    l_neg,
                    transformed,
                    scores,
                    temperature,
                )
            )
    return total / num_spaces, stats


def _space_stats(
    space, inputs, l_pos, l_neg, transformed, sc: ScoresConfig, temperature: float
) -> dict:
    """Raw (cosine, before FT) and effective (in the loss) scores; negatives = other keys + queue.

    ``inputs`` = (q, k, negatives, other keys scored as negatives or None).
    """
    eff = score_stats(l_pos, l_neg, sc.bins, sc.low, sc.high, temperature)
    if not transformed:
        raw = eff
    else:
        with torch.no_grad():
            raw = score_stats(*pair_scores(*inputs), sc.bins, sc.low, sc.high, temperature)
    return {(space, "raw"): raw, (space, "effective"): eff}


# ----------------------------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------------------------


def _check_key_shapes(key_views: list[Tensor]) -> None:
    """The key views go through the key encoder as one batch: they must have one shape."""
    shapes = sorted({tuple(v.shape) for v in key_views})
    if len(shapes) > 1:
        raise ValueError(
            "the key views [k0, k_1..k_n] must have one shape (they are encoded as one batch), "
            f"got {', '.join(str(list(s)) for s in shapes)}"
        )


class LooC(nn.Module):
    """LooC / LooC++ with a momentum key encoder and one queue per embedding space.

    ``queue`` [n + 1, K, dim] and ``queue_ptr`` [n + 1] are buffers (row s = space ``spaces[s]``),
    saved in checkpoints like MoCo's.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        validate(cfg, need_data_path=False)  # a config built in Python is checked here too
        self.cfg = cfg
        self.augmentations = tuple(cfg.looc.augmentations)
        self.plus_plus = cfg.looc.plus_plus
        self.spaces = (Z0, *self.augmentations)
        self.feature_spaces = ("backbone", *self.spaces) + (("concat",) if self.plus_plus else ())
        self.num_views = len(self.augmentations) + 2  # q, k0, k_1..k_n
        num_spaces = len(self.spaces)
        self.encoder_q = LoocEncoder(cfg.model, num_spaces, self.plus_plus)
        self.encoder_k = make_momentum_copy(self.encoder_q)
        queue = torch.stack(
            [random_unit_queue(cfg.moco.queue_size, cfg.model.dim) for _ in range(num_spaces)]
        )
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros(num_spaces, dtype=torch.long))

    @property
    def backbone(self) -> nn.Module:
        """The query backbone: a torchvision ResNet with fc = Identity (for LooC++ the Z_0 branch)."""
        return self.encoder_q.backbone

    # -- the training step ------------------------------------------------------------------
    def forward(self, views: list[Tensor], epoch: int = 0) -> StepOutput:
        """The loss and score statistics of one batch of views ``[q, k0, k_1..k_n]``.

        In training mode (``model.train()``) this is a training step: the key encoder first
        follows the query encoder (momentum update), and each space's positive key then enters
        its queue. In eval mode (``model.eval()``, as ``checkpoint.load_model`` returns it) the
        loss and scores are computed with the current key encoder, queues and batch-norm running
        statistics, and the model is left unchanged. The same for LooC++. Raises ``ValueError``
        for views that are not a list of n + 2 floating-point image batches [B, 3, H, W] of one
        batch size on the model's device in a dtype it takes (its weights' dtype, or any but
        float64 under autocast), and for an ``epoch`` that is not an integer >= 0. The key views
        [k0, k_1..k_n] must have one shape (they are encoded as one batch); the query view may
        differ from them in height and width.
        """
        conv1 = image_input(self.encoder_q)  # None: an encoder of one's own, as in MoCo
        check_views(
            views,
            self.num_views,
            f"LooC with {list(self.augmentations)} needs {self.num_views} views [q, k0, k_1..k_n]",
            self.queue.device,
            None if conv1 is None else conv1.in_channels,
            self.cfg.model.bn_splits if self.training and conv1 is not None else None,
            torch.float32 if conv1 is None else conv1.weight.dtype,
        )
        check_epoch(epoch)
        _check_key_shapes(views[1:])
        if self.training:
            momentum_update(self.encoder_q, self.encoder_k, self.cfg.moco.momentum)
        zq = self.encoder_q(views[0])  # [S, B, d]
        zk = self.encode_keys(views[1:]).to(zq.dtype)  # [S spaces, S key views, B, d]
        negatives = self.queue.clone()  # the queues change in place after this step
        lam: list[dict[str, Tensor]] = []  # the draws of each space
        loss, stats = looc_loss(
            zq,
            zk,
            negatives,
            self.cfg.moco.temperature,
            self.cfg.ft,
            epoch,
            self.spaces,
            self.cfg.scores,
            self.cfg.looc.z0_positives,
            lam,
        )
        if self.training:
            self.enqueue_keys(zk)
        return StepOutput(loss=loss, scores=stats, ft=mean_log_values(lam))

    @torch.no_grad()
    def encode_keys(self, key_views: list[Tensor]) -> Tensor:
        """All keys through the key encoder in one batch: ``[S, S, B, d]``, [space, key view]."""
        _check_key_shapes(key_views)
        b = key_views[0].shape[0]
        x = torch.cat(key_views)
        # As in MoCo: shuffle BN across processes under DDP, a local shuffle for split BN;
        # nothing to shuffle in eval mode (running statistics).
        model = self.cfg.model
        shuffle = distributed.is_distributed() or model.bn_splits > 1
        if self.training and model.shuffle_bn and shuffle:
            x, undo = distributed.shuffle_batch(x)
            z = distributed.unshuffle_batch(self.encoder_k(x).transpose(0, 1), undo).transpose(0, 1)
        else:
            z = self.encoder_k(x)
        return z.reshape(z.shape[0], len(key_views), b, z.shape[-1])

    @torch.no_grad()
    def enqueue_keys(self, zk: Tensor) -> None:
        """Queue s receives the key that was the positive in space s: k0 -> queue 0, k_i -> queue i."""
        num_spaces = zk.shape[0]
        positives = torch.stack([zk[s, s] for s in range(num_spaces)], dim=1)  # [B, S, d]
        positives = distributed.gather_cat(positives.contiguous())
        for s in range(num_spaces):
            enqueue(self.queue[s], self.queue_ptr[s], positives[:, s])

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, x: Tensor, space: str = "backbone") -> Tensor:
        """Frozen features of the query encoder.

        "backbone": pooled backbone output V (LooC++: the Z_0 branch's pooled layer4); "z0",
        "color", ...: the unit-norm embedding of that space; "concat" (LooC++ only): the n + 1
        pooled layer4 outputs side by side, the paper's LooC++ feature. Raises ``ValueError``
        for ``x`` that is not a batch of images [B, 3, H, W] as a view of ``forward``.
        """
        enc = self.encoder_q
        conv1 = enc.backbone.conv1
        check_images(x, "x", self.queue.device, conv1.in_channels, conv1.weight.dtype)
        if space == "backbone":
            return enc.backbone(x)
        if space == "concat" and self.plus_plus:
            return torch.cat(enc.pooled(x), dim=1)
        if space in self.spaces:
            i = self.spaces.index(space)
            pooled = enc.pooled(x)
            v = pooled[i] if self.plus_plus else pooled[0]
            return F.normalize(enc.heads[i](v), dim=1)
        raise ValueError(
            f"unknown feature space '{space}'; valid: {', '.join(self.feature_spaces)}"
        )

    @torch.no_grad()
    def spaces_from_concat(self, concat: Tensor) -> dict[str, Tensor]:
        """LooC++: ``backbone`` and ``z0`` of images whose ``concat`` features are given, without
        another pass over the images: the first block of ``concat`` is the Z_0 branch's pooled
        layer4, which is ``backbone``, and ``z0`` is its head's output (the kNN monitor logs both
        beside ``concat``). On the CPU, float32, as ``concat``; the heads' mode is the caller's."""
        enc = self.encoder_q
        v = concat[:, : enc.feature_dim].float()
        head = enc.heads[0]
        param = next(head.parameters())
        z0 = [
            F.normalize(head(part.to(param.device, param.dtype)), dim=1).float().cpu()
            for part in v.split(4096)
        ]
        return {"backbone": v, self.spaces[0]: torch.cat(z0) if z0 else v[:, :0]}

    def feature_dim(self, space: str) -> int:
        if space == "backbone":
            return self.encoder_q.feature_dim
        if space == "concat" and self.plus_plus:
            return self.encoder_q.feature_dim * len(self.spaces)
        if space in self.spaces:
            return self.cfg.model.dim
        raise ValueError(
            f"unknown feature space '{space}'; valid: {', '.join(self.feature_spaces)}"
        )


def build_looc(cfg: Config) -> LooC:
    """The LooC model of ``cfg`` (checked by ``validate`` in ``LooC``: the keys against each
    other, e.g. ``moco.symmetric``, as ``contrastlab config`` checks them)."""
    return LooC(cfg)
