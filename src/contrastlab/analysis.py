"""``contrastlab analyze``: the pos/neg score view of frozen encoders, side by side.

For a fixed, seeded set of N images of a dataset, every encoder (a contrastlab checkpoint, trained
here or converted with ``contrastlab convert``) embeds

* two augmented views of each image (the checkpoint's augmentation recipe, or ``--recipe``):
  the **positive** score is their cosine similarity;
* one view of each of K other images (the *bank*): the **negative** scores are the cosines of the
  first view with all K of them.

These are the scores the training loop records (Zhu et al., ICCV 2021, Sec. 3: pos/neg score
distributions), written in the same files (``docs/scores-format.md``: one epoch, one interval) so
``contrastlab scores`` reads them too. **Per-augmentation sensitivity** (LooC, Xiao et al., ICLR
2021, Sec. 3: what each augmentation-specific space should keep) is the positive score when the two
views differ in one augmentation only: colour, rotation, crop or texture; everything else
(the other parameters of the recipe) is shared by the two views, with rotation 0 and texture
strength 0 where they are not the one that differs. A score near 1 means the space is invariant to
that change, a low score that it keeps it apart.

View parameters come from LooC's parameter records (``data/looc_views.py``), drawn with a seed per
image and condition, so every encoder sees the same crops and colours (when their recipes agree),
whatever the batch size or device. ``make_views`` is the one place that makes views.

Layout of ``--out DIR``::

    analysis.json                      settings, and per encoder and space: pos / neg summaries and
                                       the sensitivity table
    encoders/<name>/scores/            the recipe scores in the training format (epoch 0)
    encoders/<name>/sensitivity.npz    per-image positive scores: one float32 [N] array per
                                       "<space>/<condition>" (condition: recipe, color, ...)
    encoders/<name>/config.yaml        the checkpoint's configuration, with augment.recipe the
                                       recipe of the views analyzed (``--recipe``); an encoder
                                       converted from another project has each setting its file
                                       does not record as "unknown (converted from <file>)"
    encoders/<name>/encoder.json       the encoder's label; written first, so that a rerun after
                                       a failure may replace what the failed run left
    figures/analysis-<space>-*.png     distributions, overlay with quantile bands, sensitivity
"""

from __future__ import annotations

import copy
import dataclasses
import json
import numbers
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor
from tqdm.auto import tqdm

from contrastlab.atomic import is_contrastlab_figure, save_figure, write_atomic, write_text
from contrastlab.checkpoint import require_file
from contrastlab.errors import UserError, as_list, as_path, plural
from contrastlab.eval.context import DEVICES
from contrastlab.eval.progress import Heartbeat, say

CONDITIONS = ("color", "rotation", "crop", "texture")
RECIPE = "recipe"
_CONDITION_CODE = {RECIPE: 0, **{c: i + 1 for i, c in enumerate(CONDITIONS)}, "bank": 9}
FORMAT = "contrastlab-analysis-v1"
ENCODER_FILE = "encoder.json"  # in each encoder's folder, written first: the folder is ours
RECIPES = ("checkpoint", "moco_v1", "moco_v2")
NEGATIVES = 2048  # K when --negatives is not given (fewer where the split has fewer images)
BINS = (10, 100_000)  # --bins: at least 10; at most scores.bins' top (bins 2e-5 wide)


# ----------------------------------------------------------------------------------------------
# Views: the one place that makes them (a batched views package can replace this function)
# ----------------------------------------------------------------------------------------------


def _neutral(record: dict) -> dict:
    """The record with no rotation and no texture change (shared by both views of a condition)."""
    if "rotation" in record:
        record["rotation"] = {"k": 0}
    if "texture" in record:
        record["texture"] = dict(record["texture"], alpha=0.0)
    return record


def _differing(maker, img: Tensor, base: dict, condition: str) -> dict:
    """A copy of ``base`` in which only ``condition`` is drawn anew (and differs from ``base``)."""
    from contrastlab.data.looc_views import params_equal

    other = copy.deepcopy(base)
    if condition == "rotation":  # one of the three other orientations
        other["rotation"] = {"k": (base["rotation"]["k"] + 1 + int(torch.randint(3, ()))) % 4}
        return other
    key = "crop" if condition == "crop" else condition
    for _ in range(100):
        fresh = maker.sample(img)[key]
        if condition == "texture":  # a new filter, of nonzero strength
            fresh["alpha"] = max(fresh["alpha"], 1e-3)
        if not params_equal(fresh, base[key]):
            other[key] = fresh
            return other
    raise RuntimeError(f"could not draw a {condition} different from the first view's")


