"""``eval all``: several protocols over several checkpoints, one comparison table and one plot."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Callable, Sequence

from contrastlab.atomic import save_figure, write_text
from contrastlab.errors import UserError, warn
from contrastlab.eval.results import chance_levels, markdown_table, pm, with_chance, write_json

DEFAULT_PROTOCOLS = ("knn", "linear", "fewshot")


def dataset_name(name: str, path: str | None) -> str:
    """``synthetic``; ``imagefolder (flowers)`` for a dataset read from a folder."""
    return f"{name} ({Path(path).name})" if path else name


# what eval's options can change of a test set (--dataset, --data-path); the rest of
# ``context.test_set_identity`` comes from each checkpoint's training config
_CHOSEN_BY_OPTIONS = {"dataset", "data_path"}


def test_set_differences(identities: Sequence[dict]) -> dict[str, list]:
    """The settings whose values differ between the rows (one dict per row: a test set's
    ``context.test_set_identity``, a protocol's ``measured_with``), each with one value per row
    (None where a row has no such setting)."""
    keys = list(dict.fromkeys(k for ident in identities for k in ident))
    values = {k: [ident.get(k) for ident in identities] for k in keys}
    return {k: v for k, v in values.items() if len({repr(x) for x in v}) > 1}


def differences_text(differences: dict[str, list]) -> str:
    """``k 200 / 50; temperature 0.1 / 0.2``: each setting's value per row (– for none)."""
    return "; ".join(
        f"{key} {' / '.join('–' if v is None else str(v) for v in vals)}"
        for key, vals in differences.items()
    )


def not_comparable(datasets: Sequence[str], differences: dict[str, list] | None = None) -> str:
    """The warning of a comparison whose rows were scored on different test sets: which settings
    differ and, for those eval cannot change, that they are the checkpoints' own."""
    differences = differences or {}
    if "dataset" in differences:  # another dataset: its own settings differ as a matter of course
        differences = {k: v for k, v in differences.items() if k in _CHOSEN_BY_OPTIONS}
    shown = differences_text(differences)
    fixed = [k for k in differences if k not in _CHOSEN_BY_OPTIONS | {"max_test", "subset_seed"}]
    advice = (
        f"{', '.join(fixed)} {'comes' if len(fixed) == 1 else 'come'} from each checkpoint's "
        "own data config, which eval keeps: compare checkpoints trained on the same data, or "
        "evaluate them all on one dataset read from disk with --dataset NAME --data-path DIR"
        if fixed
        else "evaluate them all on one dataset with --dataset NAME --data-path DIR (no "
        "--data-path for synthetic)"
    )
    return (
        f"the checkpoints were evaluated on different test sets ({' / '.join(datasets)}"
        f"{f'; differing: {shown}' if shown else ''}): their figures are not comparable; {advice}"
    )


# the settings of a few-shot part (``details[part]``) that its figures depend on
_PART_SETTINGS = ("classifier", "C", "trials", "n_way", "queries", "episodes")


def measured_with(result: dict, described: dict) -> dict:
    """The settings a protocol's figures were measured with, besides the test set: the
    protocol's options (its ``setup`` less the evaluation context's ``described`` keys: kNN's
    k and T, the linear probe's mode, epochs, lr or C, corruption's severities...) and, for
    few-shot, each part's own (``allway trials``, ``episodes queries``...), for the parts run."""
    out = {k: v for k, v in result["setup"].items() if k not in described}
    for part, details in (result.get("details") or {}).items():
        if isinstance(details, dict) and "shots" in details and "skipped" not in details:
            out[f"{part} shots"] = list(details["shots"])
            out.update({f"{part} {k}": details[k] for k in _PART_SETTINGS if k in details})
    return out


def settings_note(protocol: str, differences: dict[str, list], labels: Sequence[str]) -> str:
    """The line of a comparison whose rows measured ``protocol`` with different settings."""
    shown = differences_text(differences)
    return (
        f"{protocol} was measured with different settings in the rows ({' / '.join(labels)}): "
        f"{shown}; its figures are not comparable between them"
    )


def _label(checkpoint: Path, run: str, taken: set[str], converted_from: str | None = None) -> str:
    """``run/stem``; an encoder converted from another project by its source (``torchvision
    (converted)``); the checkpoint's path where two would read the same."""
    from contrastlab.eval.context import converted_label

    label = converted_label(converted_from) if converted_from else f"{run}/{checkpoint.stem}"
    if label in taken:
        label = f"{label} ({checkpoint})" if converted_from else str(checkpoint)
    taken.add(label)
    return label


def comparison_rows(entries: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Markdown header and rows: one row per checkpoint, one column per protocol metric; a
    metric with a chance level (``results.chance_levels``) shows it in its cell."""
    columns: list[str] = []
    for e in entries:
        for proto, summary in e["results"].items():
            for key in summary:
                col = f"{proto}: {key}"
                if not key.endswith(" ci95") and col not in columns:
                    columns.append(col)
    rows = []
    for e in entries:
        row = [e["label"], e["dataset"], e["num_test"]]
        for col in columns:
            proto, key = col.split(": ", 1)
            summary = e["results"].get(proto, {})
            chance = e.get("chance", {}).get(proto, {}).get(key)
            cell = pm(summary[key], summary.get(f"{key} ci95")) if key in summary else "–"
            row.append(with_chance(cell, chance) if key in summary else cell)
        rows.append(row)
    return ["checkpoint", "dataset", "test images", *columns], rows


def bar_chart(entries: list[dict], path: Path, title: str = "contrastlab evaluation") -> Path:
    """Grouped bars: one group per metric, one bar per checkpoint; an error bar (95 % CI) only
    where a metric has a spread (few-shot trials and episodes), none where it is one figure; a
    dashed line across each bar that has a chance level (``results.chance_levels``: factor and
    rotation probes), the same figure the table shows beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    header, _ = comparison_rows(entries)
    metrics = header[3:]  # after checkpoint, dataset, test images
    n, m = len(entries), max(1, len(metrics))
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * m + 2), 4.5))
    x = np.arange(m)
    chance_drawn = False
    for i, e in enumerate(entries):
        vals, errs, chances = [], [], []
        for col in metrics:
            proto, key = col.split(": ", 1)
            s = e["results"].get(proto, {})
            v, ci = s.get(key), s.get(f"{key} ci95")
            vals.append(np.nan if v is None else float(v))
            errs.append(0.0 if ci is None or ci != ci else float(ci))
            chances.append(e.get("chance", {}).get(proto, {}).get(key) if v is not None else None)
        pos = x + (i - (n - 1) / 2) * width
        ax.bar(pos, vals, width, label=e["label"])
        for j, chance in enumerate(chances):
            if chance is None:
                continue
            ax.hlines(
                chance,
                pos[j] - width / 2,
                pos[j] + width / 2,
                colors="black",
                linestyles="dashed",
                linewidth=1.0,
                label=None if chance_drawn else "chance level",
            )
            chance_drawn = True
        spread = [j for j, err in enumerate(errs) if err > 0]
        if spread:  # a zero-length bar would still draw caps that read as an interval
            ax.errorbar(
                pos[spread],
                [vals[j] for j in spread],
                yerr=[errs[j] for j in spread],
                fmt="none",
                ecolor="black",
                capsize=2,
            )
    ax.set_xticks(x, metrics, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)
    return path


