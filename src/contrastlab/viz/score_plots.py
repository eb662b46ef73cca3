"""Figures of the recorded pos/neg scores, for one run or several overlaid.

(a) ``curves_figure``: pos score, neg mean and neg variance against the step, with the 10-90 %
    band across the queries of each log interval, raw and (when it differs) effective;
(b) ``distributions_figure``: the full pos and neg score distributions, one ridge per epoch;
(c) several runs in one figure, each labelled with what sets it apart and its final kNN accuracy.
Figures are plain ``matplotlib.figure.Figure`` objects (Agg canvas, no pyplot state), so that the
HTML report can embed the same drawings.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from contrastlab.atomic import is_contrastlab_figure, save_figure
from contrastlab.config import yaml_problem
from contrastlab.errors import UserError, as_list, as_path, plural
from contrastlab.runstate import (  # noqa: F401 - re-exported
    file_as_run_dir,
    flatten,
    read_metrics,
    setting_text,
)
from contrastlab.scores import (
    STAGES,
    ScoreHistograms,
    ScoreRecord,
    load_histograms,
    load_scores,
)

# Config keys that never explain a difference between runs' scores: where a run is written and
# how it is shown, resumed and checkpointed (a resume continues exactly), and the kNN monitor,
# which reads the weights without changing them or the random streams (every epoch reseeds).
# train.log_every stays: it sets the log interval that each point and band of the curves spans.
_IGNORED_KEYS = {
    "name",
    "out_dir",
    "train.resume",
    "train.overwrite",
    "train.progress",
    "train.checkpoint_every",
    "train.checkpoint_minutes",
    "train.keep_every",
    "train.knn_every",
    "train.knn_k",
    "train.knn_temperature",
    "train.knn_space",  # named with the accuracy instead: "kNN (z) 11.0%"
    "train.knn_val_fraction",
    "scores.record",  # every run drawn recorded its scores
    "data.num_workers",
    "train.device",  # what it meant is named as train.amp and processes
    "data.path",
    "train.keep_freed_memory",  # memory management only: same numbers either way
}
# (column, panel title, y-axis label): every score is the cosine similarity of a query with a key
# in the figure's feature space (its embeddings L2-normalized), before any feature transformation
# (raw) or as the loss used it (effective)
_QUANTITIES = (
    ("pos", "pos score: cos(query, its positive key)", "cosine similarity"),
    ("neg_mean", "neg score: mean of cos(query, negatives)", "cosine similarity"),
    ("neg_var", "neg score: variance of cos(query, negatives)", "variance of cosine similarity"),
)
_MAX_RIDGES = 10
# Characters per line of a ridge panel's title (a 4.6-inch panel at 9 pt): a run's label can be
# long (it names every setting that differs), and unwrapped titles run into their neighbours.
_TITLE_CHARS = 60
_POS_COLOR, _NEG_COLOR = "#d9534f", "#3a6ea5"


@dataclass
class Run:
    """What the plots need from one run directory; every part may be missing."""

    path: Path
    name: str
    config: dict = field(default_factory=dict)  # flattened: "moco.momentum" -> 0.99
    metrics: list[dict] = field(default_factory=list)
    record: ScoreRecord | None = None  # interval table only
    hists: ScoreHistograms | None = None

    @property
    def knn(self) -> float | None:
        """The last kNN top-1 accuracy logged, if any."""
        event = self.knn_event
        return float(event["knn_top1"]) if event is not None else None

    @property
    def knn_event(self) -> dict | None:
        """The last ``knn`` line of metrics.jsonl (epoch, space, queries, top-1), if any."""
        for line in reversed(self.metrics):
            value = line.get("knn_top1")
            if line.get("event") == "knn" and isinstance(value, (int, float)):
                return line
        return None

    @property
    def spaces(self) -> list[str]:
        return self.record.spaces if self.record is not None else []


def check_run_dir(run_dir: Path | str) -> Path:
    """``run_dir`` as a Path; a file (a checkpoint, config.yaml) or a missing folder given where a
    run directory belongs is the user's error, said in one line with what to give instead."""
    path = as_path(run_dir, "run_dir")
    if message := file_as_run_dir(path):
        raise UserError(message)
    if not path.is_dir():
        raise UserError(f"run directory {path} does not exist")
    if (path / "meta.json").is_file() and not (path / "scores" / "meta.json").is_file():
        raise UserError(
            f"{path} is a run's scores folder; give the run directory (it also holds the run's "
            f"config.yaml and metrics.jsonl), e.g. {path.parent}"
        )
    if (path / "analysis.json").is_file() and (path / "encoders").is_dir():
        names = sorted(p.name for p in (path / "encoders").iterdir() if p.is_dir())
        example = path / "encoders" / (names[0] if names else "NAME")
        raise UserError(
            f"{path} is a contrastlab analyze folder; give the folder of one of its encoders, "
            f"e.g. {example}"
        )
    return path


def _encoder_label(path: Path) -> str | None:
    """The label ``contrastlab analyze`` gave the encoder of one of its encoder folders
    (``encoder.json``; a converted encoder's is its source, ``torchvision (converted)``)."""
    try:
        label = json.loads((path / "encoder.json").read_text(encoding="utf-8")).get("label")
    except (OSError, ValueError, AttributeError):
        return None
    return label if isinstance(label, str) and label else None


