"""A supervised reference for a self-supervised run: can its encoder learn the labels in its budget?

The preset's encoder (backbone only) plus a linear classifier, trained with cross-entropy on the
training labels for the preset's own number of steps: the same images, the same batched views
(one view per image, the preset's augmentations), batch size, SGD, learning-rate schedule, weight
decay and bf16 setting. Then the preset's kNN monitor on the backbone (the same bank, queries,
k and temperature as ``contrastlab train``'s ``knn_top1``), and the classifier's own test accuracy.

This is the ceiling a self-supervised run of that preset could approach on the labels, in the
same time: if the supervised encoder learns the labels and the contrastive one does not, the
budget and the architecture are not what stops it.

    .venv/bin/python experiments/supervised_reference.py --config demo train.amp=true   # docs/results.md §6

Extra ``key=value`` arguments are config overrides, as for ``contrastlab train``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from contrastlab.config import load_config
from contrastlab.data import build_dataset
from contrastlab.data.datasets import WithTransform
from contrastlab.errors import UserError, one_line
from contrastlab.models.backbones import build_backbone
from contrastlab.train import eval_transform, knn_monitor_metrics, learning_rate
from contrastlab.views.recipes import BatchedViews, recipe_from_config


class SupervisedEncoder(nn.Module):
    """The backbone with a linear classifier; ``features`` as the methods offer it (kNN monitor)."""

    feature_spaces = ("backbone",)

    def __init__(self, cfg, num_classes: int):
        super().__init__()
        self.backbone, dim = build_backbone(cfg.model)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))

    def features(self, x: torch.Tensor, space: str = "backbone") -> torch.Tensor:
        return self.backbone(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo", help="preset name or YAML file")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args()  # key=value before and after --config
    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(cfg.seed)
    train, test = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    model = SupervisedEncoder(cfg, train.num_classes)
    recipe = recipe_from_config(cfg.augment, cfg.data.image_size, train.mean, train.std)
    views = BatchedViews(recipe, num_views=1)
    o = cfg.optim
    optimizer = torch.optim.SGD(
        model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
    )
    labels = torch.as_tensor(train.labels)
    steps_per_epoch = len(train) // o.batch_size
    if not steps_per_epoch:  # no full batch to train on
        raise UserError(
            f"optim.batch_size={o.batch_size} is larger than the {len(train)} training images; "
            f"give optim.batch_size={len(train)} or less"
        )
    order_gen, view_gen = torch.Generator(), torch.Generator()
    start = time.perf_counter()
    for epoch in range(o.epochs):
        model.train()
        order_gen.manual_seed(cfg.seed + epoch)
        view_gen.manual_seed(cfg.seed + epoch + 1)
        order = torch.randperm(len(train), generator=order_gen)
        total = 0.0
        for b in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, epoch + b / steps_per_epoch)
            index = order[b * o.batch_size : (b + 1) * o.batch_size]
            (x,) = views(train.images[index], view_gen)
            autocast = (
                torch.autocast("cpu", dtype=torch.bfloat16)
                if cfg.train.amp
                else contextlib.nullcontext()
            )
            with autocast:
                loss = F.cross_entropy(model(x).float(), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        line = f"epoch {epoch + 1}: loss {total / steps_per_epoch:.3f}"
        # every knn_every epochs and after the last, as the trainer's monitor measures
        if cfg.train.knn_every and (
            (epoch + 1) % cfg.train.knn_every == 0 or epoch + 1 == o.epochs
        ):
            knn = knn_monitor_metrics(model, cfg, train, test)["knn_top1"]
            line += f", kNN top-1 {knn:.2f}%"
        print(f"{line} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    view = WithTransform(test, eval_transform(cfg, train))  # the monitor's evaluation view
    test_x = torch.stack([view[i][0] for i in range(len(view))])
    with torch.no_grad():
        predicted = model(test_x).argmax(1)
    accuracy = 100.0 * (predicted == torch.as_tensor(test.labels)).float().mean().item()
    print(f"classifier test accuracy {accuracy:.2f}% on {len(test)} images")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # a config that does not load: one line, as `contrastlab train`
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