def make_views(
    images: Sequence, maker, condition: str, seeds: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """Two views of each image, stacked: ``([N, 3, S, S], [N, 3, S, S])``, normalized.

    ``maker`` is a ``LoocViews`` (its ``sample`` / ``render``). ``condition`` ``"recipe"``: both
    records drawn independently (the training pair); ``"bank"``: the first view only (the second
    is the same tensor); ``color`` / ``rotation`` / ``crop`` / ``texture``: the second view copies
    the first's record except that augmentation. Image i's records are drawn from
    ``torch.manual_seed(seeds[i])`` (the global generator is restored afterwards).
    """
    from contrastlab.data.looc_views import as_tensor_image

    first, second = [], []
    with torch.random.fork_rng(devices=[]):
        for img, seed in zip(images, seeds):
            torch.manual_seed(int(seed))
            img = as_tensor_image(img)
            a = maker.sample(img)
            if condition == RECIPE:
                b = maker.sample(img)
            elif condition == "bank":
                b = None
            else:
                a = _neutral(a)
                b = _differing(maker, img, a, condition)
            first.append(maker.render(img, a))
            second.append(first[-1] if b is None else maker.render(img, b))
    return torch.stack(first), torch.stack(second)


def view_makers(cfg, image_size: int, mean, std, recipe: str = "checkpoint"):
    """(recipe views, single-augmentation views) for a checkpoint's config.

    The recipe views are the checkpoint's training pair (MoCo: its ``augment.recipe``; LooC: q and
    k0, every augmentation drawn anew); ``recipe`` other than "checkpoint" replaces the recipe.
    """
    from contrastlab.data.looc_views import ATOMIC, LoocViews

    aug = cfg.augment if recipe == "checkpoint" else dataclasses.replace(cfg.augment, recipe=recipe)
    if cfg.method == "looc":
        atomic = list(cfg.looc.augmentations)
    elif aug.recipe != "none":
        atomic = ["color"]  # colour is part of the recipe anyway: it adds nothing
    elif aug.rotation:
        atomic = ["rotation"]
    else:
        raise UserError(
            "the checkpoint's augment.recipe is none: there is no augmentation to make two "
            "views with; choose one with --recipe moco_v2"
        )
    return (
        LoocViews(atomic, image_size, mean, std, aug),
        LoocViews(ATOMIC, image_size, mean, std, aug),
    )


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Settings:
    """What fixes the analysis: the same settings give the same images and view parameters."""

    dataset: str | None = None
    data_path: str | None = None
    split: str = "train"
    images: int = 256  # N: images with two views each
    # K: bank images, the negatives of every query; None: NEGATIVES, or the most the split
    # leaves beside the N images where it has fewer (run_analysis says so)
    negatives: int | None = None
    spaces: tuple[str, ...] = ("backbone",)
    recipe: str = "checkpoint"
    seed: int = 0
    device: str = "auto"
    batch_size: int = 128
    bins: int = 200  # histogram bins over [-1, 1] of the scores (negative quantiles, figures)
    progress: bool = True
    skip_bad_images: bool = False  # --skip-bad-images (else the checkpoint's own setting)

    def __post_init__(self):
        # a string names spaces as --space does (comma-separated), never one per letter
        if isinstance(self.spaces, str):
            self.spaces = self.spaces.split(",")
        spaces = tuple(s.strip() for s in as_list(self.spaces, "spaces") if s.strip())
        if not spaces:
            raise UserError(f"spaces needs at least one space name, got {self.spaces!r}")
        self.spaces = spaces
        # bins of the scores' histograms over [-1, 1]; checked before any work
        integral = isinstance(self.bins, numbers.Integral) and not isinstance(self.bins, bool)
        if not integral or not BINS[0] <= self.bins <= BINS[1]:
            raise UserError(
                f"--bins must be a whole number from {BINS[0]} to {BINS[1]} (histogram bins over "
                f"[-1, 1]; 200, the default, are 0.01 wide), got {self.bins!r}"
            )
        self.bins = int(self.bins)


def _seed(settings: Settings, image: int, condition: str) -> int:
    return (settings.seed * 1_000_003 + image) * 16 + _CONDITION_CODE[condition]


def fitted_negatives(n_available: int, settings: Settings) -> int:
    """K: ``settings.negatives`` when given, else ``NEGATIVES`` or, where the split has fewer
    images, the most it leaves beside the N images (``NEGATIVES`` when none is left: refused)."""
    if settings.negatives is not None:
        return settings.negatives
    left = n_available - settings.images
    return min(NEGATIVES, left) if left >= 1 else NEGATIVES


def select_images(n_available: int, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, seeded indices of the N query images and the K bank images (disjoint)."""
    k = fitted_negatives(n_available, settings)
    need = settings.images + k
    if settings.images < 1 or k < 1:
        raise UserError("--images and --negatives must be at least 1")
    if need > n_available:
        n = settings.images
        fits = (
            [f"--negatives {n_available - n} or less with --images {n}"] if n < n_available else []
        )
        if k < n_available:
            fits.append(f"--images {n_available - k} or less with --negatives {k}")
        raise UserError(
            f"--images {n} + --negatives {k} = {need} images are needed but the {settings.split} "
            f"split has {n_available}; give "
            + (
                " or ".join(fits)
                if fits
                else f"--images N and --negatives K, N + K at most {n_available}"
            )
        )
    order = np.random.default_rng(settings.seed).permutation(n_available)
    return order[: settings.images], order[settings.images : need]


@torch.no_grad()
def _embed(model, x: Tensor, spaces, device: str) -> dict[str, Tensor]:
    x = x.to(device)
    return {s: F.normalize(model.features(x, s).float(), dim=1) for s in spaces}


def analyze_encoder(ctx, dataset, settings: Settings, label: str, out_dir: Path) -> dict:
    """Scores of one encoder (an ``EvalContext``); writes ``out_dir`` and returns its summary."""
    from contrastlab.config import ScoresConfig
    from contrastlab.scores import ScoreRecorder, score_stats

    for space in settings.spaces:
        if space not in getattr(ctx.model, "feature_spaces", ("backbone",)):
            raise UserError(
                f"{ctx.checkpoint}: feature space '{space}' does not exist for this model; "
                f"valid spaces: {', '.join(ctx.model.feature_spaces)}"
            )
    queries, bank = select_images(len(dataset), settings)
    mean, std = ctx.stats(dataset)
    recipe_views, single_views = view_makers(ctx.cfg, ctx.image_size, mean, std, settings.recipe)
    b = settings.batch_size
    n_batches = -(-len(queries) // b) + -(-len(bank) // b)
    bar = tqdm(
        total=n_batches,
        desc=f"analyze {label}",
        unit="batch",
        disable=None if settings.progress else True,
    )
    say(
        f"analyze {label}: {plural(len(queries), 'image')} x {1 + len(CONDITIONS)} view pairs "
        f"against {plural(len(bank), 'negative')}, spaces {', '.join(settings.spaces)}, "
        f"on {ctx.device}"
    )
    beat = Heartbeat(f"analyze {label}", n_batches, settings.progress)
    done = 0

    def advance(where: str) -> None:
        nonlocal done
        done += 1
        bar.update()
        beat.update(done, f"{where}, batch {done} of {n_batches}")

    def images(idx):
        return [dataset[int(i)][0] for i in idx]

    bank_feats = {s: [] for s in settings.spaces}
    for start in range(0, len(bank), b):
        idx = bank[start : start + b]
        seeds = [_seed(settings, i, "bank") for i in idx]
        x, _ = make_views(images(idx), recipe_views, "bank", seeds)
        for s, f in _embed(ctx.model, x, settings.spaces, ctx.device).items():
            bank_feats[s].append(f)
        advance("negatives")
    bank_feats = {s: torch.cat(v) for s, v in bank_feats.items()}

    scores_cfg = ScoresConfig(record=True, bins=settings.bins, low=-1.0, high=1.0)
    recorder = ScoreRecorder(out_dir, scores_cfg, log_every=1 << 30)
    pos = {f"{s}/{c}": [] for s in settings.spaces for c in (RECIPE, *CONDITIONS)}
    for step, start in enumerate(range(0, len(queries), b)):
        idx = queries[start : start + b]
        imgs = images(idx)
        stats = {}
        for condition in (RECIPE, *CONDITIONS):
            maker = recipe_views if condition == RECIPE else single_views
            seeds = [_seed(settings, i, condition) for i in idx]
            xa, xb = make_views(imgs, maker, condition, seeds)
            fa = _embed(ctx.model, xa, settings.spaces, ctx.device)
            fb = _embed(ctx.model, xb, settings.spaces, ctx.device)
            for s in settings.spaces:
                p = (fa[s] * fb[s]).sum(1)
                pos[f"{s}/{condition}"].append(p.cpu())
                if condition == RECIPE:
                    neg = fa[s] @ bank_feats[s].T
                    stats[(s, "raw")] = score_stats(p, neg, settings.bins, -1.0, 1.0)
        recorder.update(step, 0, stats)
        advance("view pairs")
    recorder.end_epoch(0)
    recorder.close()
    bar.close()

    pos = {k: torch.cat(v).numpy().astype(np.float32) for k, v in pos.items()}
    write_atomic(out_dir / "sensitivity.npz", lambda f: np.savez(f, **pos))
    import yaml

    from contrastlab.config import config_to_dict

    # the views analyzed, as `contrastlab scores` on this folder reads them: the checkpoint's
    # config with the recipe that made the views; a converted encoder's unknown settings marked
    # as such (checkpoint.shown_config), not shown as the defaults it holds
    recipe = views_recipe(ctx.cfg, settings.recipe)
    shown = copy.deepcopy(ctx.shown_config) if ctx.shown_config else config_to_dict(ctx.cfg)
    shown["augment"]["recipe"] = recipe
    write_text(out_dir / "config.yaml", yaml.safe_dump(shown, sort_keys=False))
    summary = {"label": label, "dir": out_dir.name, "recipe": recipe}
    if settings.recipe == "checkpoint" and getattr(ctx.model, "converted_from", None):
        # not a recipe the encoder was trained with: convert's choice for encoders of other projects
        summary["recipe_default"] = "convert"
    return {**summary, **_summary(out_dir, pos, settings.spaces)}


def views_recipe(cfg, recipe: str = "checkpoint") -> str:
    """The augmentation recipe of the views analyzed: ``--recipe``, or the checkpoint's own."""
    return cfg.augment.recipe if recipe == "checkpoint" else recipe


def _quantiles(values: np.ndarray) -> dict:
    v = values.astype(np.float64)
    q10, q50, q90 = np.quantile(v, [0.1, 0.5, 0.9])
    return {"mean": float(v.mean()), "q10": float(q10), "q50": float(q50), "q90": float(q90)}


def hist_quantiles(counts: np.ndarray, edges: np.ndarray, qs=(0.1, 0.5, 0.9)) -> list[float]:
    """Quantiles of histogram counts, linear within a bin (accurate to a bin width)."""
    cdf = np.concatenate([[0.0], np.cumsum(counts)]) / max(counts.sum(), 1)
    return [float(np.interp(q, cdf, edges)) for q in qs]


def _summary(enc_dir: Path, pos: dict[str, np.ndarray], spaces) -> dict:
    from contrastlab.scores import load_histograms, load_scores

    rec = load_scores(enc_dir, queries=True)
    hists = load_histograms(enc_dir)
    out = {}
    for s in spaces:
        q = rec.query(s, "raw")
        k = hists.meta["spaces"].index(s)
        neg_counts = hists.counts[0, k, 0, 1]
        n10, n50, n90 = hist_quantiles(neg_counts, hists.edges)
        centers = (hists.edges[:-1] + hists.edges[1:]) / 2
        out[s] = {
            "pos": _quantiles(q["pos"]),
            "neg": {
                "mean": float((neg_counts * centers).sum() / max(neg_counts.sum(), 1)),
                "q10": n10,
                "q50": n50,
                "q90": n90,
                "var_mean": float(q["neg_var"].astype(np.float64).mean()),
            },
            "sensitivity": {c: _quantiles(pos[f"{s}/{c}"]) for c in (RECIPE, *CONDITIONS)},
        }
    return {"spaces": out}


def _named(dataset) -> str:
    """ "cifar10 " for a figure's title; nothing when the encoders were analyzed on several."""
    return f"{dataset} " if isinstance(dataset, str) else ""


def _one_or_all(values: list):
    """The value when all are the same, else the list (one per encoder)."""
    return values[0] if len(set(values)) == 1 else values


def _dir_name(label: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "encoder"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def default_labels(
    checkpoints: Sequence[str], converted_from: Sequence[str | None] | None = None
) -> list[str]:
    """The run directory's name (``runs/<name>/checkpoints/x.pt``) or the file's stem; for an
    encoder converted from another project (``converted_from[i]``: its source format), the
    source, as eval labels it (``torchvision (converted)``)."""
    from contrastlab.eval.context import converted_label
    from contrastlab.eval.results import default_run_dir

    labels = []
    for c, source in zip(checkpoints, converted_from or [None] * len(checkpoints)):
        p = Path(c)
        if source:
            labels.append(converted_label(source))
        else:
            labels.append(default_run_dir(p).name if p.parent.name == "checkpoints" else p.stem)
    if len(set(labels)) < len(labels):  # same names: add the file name
        labels = [f"{lab} ({Path(c).name})" for lab, c in zip(labels, checkpoints)]
    return labels


def _distinct(checkpoints: list, labels: list | None):
    """The checkpoints (and labels) without one given twice (one warning line): the same
    checkpoint on the same images gives the same scores."""
    from contrastlab.viz.score_plots import distinct_runs

    return distinct_runs(checkpoints, labels, what="checkpoint", done="analyzed")


def run_analysis(
    checkpoints: Sequence[str],
    settings: Settings,
    out: str | Path,
    labels: Sequence[str] | None = None,
) -> dict:
    """Analyze every checkpoint on the same images; write ``out`` (see the module docstring)."""
    from contrastlab.checkpoint import read_checkpoint, refuse_missing_space
    from contrastlab.config import config_from_dict
    from contrastlab.data.datasets import build_dataset
    from contrastlab.eval.context import (
        EvalContext,
        evaluation_data,
        fill_unknown_data,
        shared_data_settings,
        unknown_data_keys,
    )

    checkpoints = as_list(checkpoints, "checkpoints", (str, Path))
    if labels is not None:
        labels = as_list(labels, "labels")
    if not checkpoints:
        raise UserError("give at least one checkpoint")
    if labels is not None and len(labels) != len(checkpoints):
        raise UserError(
            f"got {plural(len(labels), 'label')} for {plural(len(checkpoints), 'checkpoint')}"
        )
    checkpoints, labels = _distinct(checkpoints, labels)
    if settings.recipe not in RECIPES:
        raise UserError(f"unknown --recipe '{settings.recipe}'; valid: {', '.join(RECIPES)}")
    if settings.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {settings.batch_size}")
    if not 0 <= settings.seed < 2**32:  # as train's seed and eval --seed
        raise UserError(f"--seed must be in [0, 4294967295], got {settings.seed}")
    for c in checkpoints:  # every file first: no work is lost to a typo in the last one
        require_file(c)  # the same line as the other commands
    out = Path(out)
    # Every checkpoint's spaces and dataset before any encoder is loaded: a space missing from
    # the last checkpoint or a dataset too small for --images + --negatives loses no work.
    data_cfgs, states, sources, unknown = [], [], [], []
    for checkpoint in checkpoints:
        state = read_checkpoint(checkpoint, verify=False)
        # the training state analyzed (a converted encoder's: its source's, None if unknown)
        states.append({k: state.get(k) for k in ("epoch", "step")})
        sources.append((state.get("converted") or {}).get("format"))
        cfg = config_from_dict(state["config"])
        for space in settings.spaces:
            refuse_missing_space(checkpoint, cfg, state, space)
        data_cfgs.append(
            evaluation_data(
                checkpoint, cfg, settings.dataset, settings.data_path, settings.skip_bad_images
            )
        )
        unknown.append(unknown_data_keys(state))
        del state
    # an encoder converted from another project reads the images of the runs beside it
    data_like = shared_data_settings(zip(checkpoints, data_cfgs, unknown))
    data_cfgs = [fill_unknown_data(d, u, data_like) for d, u in zip(data_cfgs, unknown)]
    labels = list(labels) if labels is not None else default_labels(checkpoints, sources)
    datasets: dict = {}
    for data_cfg in data_cfgs:
        key = json.dumps(dataclasses.asdict(data_cfg), sort_keys=True)
        if key not in datasets:
            datasets[key] = build_dataset(data_cfg, settings.split, None)
            select_images(len(datasets[key]), settings)
    fitted = None
    if settings.negatives is None:  # one K for every encoder: what the smallest split allows
        smallest = min(len(d) for d in datasets.values())
        settings = dataclasses.replace(settings, negatives=fitted_negatives(smallest, settings))
        if settings.negatives < NEGATIVES:
            fitted = (
                f"analyze uses --negatives {settings.negatives}, the most that fit: the default "
                f"{NEGATIVES} and --images {settings.images} need more than the {smallest} "
                f"images of the {settings.split} split; give --negatives K to choose another"
            )
            say(fitted)
    encoders, taken = [], set()
    for checkpoint, label, state in zip(checkpoints, labels, states):
        ctx = EvalContext.from_checkpoint(
            checkpoint,
            dataset=settings.dataset,
            data_path=settings.data_path,
            device=settings.device,
            progress=settings.progress,
            skip_bad_images=settings.skip_bad_images,
            data_like=data_like,
        )
        key = json.dumps(dataclasses.asdict(ctx.data_cfg), sort_keys=True)
        enc_dir = out / "encoders" / _dir_name(label, taken)
        enc_dir.mkdir(parents=True, exist_ok=True)
        # marks the folder as this command's before anything else is written in it, so that a
        # rerun after a failure replaces what an unfinished run left (see _check_outputs)
        write_text(enc_dir / ENCODER_FILE, json.dumps({"format": FORMAT, "label": label}) + "\n")
        summary = analyze_encoder(ctx, datasets[key], settings, label, enc_dir)
        summary.update(
            checkpoint=str(checkpoint), **state, dataset=ctx.data_cfg.name, device=ctx.device
        )
        encoders.append(summary)
        del ctx
    result = {
        "format": FORMAT,
        "settings": {
            **dataclasses.asdict(settings),
            "spaces": list(settings.spaces),
            # the dataset analyzed, also when each checkpoint's own was used (no --dataset)
            "dataset": _one_or_all([d.name for d in data_cfgs]),
            "data_path": _one_or_all([d.path for d in data_cfgs]),
            # why K is below the default when --negatives was not given
            **({"negatives_fitted": fitted} if fitted else {}),
        },
        "conditions": [RECIPE, *CONDITIONS],
        "encoders": encoders,
    }
    from contrastlab.eval.results import write_json

    write_json(result, out / "analysis.json")
    return result


# ----------------------------------------------------------------------------------------------
# Reading back, tables and figures
# ----------------------------------------------------------------------------------------------


def _is_analysis(path: Path) -> bool:
    """``analysis.json`` written by an earlier ``contrastlab analyze``."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_analysis(out: str | Path) -> dict:
    out = as_path(out, "analysis folder")
    if out.is_file():  # analysis.json itself, or another file given for the folder
        raise UserError(
            f"{out} is a file; give the folder that contrastlab analyze wrote (it holds "
            f"analysis.json), e.g. {Path(out).parent}"
        )
    path = Path(out) / "analysis.json"
    if not path.is_file():
        raise UserError(f"{out} holds no analysis ({path} is missing); run contrastlab analyze")
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise UserError(f"{path} has format {data.get('format')!r}, expected {FORMAT}")
    return data


def encoder_recipe(result: dict, enc: dict) -> str | None:
    """The recipe of an encoder's views: recorded per encoder, else ``--recipe`` (None: the
    checkpoint's own, in an analysis.json that did not record which)."""
    if enc.get("recipe"):
        return enc["recipe"]
    recipe = result["settings"].get("recipe", "checkpoint")
    return None if recipe == "checkpoint" else recipe


def recipe_text(result: dict) -> str | None:
    """``recipe moco_v1`` when every encoder's views were made with one recipe, else None (the
    recipe then goes with each encoder: ``encoder_label``)."""
    recipes = {encoder_recipe(result, enc) for enc in result["encoders"]}
    if len(recipes) != 1:
        return None
    (recipe,) = recipes
    if recipe is None:
        return "each checkpoint's own recipe"
    own = result["settings"].get("recipe", "checkpoint") == "checkpoint"
    if own and any(enc.get("recipe_default") for enc in result["encoders"]):
        return f"recipe {recipe} (the checkpoints' own; convert's default for converted encoders)"
    return f"recipe {recipe}" + (" (the checkpoints' own)" if own else "")


def encoder_label(result: dict, enc: dict) -> str:
    """The encoder's label, with its recipe when the encoders' recipes differ (and, for an encoder
    converted from another project, that the recipe is ``contrastlab convert``'s default)."""
    if recipe_text(result) is not None:
        return enc["label"]
    default = ", convert's default" if enc.get("recipe_default") else ""
    return f"{enc['label']} [recipe {encoder_recipe(result, enc) or 'own'}{default}]"


def pos_header(result: dict) -> str:
    """``pos (recipe moco_v1)``: the column of the recipe pair's positive score."""
    recipes = {encoder_recipe(result, enc) for enc in result["encoders"]}
    if len(recipes) != 1 or None in recipes:
        return "pos (recipe)"
    return f"pos (recipe {recipes.pop()})"


def sensitivity_table(result: dict, space: str) -> str:
    """Markdown: one row per encoder; pos / neg of the recipe pair and pos per single change."""
    from contrastlab.eval.results import fmt, markdown_table

    header = ["encoder", pos_header(result), "neg mean", *(f"pos, only {c}" for c in CONDITIONS)]
    rows = []
    for enc in result["encoders"]:
        s = enc["spaces"].get(space)
        if s is None:
            continue
        sens = s["sensitivity"]
        rows.append(
            [encoder_label(result, enc), fmt(s["pos"]["mean"], 3), fmt(s["neg"]["mean"], 3)]
            + [fmt(sens[c]["mean"], 3) for c in CONDITIONS]
        )
    return markdown_table(header, rows)


def _runs(out: Path, result: dict):
    from contrastlab.viz.score_plots import load_run

    return [load_run(out / "encoders" / enc["dir"]) for enc in result["encoders"]]


def overlay_figure(runs, labels, result: dict, space: str) -> Figure:
    """All encoders in one figure: pos (solid) and neg (dashed) score densities, and their
    10-50-90 % quantile bands (pos: exact, over the N queries; neg: from the histogram of all
    N x K scores)."""
    from contrastlab.viz.score_plots import _NEG_COLOR, _POS_COLOR, _color, occupied_range

    fig = Figure(figsize=(13, 1.8 + 0.9 * max(3, len(runs))), layout="constrained")
    ax_d, ax_q = fig.subplots(1, 2, width_ratios=[1.4, 1])
    ticks, counts, edges = [], [], np.array([-1.0, 1.0])
    for i, (run, label, enc) in enumerate(zip(runs, labels, result["encoders"])):
        if run.hists is None or space not in run.spaces:
            continue
        h = run.hists
        k = h.meta["spaces"].index(space)
        counts.append(h.counts[0, k])
        edges = h.edges
        centers = (h.edges[:-1] + h.edges[1:]) / 2
        width = np.diff(h.edges)
        for kind, ls in ((0, "-"), (1, "--")):
            c = h.counts[0, k, 0, kind]
            density = c / max(c.sum(), 1) / width
            ax_d.plot(
                centers, density, color=_color(i), ls=ls, lw=1.5, label=label if kind == 0 else None
            )
        s = enc["spaces"][space]
        y = len(runs) - 1 - i
        for part, color, dy in (("pos", _POS_COLOR, 0.15), ("neg", _NEG_COLOR, -0.15)):
            q = s[part]
            ax_q.plot(
                [q["q10"], q["q90"]],
                [y + dy] * 2,
                color=color,
                lw=6,
                alpha=0.5,
                solid_capstyle="butt",
            )
            ax_q.plot([q["q50"]], [y + dy], "|", color="k", ms=12)
        ticks.append((y, label))
    shown = occupied_range(counts, edges)  # where the scores are, not all of [-1, 1]
    ax_d.set(xlabel="cosine score", ylabel="density", xlim=shown)
    ax_d.set_title("score distributions (solid: pos, dashed: neg)", fontsize=10)
    ax_d.grid(alpha=0.3)
    if ticks:
        ax_d.legend(fontsize=8, loc="upper left", frameon=False)
        ax_q.set_yticks([t[0] for t in ticks], [t[1] for t in ticks], fontsize=8)
    ax_q.set(xlabel="cosine score", xlim=shown, ylim=(-0.7, len(runs) - 0.3))
    ax_q.set_title("10-90 % bands, | = median (red: pos, blue: neg)", fontsize=10)
    ax_q.grid(axis="x", alpha=0.3)
    st = result["settings"]
    fig.suptitle(
        f"frozen encoders in space '{space}': {plural(st['images'], 'image')} x 2 views "
        f"({_views(result)}), {plural(st['negatives'], 'negative')} ({_named(st.get('dataset'))}"
        f"{st['split']} split, seed {st['seed']})",
        fontsize=10,
    )
    return fig


def _views(result: dict) -> str:
    """What made the views, for a figure's title."""
    return recipe_text(result) or "each encoder's recipe as labelled"


def sensitivity_figure(labels, result: dict, space: str) -> Figure:
    """Mean positive score (10-90 % bars) per condition: the recipe pair, then one changed
    augmentation at a time; one colour per encoder."""
    from contrastlab.viz.score_plots import _color

    conds = [RECIPE, *CONDITIONS]
    fig = Figure(figsize=(9, 4.6), layout="constrained")
    ax = fig.subplots()
    n = len(result["encoders"])
    for i, (enc, label) in enumerate(zip(result["encoders"], labels)):
        s = enc["spaces"].get(space)
        if s is None:
            continue
        x = np.arange(len(conds)) + (i - (n - 1) / 2) * 0.8 / max(n, 1)
        m = np.array([s["sensitivity"][c]["mean"] for c in conds])
        lo = np.array([s["sensitivity"][c]["q10"] for c in conds])
        hi = np.array([s["sensitivity"][c]["q90"] for c in conds])
        ax.errorbar(x, m, yerr=[m - lo, hi - m], fmt="o", color=_color(i), capsize=3, label=label)
    ax.set_xticks(
        np.arange(len(conds)),
        [f"recipe pair\n({_views(result)})", *(f"only {c}" for c in CONDITIONS)],
    )
    ax.set_ylabel("positive score (cosine)")
    ax.grid(axis="y", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    fig.legend(
        handles, names, fontsize=8, frameon=False, loc="outside lower center", ncol=min(n, 3)
    )
    ax.set_title(
        f"space '{space}': positive score when the two views differ only in one augmentation\n"
        "(high = invariant to it; low = keeps it apart); dot: mean, bar: 10-90 % of images",
        fontsize=10,
    )
    return fig


def analysis_figures(out: str | Path) -> list[tuple[str, Figure]]:
    """(file stem, figure) for every space of an analysis folder."""
    from contrastlab.viz.score_plots import distributions_figure

    out = Path(out)
    result = load_analysis(out)
    runs = _runs(out, result)
    labels = [encoder_label(result, enc) for enc in result["encoders"]]
    figures = []
    for space in result["settings"]["spaces"]:
        stems = _figure_stems(space)
        distributions = distributions_figure(
            runs, space, labels, ridge_label=lambda e: "all images"
        )
        distributions.suptitle(
            f"score distributions in space '{space}' of two views per image "
            f"({_views(result)}; each curve scaled to its peak)",
            fontsize=10,
        )
        figures.append((stems["distributions"], distributions))
        figures.append((stems["overlay"], overlay_figure(runs, labels, result, space)))
        figures.append((stems["sensitivity"], sensitivity_figure(labels, result, space)))
    return figures


def _figure_stems(space: str) -> dict[str, str]:
    """The file stem of each figure ``analysis_figures`` draws for ``space``."""
    from contrastlab.viz.score_plots import file_stem

    kinds = ("distributions", "overlay", "sensitivity")
    return {kind: f"analysis-{file_stem(space)}-{kind}" for kind in kinds}


def _check_outputs(
    out: Path, checkpoints: Sequence[str], labels, spaces: Sequence[str], overwrite: bool
) -> None:
    """Refuse, before any work, to replace a file in ``out`` that an earlier analysis did not
    write: a figure not marked as contrastlab's, or a file in an encoder's folder of a folder
    that is not an earlier analysis (no ``analysis.json`` of ours)."""
    from contrastlab.outputs import check_output

    for space in spaces:
        for stem in _figure_stems(space).values():
            check_output(
                out / "figures" / f"{stem}.png",
                replaceable=is_contrastlab_figure,
                what="a figure",
                overwrite=overwrite,
            )
    earlier = _is_analysis(out / "analysis.json")
    if labels is None or len(labels) != len(checkpoints):
        labels = default_labels(checkpoints)
    taken: set[str] = set()
    for label in labels:
        folder = out / "encoders" / _dir_name(label, taken)
        if folder.exists() and not folder.is_dir():
            raise UserError(f"cannot write {folder}: it is a file, not a folder")
        ours = earlier or _is_analysis(folder / ENCODER_FILE)  # also an unfinished run's
        found = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
        for path in found:
            check_output(
                path,
                replaceable=lambda _p, ours=ours: ours,
                what="an analysis file",
                overwrite=overwrite,
            )


def write_figures(out: str | Path, dpi: int = 110) -> list[Path]:
    folder = Path(out) / "figures"
    paths = []
    for stem, fig in analysis_figures(out):
        path = folder / f"{stem}.png"
        save_figure(fig, path, dpi=dpi)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def register(subparsers) -> None:
    from contrastlab.eval.commands import _HelpFormatter, comma_list

    p = subparsers.add_parser(
        "analyze",
        formatter_class=_HelpFormatter,  # every option's default in its help
        help="pos/neg scores and per-augmentation sensitivity of frozen encoders",
        description="Score a fixed, seeded set of images with one or more frozen encoders: "
        "positive scores of two augmented views, negative scores against a bank of K other "
        "images, and the positive score when the views differ in one augmentation only. "
        "See docs/analysis.md.",
    )
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="contrastlab checkpoints")
    p.add_argument(
        "--dataset",
        default=None,
        help="synthetic, cifar10, cifar100, stl10, imagefolder (default: the first "
        "checkpoint's own)",
    )
    p.add_argument(
        "--data-path",
        default=None,
        metavar="DIR",
        help="root folder of --dataset (none for synthetic, which is generated)",
    )
    p.add_argument(
        "--split", choices=("train", "test"), default="train", help="split the images come from"
    )
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out unreadable images of an image folder instead of stopping (default: each "
        "checkpoint's data.skip_bad_images)",
    )
    p.add_argument(
        "--space",
        type=comma_list(str, "space names"),
        default="backbone",
        help="feature space(s), comma-separated: backbone (default), z (MoCo's projection), "
        "LooC's z0, color, rotation, texture",
    )
    p.add_argument("--images", type=int, default=256, metavar="N", help="images with two views")
    p.add_argument(
        "--negatives",
        type=int,
        default=None,
        metavar="K",
        help=f"bank images (negatives) (default: {NEGATIVES}, or where the split has fewer images "
        "the most it leaves beside --images, said on stderr)",
    )
    p.add_argument(
        "--bins",
        type=int,
        default=200,
        metavar="N",
        help=f"histogram bins over [-1, 1] of the scores, from {BINS[0]} to {BINS[1]}: the "
        "negative scores' quantiles are accurate to a bin (2 / N) and the figures draw them",
    )
    p.add_argument(
        "--recipe",
        choices=RECIPES,
        default="checkpoint",
        help="augmentation recipe of the views (default: each checkpoint's own)",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="one name per checkpoint for tables and figures (default: the run's name, the "
        "source of a converted encoder, e.g. 'torchvision (converted)', or the file name of a "
        "checkpoint outside a run)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the images and their views")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto (default), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: RUN/analysis for one checkpoint of a run, else ./analysis)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files in the output folder (analysis.json, figures, encoder folders) "
        "that an earlier analysis did not write",
    )
    p.set_defaults(func=_cmd_analyze, setting_flags=ANALYZE_FLAGS)


# The config settings that analyze's flags stand for, as its error messages name them
# (contrastlab.errors.setting); a setting not listed has no flag in analyze.
ANALYZE_FLAGS = {
    "data.name": "--dataset",
    "data.path": "--data-path",
    "data.skip_bad_images": "--skip-bad-images",
}


def _cmd_analyze(args) -> int:
    from contrastlab.eval.results import default_run_dir

    spaces = tuple(args.space)  # one or more, none empty or repeated (comma_list)
    settings = Settings(
        dataset=args.dataset,
        data_path=args.data_path,
        split=args.split,
        images=args.images,
        negatives=args.negatives,
        spaces=spaces,
        recipe=args.recipe,
        seed=args.seed,
        device=args.device,
        batch_size=args.batch_size,
        bins=args.bins,
        progress=not args.no_progress,
        skip_bad_images=args.skip_bad_images,
    )
    from contrastlab.outputs import check_output, remove_earlier

    out = args.out
    if out is None:
        one = len(args.checkpoints) == 1 and Path(args.checkpoints[0]).parent.name == "checkpoints"
        out = default_run_dir(args.checkpoints[0]) / "analysis" if one else Path("analysis")
    check_output(out, folder=True, what="the analysis")
    # analysis.json marks the folder as an analysis: a file of that name that is something
    # else (the user's own) is not replaced without --overwrite
    check_output(
        Path(out) / "analysis.json",
        replaceable=_is_analysis,
        what="an analysis",
        overwrite=args.overwrite,
    )
    checkpoints, labels = args.checkpoints, args.labels
    if labels is not None and len(labels) != len(checkpoints):
        raise UserError(
            f"got {plural(len(labels), 'label')} for {plural(len(checkpoints), 'checkpoint')}"
        )
    checkpoints, labels = _distinct(checkpoints, labels)
    _check_outputs(Path(out), checkpoints, labels, spaces, args.overwrite)
    result = run_analysis(checkpoints, settings, out, labels)
    views = recipe_text(result) or "each encoder's recipe as labelled"
    for space in spaces:
        print(f"\nspace '{space}' (mean cosine scores; views: {views})\n")
        print(sensitivity_table(result, space))
    print()
    written = write_figures(out)
    for path in written:
        print(path)
    stale = earlier_outputs(Path(out), written, [enc["dir"] for enc in result["encoders"]])
    remove_earlier(Path(out), stale, "contrastlab analyze")
    print(f"analysis written to {Path(out) / 'analysis.json'}")
    return 0


_ANALYSIS_FIGURE = re.compile(r"analysis-.+-(distributions|overlay|sensitivity)\.png")
# what analyze writes in an encoder's folder (besides its scores/ folder)
_ENCODER_FILES = (ENCODER_FILE, "config.yaml", "sensitivity.npz")


def earlier_outputs(out: Path, figures: list[Path], dirs: list[str]) -> list[Path]:
    """The files in ``out`` that an earlier analysis wrote and this one (its ``figures``, its
    encoders' folders ``dirs``) did not: figures named as analyze names them and marked as
    contrastlab's, and in an encoder's folder that an analysis marked as its own
    (``ENCODER_FILE``) the files analyze writes there and the figures ``contrastlab scores``
    drew of it. Nothing else (a user's own file) is ever listed."""
    keep = {p.name for p in figures}
    stale = []
    if (out / "figures").is_dir():
        stale += [
            p
            for p in (out / "figures").iterdir()
            if p.name not in keep
            and _ANALYSIS_FIGURE.fullmatch(p.name)
            and p.is_file()
            and is_contrastlab_figure(p)
        ]
    if (out / "encoders").is_dir():
        for folder in (out / "encoders").iterdir():
            if folder.name in dirs or not _is_analysis(folder / ENCODER_FILE):
                continue
            stale += [folder / name for name in _ENCODER_FILES if (folder / name).is_file()]
            stale += [p for p in (folder / "scores").rglob("*") if p.is_file()]
            stale += [p for p in (folder / "figures").glob("*.png") if is_contrastlab_figure(p)]
    return stale