def load_run(run_dir: Path | str, scores: bool = True) -> Run:
    """Read a run directory; a missing directory is the user's error, missing parts are not."""
    path = check_run_dir(run_dir)
    run = Run(path=path, name=_encoder_label(path) or path.resolve().name)
    cfg_path = path / "config.yaml"
    if cfg_path.is_file():
        try:
            cfg = yaml.safe_load(cfg_path.read_text())
        except yaml.YAMLError as e:
            raise UserError(f"{cfg_path} is not valid YAML: {yaml_problem(e)}") from None
        run.config = flatten(cfg) if isinstance(cfg, dict) else {}
    run.metrics = read_metrics(path / "metrics.jsonl")
    if scores and (path / "scores" / "meta.json").is_file():
        run.record = load_scores(path, queries=False)
        run.hists = load_histograms(path)
    return run


# The settings that define the method come first in a label, so that a label cut after four
# settings still tells LooC++ from LooC and FT from plain MoCo.
_METHOD_KEYS = ("method", "looc.", "ft.", "moco.")


def _label_order(key: str) -> tuple[int, str]:
    rank = next((i for i, p in enumerate(_METHOD_KEYS) if key.startswith(p)), len(_METHOD_KEYS))
    return rank, key


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *heads, last = key.split(".")
        node = out
        for head in heads:
            node = node.setdefault(head, {})
            if not isinstance(node, dict):
                break
        else:
            node[last] = value
    return out


def inapplicable_keys(config: dict) -> set[str]:
    """The keys of a flattened run config that have no effect on that run: ``looc.*`` on a MoCo
    run, the Feature Transformation's settings when it is off (or that side of it is), and what
    ``contrastlab.config.unused_settings`` names for a config it can rebuild."""
    method = config.get("method", "moco")
    ft_pos, ft_neg = config.get("ft.pos", "none"), config.get("ft.neg", "none")
    out = set()
    for key in config:
        head = key.partition(".")[0]
        if head == "looc" and method != "looc":
            out.add(key)
        elif head == "ft" and key not in ("ft.pos", "ft.neg"):
            side = "pos" if key.endswith("_pos") else "neg" if key.endswith("_neg") else None
            off = (ft_pos == ft_neg == "none") or (
                side is not None and config.get(f"ft.{side}", "none") == "none"
            )
            if off or (key == "ft.renormalize_negatives" and not config.get("ft.renormalize")):
                out.add(key)
    try:
        from contrastlab.config import config_from_dict, unused_settings

        cfg = config_from_dict(_unflatten(config))
        for line in unused_settings(cfg, set(config)):
            if " has no effect" in line:
                out.add(line.partition("=")[0])
    except Exception:  # an older or foreign config: the rules above only
        pass
    return out


def recorded_values(run: Run, key: str) -> list:
    """The values of ``key`` in the run's ``start`` events (one per part of a resumed run), in
    order and without repeats."""
    metrics = getattr(run, "metrics", [])  # a Run, or any object with its config
    values = [e[key] for e in metrics if e.get("event") == "start" and key in e]
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def world_sizes(run: Run) -> tuple[list[int], bool]:
    """The numbers of processes that trained the run, in order without repeats (``[2, 1]``: a
    resume changed it), from the start and resume events of metrics.jsonl, else the score
    record; and whether they are the last part's only (an older record keeps no more). Empty
    when nothing says (an older run without scores)."""
    seen = recorded_values(run, "world_size")
    metrics = getattr(run, "metrics", [])
    for e in metrics:  # a resume names the change even where no start event says it
        changed = e.get("changed") if e.get("event") == "resume" else None
        if isinstance(changed, dict) and isinstance(changed.get("world_size"), list):
            old, new = changed["world_size"]
            if not seen:
                seen = [old, new]
    if not seen and getattr(run, "record", None) is not None:
        meta = run.record.meta
        worlds = [w for w in meta.get("world_sizes") or [] if w is not None]
        seen = [w for i, w in enumerate(worlds) if i == 0 or w != worlds[i - 1]]
        if not seen and meta.get("world_size"):
            # an older record keeps the world size of the run's last part only
            resumed = any(e.get("event") == "resume" for e in metrics)
            return [meta["world_size"]], resumed
    return seen, False


def processes(run: Run) -> str | None:
    """The number of processes that trained the run: ``"2"``, or ``"2→1"`` when a resume changed
    it, ``"2 (last part)"`` where only the last part's is known (``world_sizes``); None when
    nothing says."""
    seen, last_part = world_sizes(run)
    if not seen:
        return None
    return "→".join(str(w) for w in seen) + (" (last part)" if last_part else "")


def default_config() -> dict:
    """The flattened default config (``Config()``): what a run changed from it is the user's
    choice; empty if it cannot be built."""
    try:
        from contrastlab.config import Config, config_to_dict

        return flatten(config_to_dict(Config()))
    except Exception:  # an older or foreign installation: nothing is known as a default
        return {}


