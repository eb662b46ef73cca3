"""Results as JSON (for the HTML report and scripts) and as markdown tables (for people)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from contrastlab.atomic import write_text


def default_run_dir(checkpoint: str | os.PathLike) -> Path:
    """The run directory of a checkpoint: ``runs/<name>/`` for ``runs/<name>/checkpoints/x.pt``."""
    parent = Path(checkpoint).resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def result_path(
    checkpoint: str | os.PathLike,
    protocol: str,
    out: str | None = None,
    space: str = "backbone",
    dataset: str | None = None,
    variant: str | None = None,
    subset: str | None = None,
    selection: str | None = None,
) -> Path:
    """``--out FILE`` if given, else ``<run_dir>/eval/<protocol>.json`` (read by the HTML report);
    ``<protocol>-<variant>`` for a protocol's second variant (``linear-fast``: the fast mode;
    ``corruption-knn``: the kNN classifier; see :func:`variant_of`), ``<protocol>-<space>.json`` for a space other than the backbone, ``...-<dataset>.json``
    for a dataset other than the run's own (``--dataset``), and ``...-<checkpoint stem>.json``
    for any checkpoint other than a run's ``checkpoints/last.pt`` (``best.pt``, a snapshot, or
    converted encoders side by side in one folder), and ``...-sub<train>x<test>`` (``subset``,
    :func:`subset_tag`) before it for a result on subsets (``--max-train`` / ``--max-test``);
    ``<protocol>[-<variant>]-<selection>`` (:func:`selection_tag`) for a result that holds only
    some of its protocol's sub-results (``factors-texture.json``), so that no evaluation
    overwrites another's result."""
    if out:
        return Path(out)
    name = f"{protocol}-{variant}" if variant else protocol
    if selection:
        name += f"-{selection}"
    if space != "backbone":
        name += f"-{space}"
    if dataset:
        name += f"-{dataset}"
    if subset:
        name += f"-{subset}"
    source = Path(checkpoint).resolve()
    if not (source.name == "last.pt" and source.parent.name == "checkpoints"):
        name += f"-{checkpoint_stem(source.name)}"
    return default_run_dir(checkpoint) / "eval" / f"{name}.json"


# the protocols' variants that get a name of their own: (option of the result's setup, value)
# protocol: (the option that picks a variant, the values other than the default)
VARIANTS = {
    "linear": ("mode", ("fast",)),
    "corruption": ("classifier", ("knn",)),
    "fewshot": ("which", ("allway", "episodes")),  # the default, both, writes fewshot.json
}


def variant_of(protocol: str, setup: dict) -> str | None:
    """The name a result's variant adds to its file (``fast`` for ``eval linear --fast``, ``knn``
    for ``eval corruption --classifier knn``, ``allway`` or ``episodes`` for ``eval fewshot
    --which``), so that it does not replace the other variant's result; None for the default
    variant (``linear.json``: MoCo's SGD protocol; ``fewshot.json``: both few-shot parts)."""
    option, values = VARIANTS.get(protocol, (None, ()))
    value = setup.get(option) if option is not None else None
    return value if value in values else None


def _selections(protocol: str) -> dict[str, tuple]:
    """The options of ``protocol`` that choose which sub-results (or which task) its result
    holds, each with its default: factors, corruptions and severities, the K values of few-shot
    and the N of N-way episodes. Options that only tune how a figure is measured (k, T, epochs,
    C, trials, episodes, queries) are recorded in the result's ``setup`` and name no file."""
    if protocol == "factors":
        from contrastlab.eval.factors import FACTORS

        return {"factors": FACTORS}
    if protocol == "corruption":
        from contrastlab.eval.corruption import CORRUPTIONS

        return {"corruptions": CORRUPTIONS, "severities": (1, 2, 3, 4, 5)}
    if protocol == "fewshot":
        return {"shots": (5, 10), "ways": (5,), "episode_shots": (1, 5)}
    if protocol == "transfer":
        return {"shots": (5, 10)}
    return {}


# how an option's values read in a file name: the names themselves (factors-texture), or the
# option's name then its numbers (corruption-severities1+5, fewshot-ways10, fewshot-shots1+20)
_NAMED_BY_VALUES = ("factors", "corruptions")


def selection_tag(protocol: str, chosen: dict) -> str | None:
    """The part of a result's file name that says which of its protocol's sub-results it holds,
    from the options ``chosen`` (``{"factors": ["texture"]}`` -> ``texture``; ``{"corruptions":
    ["frost", "gaussian_noise"], "severities": [1, 5]}`` -> ``gaussian_noise+frost-severities1+5``;
    ``{"ways": 10}`` -> ``ways10``), values in their canonical order; None where every option is
    absent (None) or holds its default, the full result, which keeps the plain name. A partial
    evaluation thus never replaces the full one, nor another selection's."""
    parts = []
    for option, default in _selections(protocol).items():
        value = chosen.get(option)
        if value is None:
            continue
        values = set(value) if isinstance(value, (list, tuple)) else {value}
        if values == set(default):
            continue
        if option in _NAMED_BY_VALUES:  # in the protocol's own order; an unknown name last
            rank = {name: i for i, name in enumerate(default)}
            parts.append("+".join(sorted(values, key=lambda v: (rank.get(v, len(rank)), v))))
        else:
            parts.append(option.replace("_", "-") + "+".join(str(v) for v in sorted(values)))
    return "-".join(parts) or None


def subset_tag(max_train: int | None, max_test: int | None) -> str | None:
    """``sub200x100`` for ``--max-train 200 --max-test 100`` (``all`` for a split not limited:
    ``sub200xall``); None without either, the full sets, whose result keeps the plain name."""
    if max_train is None and max_test is None:
        return None
    return (
        f"sub{'all' if max_train is None else max_train}x{'all' if max_test is None else max_test}"
    )


def checkpoint_stem(file_name: str) -> str:
    """``moco_v2.pth.tar`` -> ``moco_v2``; ``r18.v2.pt`` -> ``r18.v2``."""
    for suffix in (".tar", ".pt", ".pth", ".ckpt", ".pkl"):
        file_name = file_name.removesuffix(suffix)
    return file_name


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null; tensors and numpy scalars as numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(result: dict, path: str | os.PathLike) -> Path:
    return write_text(Path(path), json.dumps(_clean(result), indent=2, allow_nan=False) + "\n")


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def chance_levels(result: dict) -> dict[str, float]:
    """The chance level (percent) of each headline metric that has one, by its ``summary`` key:
    a factor probe's ``details[<factor>].chance`` (the test split's most frequent class: shape
    10, colour 12.5, texture 25, rotation 25 on ``synthetic``), the rotation probe's
    ``details.chance`` for its ``top1``. The one rule for every table that shows these results
    (``eval factors`` / ``rotation``, ``eval all``, the HTML report)."""
    details = result.get("details")
    if not isinstance(details, dict):
        return {}
    out = {}
    for key in result.get("summary", {}):
        own = details.get(key)
        chance = own.get("chance") if isinstance(own, dict) else None
        if chance is None and key == "top1":
            chance = details.get("chance")
        if isinstance(chance, (int, float)) and not isinstance(chance, bool):
            out[key] = float(chance)
    return out


def with_chance(text: str, chance: float | None) -> str:
    """A table cell: ``41.25 (chance 10.00)``, or the figure alone without a chance level."""
    return text if chance is None else f"{text} (chance {fmt(chance)})"


def pm(mean: float, ci: float | None) -> str:
    """``mean ± ci`` for tables."""
    if ci is None or (isinstance(ci, float) and not math.isfinite(ci)):
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(ci)}"