def run_all(
    checkpoints: Sequence[str],
    protocols: Sequence[str],
    out_dir: str | os.PathLike,
    make_context: Callable,
    runners: dict[str, Callable],
    save_each: bool = True,
    note: str = "",
    dataset_tag: Callable[[str], str | None] | None = None,
    subset_tag: str | None = None,
    selection_tag: Callable[[str], str | None] | None = None,
) -> dict:
    """Evaluate every checkpoint with every protocol; write ``comparison.{json,md,png}``.

    ``make_context(checkpoint)`` builds an :class:`EvalContext`; ``runners[p](ctx)`` runs protocol
    ``p``. The table is headed by the feature space and ``note`` (e.g. the linear probe's mode).
    With ``save_each``, every result is also written to ``<run_dir>/eval/<protocol>.json``
    next to its checkpoint, where the HTML report finds it (named as ``result_path`` names it:
    ``dataset_tag(checkpoint)`` for a dataset other than the checkpoint's own, ``subset_tag`` for subsets drawn
    with ``--max-train`` / ``--max-test``, ``selection_tag(protocol)`` for a protocol asked for
    some of its sub-results only, e.g. ``--severities 1,5``).
    """
    from contrastlab.eval.results import result_path, variant_of

    unknown = [p for p in protocols if p not in runners]
    if unknown:
        raise UserError(
            f"unknown protocol '{unknown[0]}' for eval all; valid: {', '.join(runners)}"
        )
    if not checkpoints:
        raise UserError("eval all needs at least one checkpoint")
    out = Path(out_dir)
    from contrastlab.eval.protocols import ci_note

    entries, taken, ci_notes = [], set(), {}
    for ckpt in checkpoints:
        ctx = make_context(ckpt)
        entry = {
            "label": _label(
                Path(ckpt), ctx.cfg.name, taken, getattr(ctx.model, "converted_from", None)
            ),
            "checkpoint": str(ckpt),
            "method": ctx.method,
            "space": ctx.space,
            "dataset": dataset_name(ctx.data_cfg.name, ctx.data_cfg.path),
            "data_path": ctx.data_cfg.path,
            "num_test": len(ctx.indices("test") or ctx.raw("test")),
            "test_set": ctx.test_set(),
            "results": {},
            "settings": {},  # per protocol: what its figures were measured with
            "files": {},
        }
        for proto in protocols:
            result = runners[proto](ctx)
            entry["results"][proto] = result["summary"]
            entry["settings"][proto] = measured_with(result, ctx.describe())
            if ci_note(result):  # what its ± means, once per protocol
                ci_notes.setdefault(proto, ci_note(result))
            if chance_levels(result):
                entry.setdefault("chance", {})[proto] = chance_levels(result)
            if save_each:
                variant = variant_of(proto, result["setup"])
                path = result_path(
                    ckpt,
                    proto,
                    space=ctx.space,
                    dataset=dataset_tag(ckpt) if dataset_tag is not None else None,
                    variant=variant,
                    subset=subset_tag,
                    selection=selection_tag(proto) if selection_tag is not None else None,
                )
                entry["files"][proto] = str(write_json(result, path))
        entries.append(entry)
    header, rows = comparison_rows(entries)
    spaces = sorted({e["space"] for e in entries})
    datasets = list(dict.fromkeys(f"{e['dataset']}, {e['num_test']} test images" for e in entries))
    differences = test_set_differences([e["test_set"] for e in entries])
    comparable = not differences and len({e["num_test"] for e in entries}) == 1
    warning = "" if comparable else not_comparable(datasets, differences)
    if warning:
        warn(warning)
    labels = [e["label"] for e in entries]
    settings_differ = {}
    for proto in protocols:
        differ = test_set_differences([e["settings"].get(proto, {}) for e in entries])
        if differ:
            settings_differ[proto] = differ
    notes = [settings_note(p, d, labels) for p, d in settings_differ.items()]
    for line in notes:
        warn(line)
    table = (
        f"Feature space `{'`, `'.join(spaces)}`{f'; {note}' if note else ''}; "
        f"dataset{'s' if len(datasets) > 1 else ''}: {'; '.join(datasets)}\n\n"
        + (f"**Warning:** {warning}\n\n" if warning else "")
        + "".join(f"**Warning:** {line}\n\n" for line in notes)
        + markdown_table(header, rows)
        + "".join(f"\n\n{proto}: {text}" for proto, text in ci_notes.items())
    )
    title = (
        f"space {', '.join(spaces)}; {'; '.join(datasets)}"
        + (f"\n{note}" if note else "")
        + ("\nnot comparable: different test sets" if warning else "")
        + "".join(f"\nnot comparable: {p} settings differ" for p in settings_differ)
    )
    data = {
        "protocols": list(protocols),
        "note": note,
        "datasets": datasets,
        "comparable": comparable,
        # per protocol whose rows were measured with different settings: each such setting,
        # one value per row
        "settings_differ": settings_differ,
        "entries": entries,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(data, out / "comparison.json")
    write_text(out / "comparison.md", table + "\n")
    shown = entries  # not comparable: each bar's legend entry names its dataset
    if not comparable:
        shown = [{**e, "label": f"{e['label']} ({e['dataset']}, {e['num_test']})"} for e in entries]
    bar_chart(shown, out / "comparison.png", title)
    return {"table": table, "data": data, "out_dir": str(out)}