def null_rules(config: dict) -> dict[str, str]:
    """``config.effective_defaults`` of a flattened config: what its null keys come to and why
    (``augment.hue`` -> "= 0.1: the recipe's hue jitter"); empty for a config that cannot be
    rebuilt (an older or foreign one)."""
    try:
        from contrastlab.config import config_from_dict, effective_defaults

        return effective_defaults(config_from_dict(_unflatten(config)))
    except Exception:  # an older or foreign config: as written
        return {}


def _resolved_by_rule(config: dict) -> dict[str, tuple[object, str]]:
    """The null keys of a flattened config that ``null_rules`` gives one value, ``{key: (value,
    why)}`` (``augment.hue`` -> ``(0.1, "the recipe's hue jitter")``, ``ft.granularity_pos`` ->
    ``("step", "ft.granularity")``); a rule without a single value (``augment.hue`` without
    colour jitter: "no colour jitter in these views") is left out."""
    out = {}
    for key, text in null_rules(config).items():
        found = re.match(r"= ([^:; ]+)(?:: (.*)|$)", text)
        if found and config.get(key, "") is None:
            out[key] = (yaml.safe_load(found.group(1)), found.group(2) or "")
    return out


def joined_values(values: list) -> object:
    """One recorded value, or the values of a run's parts joined by arrows ("true→false")."""
    return values[0] if len(values) == 1 else "→".join(setting_text(v) for v in values)


def resolved_settings(run: Run) -> dict[str, tuple[object, str]]:
    """The run's settings whose written value left the choice to contrastlab, with what they came
    to for this run and a note on how: ``{key: (value, note)}``. ``train.device=auto`` ->
    ``("cuda", "auto")`` and ``train.amp=null`` -> ``(True, "null: true on CUDA, false on the
    CPU")``, as the run's ``start`` events in metrics.jsonl recorded them (else ``train.amp``
    from a ``train.device`` of cpu or cuda); every other null key as
    ``config.effective_defaults`` resolves it (``augment.hue`` -> ``(0.1, "null: the recipe's
    hue jitter")``). The report's configuration table and the figures' labels show these
    values, so that the two agree."""
    config = run.config
    out = {
        k: (v, f"null: {why}" if why else "null")
        for k, (v, why) in _resolved_by_rule(config).items()
    }
    devices = recorded_values(run, "device")
    if config.get("train.device") == "auto" and devices:
        out["train.device"] = (joined_values(devices), "auto")
    if "train.amp" in config and config["train.amp"] is None:
        amp, device = recorded_values(run, "amp"), config.get("train.device")
        if not amp and device in ("cpu", "cuda"):
            amp = [device == "cuda"]
        if amp:
            out["train.amp"] = (joined_values(amp), "null: true on CUDA, false on the CPU")
    return out


def label_settings(run: Run) -> dict:
    """The run's settings as its label names them: the flattened config with each key that left
    the choice to contrastlab as what it came to for this run (``resolved_settings``), and
    ``processes`` (world size, "2→1" when a resume changed it)."""
    config = dict(run.config)
    config.update({k: value for k, (value, _) in resolved_settings(run).items()})
    procs = processes(run)
    if procs is not None:
        config["processes"] = procs
    return config


# The settings a null key's value follows (``config.effective_defaults``' rules)
_FOLLOWS = {
    "augment.blur": ("augment.recipe", "data.image_size"),
    "augment.hue": ("augment.recipe", "method", "looc.augmentations"),
    "augment.grayscale_p": ("augment.recipe", "method", "looc.augmentations"),
    "ft.granularity_pos": ("ft.granularity",),
    "ft.granularity_neg": ("ft.granularity",),
    "data.in_memory": ("data.image_size",),
}


def _derived_keys(run: Run, differing: list[str] | tuple[str, ...] = ()) -> set[str]:
    """Keys whose value in this run follows from other settings (null, resolved by a rule:
    ``ft.granularity_pos`` follows ``ft.granularity``) that differ between the runs
    (``differing``): the label names those settings instead, so these are no entry of it. A
    null key whose sources are the same in every run stays, as its resolved value: it sets the
    run apart from one where the user chose another value, and matches one where the user
    wrote the same. ``train.amp`` is never among them: it stands for the device, which labels
    do not name."""
    return {
        k
        for k in _resolved_by_rule(run.config)
        if k != "train.amp" and any(s in differing for s in _FOLLOWS.get(k, ()))
    }


_LABEL_ENTRIES = 4  # settings named in a label at most; "…" says there are more


def _differing_keys(shown: list[dict], skip: list[set[str]]) -> list[str]:
    """The keys whose value (as a label spells it) differs between the runs, among those where
    it has an effect (``skip``: a run's keys without one)."""
    from contrastlab.checkpoint import is_unknown  # a converted encoder's: sets no run apart

    keys = sorted({k for c in shown for k in c} - _IGNORED_KEYS, key=_label_order)
    if len(shown) < 2:
        return []
    return [
        k
        for k in keys
        if len(
            {
                setting_text(c.get(k))
                for c, no in zip(shown, skip)
                if k not in no and not is_unknown(c.get(k))
            }
        )
        > 1
    ]


