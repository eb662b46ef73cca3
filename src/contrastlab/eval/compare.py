"""``eval all``: several protocols over several checkpoints, one comparison table and one plot."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Callable, Sequence

from contrastlab.atomic import save_figure, write_text
from contrastlab.errors import UserError
from contrastlab.eval.results import markdown_table, pm, write_json

DEFAULT_PROTOCOLS = ("knn", "linear", "fewshot")


def _label(checkpoint: Path, run: str, taken: set[str]) -> str:
    label = f"{run}/{checkpoint.stem}"
    if label in taken:
        label = str(checkpoint)
    taken.add(label)
    return label


def comparison_rows(entries: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Markdown header and rows: one row per checkpoint, one column per protocol metric."""
    columns: list[str] = []
    for e in entries:
        for proto, summary in e["results"].items():
            for key in summary:
                col = f"{proto}: {key}"
                if not key.endswith(" ci95") and col not in columns:
                    columns.append(col)
    rows = []
    for e in entries:
        row = [e["label"]]
        for col in columns:
            proto, key = col.split(": ", 1)
            summary = e["results"].get(proto, {})
            row.append(pm(summary[key], summary.get(f"{key} ci95")) if key in summary else "–")
        rows.append(row)
    return ["checkpoint", *columns], rows


def bar_chart(entries: list[dict], path: Path) -> Path:
    """Grouped bars: one group per metric, one bar per checkpoint (with 95 % CI where known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    header, _ = comparison_rows(entries)
    metrics = header[1:]
    n, m = len(entries), max(1, len(metrics))
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * m + 2), 4.5))
    x = np.arange(m)
    for i, e in enumerate(entries):
        vals, errs = [], []
        for col in metrics:
            proto, key = col.split(": ", 1)
            s = e["results"].get(proto, {})
            v, ci = s.get(key), s.get(f"{key} ci95")
            vals.append(np.nan if v is None else float(v))
            errs.append(0.0 if ci is None or ci != ci else float(ci))
        ax.bar(x + (i - (n - 1) / 2) * width, vals, width, yerr=errs, capsize=2, label=e["label"])
    ax.set_xticks(x, metrics, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("contrastlab evaluation")
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
    dataset_tag: str | None = None,
) -> dict:
    """Evaluate every checkpoint with every protocol; write ``comparison.{json,md,png}``.

    ``make_context(checkpoint)`` builds an :class:`EvalContext`; ``runners[p](ctx)`` runs protocol
    ``p``. The table is headed by the feature space and ``note`` (e.g. the linear probe's mode).
    With ``save_each``, every result is also written to ``<run_dir>/eval/<protocol>.json``
    next to its checkpoint, where the HTML report finds it (named as ``result_path`` names it:
    ``dataset_tag`` for a dataset other than the run's own).
    """
    from contrastlab.eval.results import result_path

    unknown = [p for p in protocols if p not in runners]
    if unknown:
        raise UserError(
            f"unknown protocol '{unknown[0]}' for eval all; valid: {', '.join(runners)}"
        )
    if not checkpoints:
        raise UserError("eval all needs at least one checkpoint")
    out = Path(out_dir)
    entries, taken = [], set()
    for ckpt in checkpoints:
        ctx = make_context(ckpt)
        entry = {
            "label": _label(Path(ckpt), ctx.cfg.name, taken),
            "checkpoint": str(ckpt),
            "method": ctx.method,
            "space": ctx.space,
            "results": {},
            "files": {},
        }
        for proto in protocols:
            result = runners[proto](ctx)
            entry["results"][proto] = result["summary"]
            if save_each:
                path = result_path(ckpt, proto, space=ctx.space, dataset=dataset_tag)
                entry["files"][proto] = str(write_json(result, path))
        entries.append(entry)
    header, rows = comparison_rows(entries)
    spaces = sorted({e["space"] for e in entries})
    table = (
        f"Feature space `{'`, `'.join(spaces)}`{f'; {note}' if note else ''}\n\n"
        + markdown_table(header, rows)
    )
    data = {
        "protocols": list(protocols),
        "entries": entries,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(data, out / "comparison.json")
    write_text(out / "comparison.md", table + "\n")
    bar_chart(entries, out / "comparison.png")
    return {"table": table, "data": data, "out_dir": str(out)}