def run_labels(runs: list[Run], labels: list[str] | None = None) -> list[str]:
    """Given labels, or: run name, the config values that differ between runs, final kNN top-1.

    Values are compared as they came to for each run (``label_settings``: a null
    ``ft.granularity_pos`` is the run's ``ft.granularity``). A setting is named in a run's label
    only where it has an effect on the run (``inapplicable_keys``: ``looc.augmentations`` never
    sets a MoCo run apart) and is not derived from another one there (``_derived_keys``), so each
    entry is a setting the user chose; those the user changed from the default come first, then
    the method's (``_label_order``), at most ``_LABEL_ENTRIES``."""
    if labels:
        labels = as_list(labels, "labels")
        if len(labels) != len(runs):
            raise UserError(
                f"got {plural(len(labels), 'label')} for {plural(len(runs), 'run')}; give one "
                "per run"
            )
        return list(labels)
    from contrastlab.checkpoint import is_unknown

    shown = [label_settings(r) for r in runs]
    skip = [inapplicable_keys(r.config) for r in runs]
    differing = _differing_keys(shown, skip)
    defaults = default_config()
    out = []
    for run, config, no in zip(runs, shown, skip):
        derived = _derived_keys(run, differing)
        mine = [
            k
            for k in differing
            if k not in no and k not in derived and not is_unknown(config.get(k))
        ]
        # the user's own choices first: a cut label keeps them
        mine.sort(key=lambda k: k not in defaults or run.config.get(k) == defaults[k])
        parts = [f"{k}={setting_text(config.get(k))}" for k in mine[:_LABEL_ENTRIES]]
        if len(mine) > _LABEL_ENTRIES:
            parts.append("…")
        label = run.name + (f" ({', '.join(parts)})" if parts else "")
        knn = knn_text(getattr(run, "knn_event", None))
        if knn is not None:
            label += f", {knn}"
        out.append(label)
    return out


def knn_text(event: dict | None) -> str | None:
    """``kNN (z) 11.0%``: the last kNN top-1 of a run with the space it was measured in."""
    if event is None:
        return None
    space = f" ({event['knn_space']})" if event.get("knn_space") else ""
    return f"kNN{space} {float(event['knn_top1']):.1f}%"


def steps_per_epoch(run: Run) -> float | None:
    """The run's steps per epoch: the step at the end of its first epoch over that epoch
    (``epoch`` events of metrics.jsonl), else from the score record (the last step of its first
    recorded epoch that a later one follows, which is complete); None when neither says."""
    for line in run.metrics:
        epoch, step = line.get("epoch"), line.get("step")
        if (
            line.get("event") == "epoch"
            and isinstance(epoch, int)
            and isinstance(step, int)
            and epoch > 0
            and step > 0
        ):
            return step / epoch
    if run.record is None:
        return None
    t = run.record.intervals
    epochs = np.unique(t["epoch"][t["epoch"] > 0])
    if len(epochs) == 0:
        return None
    e = int(epochs[0])  # complete when a later epoch follows; a one-epoch record: its last step
    return float(t["last_step"][t["epoch"] == e].max()) / e


def _x_axis(runs: list[Run]) -> tuple[list[float], str]:
    """One divisor per run and the axis label: steps (divisor 1) when the runs' steps per epoch
    agree, else epochs (step / steps per epoch), so that runs of other batch sizes or datasets
    line up by how much data they saw rather than by how many updates they made."""
    spe = [steps_per_epoch(r) for r in runs]
    known = sorted({round(v, 3) for v in spe if v is not None})
    if len(known) <= 1:
        return [1.0] * len(runs), "step"
    shown = ", ".join(f"{v:g}" for v in known)
    if None in spe:
        # those of unknown length cannot be converted: stay in steps and say why
        return [1.0] * len(runs), f"step (steps per epoch differ: {shown}, some unknown)"
    return spe, f"epoch (step / steps per epoch: {shown})"


def _color(i: int) -> str:
    return f"C{i % 10}"


def _differs(run: Run, space: str) -> bool:
    """Whether the effective scores of ``space`` ever differed from the raw ones."""
    if run.record is None or space not in run.spaces:
        return False
    eff = run.record.interval(space, "effective")
    return bool(len(eff["same_as_raw"]) and not eff["same_as_raw"].all())


# How the two stages are drawn: a line style, and a marker where a run has too few intervals for
# a line to show (one point has no line, so raw and effective would look alike without them).
_STAGE_STYLE = {
    "raw": {"ls": "-", "marker": "o", "mfc": None, "name": "raw cosine scores"},
    "effective": {
        "ls": "--",
        "marker": "^",
        "mfc": "white",
        "name": "effective (after feature transformation)",
    },
}
_FEW_POINTS = 3  # fewer intervals than this: markers on the points


def queue_filled(run: Run) -> int | None:
    """The step after which the run's queue held only real keys (``scores.queue_filled_step``):
    from the score record, else, for a training run whose record does not say it (one written
    before the record kept it), from its config (``moco.queue_size``, ``optim.batch_size``,
    ``moco.symmetric``); None where the negatives were no queue (the bank of ``contrastlab
    analyze``) or nothing says."""
    from contrastlab.scores import queue_filled_step

    meta = run.record.meta if run.record is not None else {}
    value = meta.get("queue_filled_step")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    trained = any(m.get("event") in ("train", "epoch") for m in run.metrics)
    size, batch = run.config.get("moco.queue_size"), run.config.get("optim.batch_size")
    if not trained or not all(isinstance(v, int) and v > 0 for v in (size, batch)):
        return None
    return queue_filled_step(size, batch, bool(run.config.get("moco.symmetric")))


def _draw_stage(ax, x, t, q: str, color: str, stage: str) -> bool:
    """One run's mean and 10-90 % spread of quantity ``q`` at one stage: a line and a band, or,
    for fewer than ``_FEW_POINTS`` intervals, markers (and for a single one a bar, as a band
    needs two points). Returns whether markers were drawn."""
    style = _STAGE_STYLE[stage]
    few = len(x) < _FEW_POINTS
    mean, low, high = t[f"{q}_mean"], t[f"{q}_q10"], t[f"{q}_q90"]
    ax.plot(
        x,
        mean,
        color=color,
        lw=1.6,
        ls=style["ls"],
        marker=style["marker"] if few else None,
        mfc=style["mfc"] or color,
        ms=7,
    )
    alpha = 0.18 if stage == "raw" else 0.08
    if len(x) == 1:
        ax.vlines(x, low, high, color=color, alpha=0.5, lw=3 if stage == "raw" else 1.2)
    else:
        ax.fill_between(x, low, high, color=color, alpha=alpha, lw=0)
    return few


def _shade_unfilled_queue(axes, x_fill: float, x_last: float, color: str) -> None:
    """Shade the steps whose negatives still included the queue's random initial vectors (up to
    ``x_fill``, at most the run's last drawn point ``x_last``)."""
    for ax in axes:
        ax.axvspan(0, min(x_fill, x_last), color=color, alpha=0.07, lw=0)


def _style_legend(fig, stages: set[str], markers: bool, fills: list[int]) -> None:
    """The legend of what the line styles, markers and shading mean, as they are drawn."""
    handles = []
    if "effective" in stages:
        for stage in ("raw", "effective"):
            style = _STAGE_STYLE[stage]
            handles.append(
                Line2D(
                    [],
                    [],
                    color="0.3",
                    ls=style["ls"],
                    marker=style["marker"] if markers else None,
                    mfc=style["mfc"] or "0.3",
                    label=style["name"],
                )
            )
    if fills:
        steps = ", ".join(str(f) for f in sorted(set(fills)))
        handles.append(
            Patch(
                color="0.5",
                alpha=0.25,
                label=f"until the queue filled (step {steps}): the negatives include its "
                "random initial vectors",
            )
        )
    if handles:  # beside the panels: below them is the runs' legend
        for h in handles:
            h.set_label(textwrap.fill(h.get_label(), 26))
        fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)


def _set_x_span(ax) -> None:
    """The x span of a curves axis: never before step (or epoch) 0, where no score can be."""
    low, high = ax.dataLim.intervalx
    if not np.isfinite([low, high]).all():
        return
    if high - low < 2:
        # a point or two within one step: a span of whole steps (or epochs) around them, as
        # the locator falls back to fractional ticks in a span shorter than one
        ax.set_xlim(np.floor(low) - 1, np.ceil(high) + 1)
    # (the queue's shading starts at 0, which the data limits hold as -1e-16 or so)
    if low > -1e-9 and ax.get_xlim()[0] < 0:  # the margin, or the span above, reached below 0
        ax.set_xlim(left=0)


def curves_figure(runs: list[Run], space: str, labels: list[str]) -> Figure:
    """(a)+(c): pos, neg mean and neg variance over training, one colour per run.

    The x-axis (steps or epochs) is decided over all ``runs``, those without ``space`` too, so
    that the figures of every space of one call share it. Raw and effective scores differ in line
    style and marker; the steps before a run's queue filled are shaded (``queue_filled``)."""
    fig = Figure(figsize=(15, 4.9), layout="constrained")
    axes = fig.subplots(1, 3)
    stages_drawn: set[str] = set()
    markers, single, fills = False, False, []
    handles = []
    divisors, xlabel = _x_axis(runs)
    per_step = dict(zip(map(id, runs), divisors))
    for i, (run, label) in enumerate(zip(runs, labels)):
        if space not in run.spaces:
            continue
        stages = ["raw"] + (["effective"] if _differs(run, space) else [])
        stages_drawn |= set(stages)
        for stage in stages:
            t = run.record.interval(space, stage)
            keep = t["n"] > 0
            x = t["last_step"][keep] / per_step[id(run)]
            kept = {k: v[keep] for k, v in t.items()}
            for ax, (q, _, _) in zip(axes, _QUANTITIES):
                markers |= _draw_stage(ax, x, kept, q, _color(i), stage)
            single |= len(x) == 1
        fill = queue_filled(run)
        if fill is not None and len(x):
            _shade_unfilled_queue(axes, fill / per_step[id(run)], float(x.max()), _color(i))
            fills.append(fill)
        few = len(x) < _FEW_POINTS
        handles.append(
            Line2D([], [], color=_color(i), lw=1.6, marker="o" if few else None, label=label)
        )
    for ax, (_, title, ylabel) in zip(axes, _QUANTITIES):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{ylabel} in space '{space}'")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no 4.5 steps or 1.5 epochs
        _set_x_span(ax)
        ax.grid(alpha=0.3)
    if _positive_var(runs, space):
        axes[2].set_yscale("log")
    mean = "line or point" if markers else "line"
    spread = "band, or bar for a single interval" if single else "band"
    note = f"{mean}: mean over queries; {spread}: 10-90 % of queries per log interval"
    fig.suptitle(
        f"pos and neg scores: cosine similarities of L2-normalized embeddings in space "
        f"'{space}'\n{note}",
        fontsize=10,
    )
    if handles:  # the runs first: fig.legends[0]
        fig.legend(
            handles=handles,
            loc="outside lower center",
            # two columns only when the labels are short enough to fit side by side
            ncol=1 if max(len(h.get_label()) for h in handles) > 70 else min(len(handles), 2),
            fontsize=9,
            frameon=False,
        )
    _style_legend(fig, stages_drawn, markers, fills)
    return fig


def _positive_var(runs: list[Run], space: str) -> bool:
    """Log scale for the variance when it spans decades (a collapsing run: variance → 0)."""
    values = []
    for run in runs:
        if space in run.spaces:
            t = run.record.interval(space, "raw")
            values.append(t["neg_var_mean"][t["n"] > 0])
    v = np.concatenate(values) if values else np.zeros(0)
    return bool(v.size and (v > 0).all() and v.max() / v.min() > 50)


def occupied_range(counts: list[np.ndarray], edges: np.ndarray, step: float = 0.1):
    """``(low, high)``: the score range where any of the histograms ``counts`` (each [..., bins]
    over ``edges``) has a score, widened to multiples of ``step`` and kept within the edges, so
    that figures show the scores rather than the empty part of [-1, 1]."""
    occupied = np.zeros(len(edges) - 1, dtype=bool)
    for c in counts:
        occupied |= np.asarray(c).reshape(-1, len(edges) - 1).sum(0) > 0
    if not occupied.any():
        return float(edges[0]), float(edges[-1])
    bins = np.flatnonzero(occupied)
    low = np.floor(edges[bins[0]] / step - 1e-9) * step
    high = np.ceil(edges[bins[-1] + 1] / step + 1e-9) * step
    return max(float(edges[0]), float(low)), min(float(edges[-1]), float(high))


def _ridge_epochs(epochs: np.ndarray) -> list[int]:
    """At most ``_MAX_RIDGES`` epochs, evenly spread, always the first and the last."""
    if len(epochs) <= _MAX_RIDGES:
        return list(range(len(epochs)))
    return sorted(set(np.linspace(0, len(epochs) - 1, _MAX_RIDGES).round().astype(int).tolist()))


def end_bin_notes(h: ScoreHistograms, space: int, picks, stages) -> list[str]:
    """Lines that say how many scores the end bins of the drawn epochs (``picks``, indices into
    ``h.epoch``) hold where scores outside the histogram's range may be among them: these are
    counted in the end bins (docs/scores-format.md), where they would be an unmarked spike at
    the clipped axis's end. Raw cosine scores lie in [-1, 1]; effective ones (after a feature
    transformation without re-normalization) may lie beyond, and a range narrower than [-1, 1]
    (scores.low / scores.high) clips raw ones too."""
    low, high = float(h.edges[0]), float(h.edges[-1])
    lines = []
    for stage in stages:
        for kind, name in ((0, "pos"), (1, "neg")):
            c = h.counts[picks, space, stage, kind].sum(0)
            for end, edge, beyond in ((0, low, low > -1), (-1, high, high < 1)):
                if int(c[end]) == 0 or not (stage == 1 or beyond):
                    continue
                side = "below" if end == 0 else "above"
                inner = float(h.edges[1] if end == 0 else h.edges[-2])
                lines.append(
                    f"{STAGES[stage]} {name}: {int(c[end]):,} scores in the end bin "
                    f"[{min(edge, inner):g}, {max(edge, inner):g}], any {side} {edge:g} "
                    f"counted at {edge:g}"
                )
    return lines


def distributions_figure(
    runs: list[Run], space: str, labels: list[str], ridge_label=None
) -> Figure:
    """(b)+(c): pos and neg score distributions per epoch, one ridge plot per run.

    ``ridge_label(epoch) -> str`` names a ridge (default ``"epoch N"``)."""
    shown = [(r, lab) for r, lab in zip(runs, labels) if r.hists is not None and space in r.spaces]
    fig = Figure(figsize=(max(8.0, 4.6 * len(shown)), 6.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(shown)), sharex=True))
    if shown:  # one range for all runs (the axes are shared): where any of them has scores
        counts = [r.hists.counts[:, r.hists.meta["spaces"].index(space)] for r, _ in shown]
        shown_range = occupied_range(counts, shown[0][0].hists.edges)
    for ax, (run, label) in zip(axes, shown):
        h = run.hists
        s = h.meta["spaces"].index(space)
        centers = (h.edges[:-1] + h.edges[1:]) / 2
        picks = _ridge_epochs(h.epoch)
        effective = _differs(run, space)
        for row, e in enumerate(picks):
            base = row * 1.0
            for kind, color in ((0, _POS_COLOR), (1, _NEG_COLOR)):
                for stage in (0, 1) if effective else (0,):
                    c = h.counts[e, s, stage, kind]
                    if c.max() <= 0:
                        continue
                    y = base + 0.9 * c / c.max()
                    if stage == 0:
                        ax.fill_between(centers, base, y, color=color, alpha=0.35, lw=0)
                        ax.plot(centers, y, color=color, lw=1.0)
                    else:
                        ax.plot(centers, y, color=color, lw=1.0, ls="--")
            ax.axhline(base, color="0.8", lw=0.5)
        ax.set_yticks(
            np.arange(len(picks)) + 0.3,
            [(ridge_label or "epoch {}".format)(int(h.epoch[e])) for e in picks],
            fontsize=8,
        )
        ax.set_ylim(-0.1, len(picks) + 0.05)
        ax.set_xlim(*shown_range)
        notes = end_bin_notes(h, s, picks, (0, 1) if effective else (0,))
        if notes:
            ax.text(
                0.01,
                0.995,
                "\n".join(notes),
                transform=ax.transAxes,
                ha="left",
                va="top",
                fontsize=7,
                color="0.15",
                bbox={"facecolor": "white", "edgecolor": "0.7", "alpha": 0.85, "pad": 2},
            )
        ax.set_xlabel("cosine score")
        ax.set_title(textwrap.fill(label, _TITLE_CHARS), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    if not shown:
        axes[0].text(0.5, 0.5, "no histograms recorded", ha="center", va="center")
        axes[0].set_axis_off()
    legend = [
        Patch(color=_POS_COLOR, alpha=0.5, label="pos scores"),
        Patch(color=_NEG_COLOR, alpha=0.5, label="neg scores"),
    ]
    if any(_differs(r, space) for r, _ in shown):
        legend.append(
            Line2D([], [], color="0.3", ls="--", label="effective (after transformation)")
        )
    fig.legend(
        handles=legend, loc="outside lower center", ncol=len(legend), frameon=False, fontsize=9
    )
    fig.suptitle(
        f"score distributions in space '{space}' by epoch (each curve scaled to its peak)",
        fontsize=10,
    )
    return fig


def file_stem(name: str) -> str:
    """``name`` (a feature space, a label) made safe as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def no_scores_reason(run: Run) -> str:
    """Why ``run`` has no scores/meta.json and what to do (``runstate.no_scores_reason``)."""
    from contrastlab.runstate import no_scores_reason as reason

    return reason(run.config, run.metrics, run.config.get("optim.epochs"))


def _spaces(runs: list[Run]) -> list[str]:
    """Every feature space of every run that recorded scores."""
    with_scores = [r for r in runs if r.record is not None]
    if len(runs) == 1 and not with_scores:  # one run: why it has none, and what to do
        raise UserError(f"{runs[0].path} has no recorded scores: {no_scores_reason(runs[0])}")
    if not with_scores:
        raise UserError(
            "none of the runs has recorded scores (scores/meta.json): "
            + "; ".join(f"{r.path}: {no_scores_reason(r)}" for r in runs)
        )
    return list(dict.fromkeys(s for r in with_scores for s in r.spaces))


_FIGURES = {"curves": curves_figure, "distributions": distributions_figure}


def recorded_steps(runs: list[Run], space: str) -> list[int]:
    """The steps at which the runs logged scores of ``space``: the first and last of each
    logged interval, without repeats, ascending."""
    steps: set[int] = set()
    for run in runs:
        if space in run.spaces:
            t = run.record.interval(space, "raw")
            keep = t["n"] > 0
            steps |= {int(v) for v in t["first_step"][keep]} | {
                int(v) for v in t["last_step"][keep]
            }
    return sorted(steps)


def _kinds(runs: list[Run], space: str) -> list[str]:
    """The figures of ``space``: no curves where every run recorded it at one step only (the
    frozen encoders of ``contrastlab analyze``): there is no curve over training to draw."""
    one_step = len(recorded_steps(runs, space)) <= 1
    return [kind for kind in _FIGURES if not (kind == "curves" and one_step)]


def skipped_curves(runs: list[Run]) -> str | None:
    """One line that says which spaces get no curves figure and why; None when all get one."""
    spaces = [s for s in _spaces(runs) if "curves" not in _kinds(runs, s)]
    if not spaces:
        return None
    names = ", ".join(f"'{s}'" for s in spaces)
    steps = sorted({step for s in spaces for step in recorded_steps(runs, s)})
    at = f" (step {steps[0]})" if len(steps) == 1 else ""
    return (
        f"no curves figure of space{'s' if len(spaces) > 1 else ''} {names}: the scores were "
        f"recorded at one step only{at}, so there is no curve over training; the distributions "
        "figure shows them"
    )


def score_figure_stems(runs: list[Run]) -> list[str]:
    """The file stems ``score_figures`` gives, without drawing the figures."""
    return [
        f"scores-{file_stem(space)}-{kind}"
        for space in _spaces(runs)
        for kind in _kinds(runs, space)
    ]


def _figure_labels(runs: list[Run], space: str, kind: str) -> list[str]:
    """The automatic labels of one figure, from the runs it shows: a setting that sets apart only
    runs of another figure (a LooC run without space ``z``) is not named in this one, where it is
    the same on every curve. Runs the figure does not show get ``""``."""
    shown = [
        i
        for i, r in enumerate(runs)
        if space in r.spaces and (kind == "curves" or r.hists is not None)
    ]
    out = [""] * len(runs)
    for i, label in zip(shown, run_labels([runs[i] for i in shown])):
        out[i] = label
    return out


def score_figures(runs: list[Run], labels: list[str] | None = None) -> list[tuple[str, Figure]]:
    """(file stem, figure) for every space of every run that recorded scores; ``labels`` (one
    per run) replace the automatic ones, which are worked out per figure (``_figure_labels``)."""
    if labels:
        labels = run_labels(runs, labels)  # the check: one per run
    return [
        (
            f"scores-{file_stem(space)}-{kind}",
            draw(runs, space, labels or _figure_labels(runs, space, kind)),
        )
        for space in _spaces(runs)
        for kind, draw in _FIGURES.items()
        if kind in _kinds(runs, space)
    ]


def _with_scores(runs: list[Run], labels: list[str] | None):
    """The runs that recorded scores (and their labels); one warning line per run left out,
    an error when none is left."""
    from contrastlab.errors import warn

    kept = [i for i, r in enumerate(runs) if r.record is not None]
    if not kept:
        _spaces(runs)  # the error: none of the runs has recorded scores
    if len(kept) < len(runs):
        for r in runs:
            if r.record is None:
                warn(f"{r.path} is left out, with no recorded scores: {no_scores_reason(r)}")
    return [runs[i] for i in kept], [labels[i] for i in kept] if labels else labels


def distinct_runs(
    run_dirs: list, labels: list[str] | None = None, what: str = "run", done: str = "drawn"
):
    """``run_dirs`` (and their ``labels``) without repeats: a run given again, under any spelling
    of its path (``runs/a``, ``./runs/a/``, a link to it), is drawn once, with one warning line
    (``what`` and ``done`` name the paths and what is done with them: "checkpoint", "analyzed").
    """
    from contrastlab.errors import warn

    given: dict[Path, list[int]] = {}
    for i, d in enumerate(run_dirs):
        given.setdefault(Path(d).resolve(), []).append(i)
    keep = sorted(found[0] for found in given.values())
    for found in given.values():
        if len(found) > 1:
            spellings = list(dict.fromkeys(str(run_dirs[i]) for i in found))
            said = f" (as {', '.join(spellings)})" if len(spellings) > 1 else ""
            names = list(dict.fromkeys(labels[i] for i in found)) if labels else []
            if len(names) > 1:
                said += f" with the labels {', '.join(names)}: the first is used"
            first = run_dirs[found[0]]
            warn(f"the {what} {first} is given {len(found)} times{said}; {done} once")
    if len(keep) == len(run_dirs):
        return list(run_dirs), labels
    return [run_dirs[i] for i in keep], [labels[i] for i in keep] if labels else labels


def plot_scores(
    run_dirs: list[Path | str],
    out_dir: Path | str | None = None,
    labels: list[str] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write the score figures of one or several runs as PNG files; returns their paths.

    ``out_dir`` defaults to ``RUN/figures`` for one run and ``./score-plots`` for several. A
    file of the same name that is not a figure written by contrastlab is refused (before any
    figure is drawn) unless ``overwrite``.
    """
    from contrastlab.errors import warn
    from contrastlab.outputs import check_output, remove_earlier

    run_dirs = as_list(run_dirs, "run directories", (str, Path))
    if labels is not None:
        labels = as_list(labels, "labels")
    if not run_dirs:
        raise UserError("give at least one run directory")
    if labels and len(labels) != len(run_dirs):
        raise UserError(
            f"got {plural(len(labels), 'label')} for {plural(len(run_dirs), 'run')}; give one "
            "per run"
        )
    run_dirs, labels = distinct_runs(run_dirs, labels)
    runs = [load_run(d) for d in run_dirs]
    runs, labels = _with_scores(runs, labels)
    if out_dir is None:
        out_dir = runs[0].path / "figures" if len(runs) == 1 else Path("score-plots")
    out_dir = Path(out_dir)
    skipped = skipped_curves(runs)
    if skipped is not None:
        warn(skipped)
    for stem in score_figure_stems(runs):
        check_output(
            out_dir / f"{stem}.png",
            replaceable=is_contrastlab_figure,
            what="a figure",
            overwrite=overwrite,
        )
    paths = []
    for stem, fig in score_figures(runs, labels):
        path = out_dir / f"{stem}.png"
        save_figure(fig, path, dpi=110)
        paths.append(path)
    remove_earlier(out_dir, earlier_score_figures(out_dir, paths), "contrastlab scores")
    return paths


_SCORE_FIGURE = re.compile(r"scores-.+-(curves|distributions)\.png")


def earlier_score_figures(out_dir: Path, written: list[Path]) -> list[Path]:
    """The score figures in ``out_dir`` that an earlier ``contrastlab scores`` wrote (named as
    ``score_figures`` names them and marked as contrastlab's) and ``written`` does not hold."""
    keep = {p.name for p in written}
    if not out_dir.is_dir():
        return []
    return [
        p
        for p in out_dir.iterdir()
        if p.name not in keep
        and _SCORE_FIGURE.fullmatch(p.name)
        and p.is_file()
        and is_contrastlab_figure(p)
    ]
