"""One self-contained HTML page per run: config, training curves, score figures, evaluations.

Everything is inline (CSS in a <style> element, figures as base64 PNG data URIs, no scripts), so
the file can be mailed, archived or opened offline and shows the same everywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from contrastlab import runstate
from contrastlab.atomic import write_text
from contrastlab.errors import UserError
from contrastlab.eval.results import fmt as accuracy_text
from contrastlab.runstate import flow_text, processes_text, setting_text
from contrastlab.viz.score_plots import (
    Run,
    default_config,
    flatten,
    inapplicable_keys,
    joined_values,
    load_run,
    no_scores_reason,
    null_rules,
    recorded_values,
    resolved_settings,
    score_figures,
    world_sizes,
)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
.sub { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 3px 10px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.changed td { font-weight: 600; }
tr.unused td { color: #999; }
.configs { display: flex; flex-wrap: wrap; gap: 0 2em; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0 1.5em; }
.missing { color: #888; font-style: italic; }
.stopped { color: #a15c00; font-weight: 600; }
"""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig: Figure, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'


def _cell(value, accuracy: bool = False) -> str:
    """A table cell: a number right-aligned; an accuracy (an eval result's headline metric, in
    %) with 2 decimals as ``eval all`` prints it; settings spelt as in YAML (``null``, ``true``)."""
    num = isinstance(value, (int, float)) and not isinstance(value, bool)
    text = accuracy_text(value) if accuracy and num else flow_text(value)
    return f'<td class="num">{html.escape(text)}</td>' if num else f"<td>{html.escape(text)}</td>"


def _setting_cell(key: str, value, resolved: dict, rules: dict) -> str:
    """A setting's cell: what it came to for this run where the config left it to contrastlab
    (``true (null: true on CUDA, false on the CPU)``, ``cuda (auto)``), else as written."""
    if key in resolved:
        shown, note = resolved[key]
        return (
            f"<td>{html.escape(flow_text(shown))} "
            f'<span class="sub">({html.escape(note)})</span></td>'
        )
    if value is None and key in rules:  # no single value: the rule says why
        return f'<td>null <span class="sub">({html.escape(rules[key])})</span></td>'
    return _cell(value)


def _is_unknown(value) -> bool:
    from contrastlab.checkpoint import is_unknown

    return is_unknown(value)


def _config_section(run: Run) -> str:
    if not run.config:
        return '<p class="missing">no config.yaml</p>'
    defaults = default_config()
    # the rules that keep a setting out of the runs' labels: no effect on this run
    unused = inapplicable_keys(run.config)
    # what the figures' labels name too: the same values in both
    resolved, rules = resolved_settings(run), null_rules(run.config)
    sections: dict[str, list[tuple[str, object]]] = {}
    for key, value in run.config.items():
        head, _, rest = key.partition(".")
        sections.setdefault(head if rest else "general", []).append((rest or key, value))
    parts = []
    for name, items in sections.items():
        rows = []
        for key, value in items:
            full = key if name == "general" else f"{name}.{key}"
            # an unknown setting (a converted encoder's, shown as such) is not a change
            changed = full in defaults and defaults[full] != value and not _is_unknown(value)
            cls = ' class="unused"' if full in unused else ' class="changed"' if changed else ""
            cell = _setting_cell(full, value, resolved, rules)
            rows.append(f"<tr{cls}><td>{html.escape(key)}</td>{cell}</tr>")
        parts.append(
            f'<table><tr><th colspan="2">{html.escape(name)}</th></tr>{"".join(rows)}</table>'
        )
    notes = ["Bold: changed from the default."] if defaults else []
    if any(_is_unknown(v) for v in run.config.values()):
        notes.append(
            "unknown (converted from FILE): an encoder converted from another project, whose "
            "file does not record the setting (contrastlab convert)."
        )
    if unused:
        notes.append(
            "Grey: no effect on this run (e.g. looc.* on a MoCo run, ft.* with Feature "
            "Transformation off, data.synthetic_* on another dataset)."
        )
    note = f'<p class="sub">{" ".join(notes)}</p>' if notes else ""
    return note + f'<div class="configs">{"".join(parts)}</div>'


def training_figure(run: Run) -> Figure | None:
    """Loss, learning rate, images/s and kNN accuracy from metrics.jsonl; None if nothing logged."""
    train = [m for m in run.metrics if m.get("event") == "train"]
    epochs = [m for m in run.metrics if m.get("event") == "epoch"]
    knn = [m for m in run.metrics if m.get("event") == "knn"]
    if not (train or epochs or knn):
        return None
    fig = Figure(figsize=(14, 7), layout="constrained")
    axes = fig.subplots(2, 2).ravel()

    def series(lines, x, y):
        pts = [
            (m[x], m[y])
            for m in lines
            if isinstance(m.get(x), (int, float)) and isinstance(m.get(y), (int, float))
        ]
        return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])

    xs, ys = series(train, "step", "loss")
    axes[0].plot(xs, ys, lw=1, label="per log interval")
    xs, ys = series(epochs, "step", "loss")
    axes[0].plot(xs, ys, "o-", lw=1.5, label="epoch mean")
    axes[0].set(title="loss", xlabel="step")
    axes[0].legend(fontsize=8)
    axes[1].plot(*series(train, "step", "lr"), lw=1.2)
    axes[1].set(title="learning rate", xlabel="step")
    axes[2].plot(*series(train, "step", "images_per_s"), lw=1)
    axes[2].set(title="images / s", xlabel="step")
    axes[3].plot(*series(knn, "epoch", "knn_top1"), "o-", lw=1.5)
    axes[3].set(title="kNN top-1 (%)", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and epochs: no 1.925
        if not ax.lines or not any(len(line.get_xdata()) for line in ax.lines):
            ax.text(
                0.5,
                0.5,
                "not logged",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="0.5",
            )
    return fig


def run_epoch(run: Run) -> int | None:
    """The run's last epoch: the newest ``epoch`` (or checkpoint) event of metrics.jsonl."""
    epochs = [
        m["epoch"]
        for m in run.metrics
        if m.get("event") in ("epoch", "checkpoint") and isinstance(m.get("epoch"), int)
    ]
    return max(epochs) if epochs else None


def checkpoint_state(epoch, last: int | None) -> str:
    """Which training state a result is of: ``epoch 3 (the run's last)``, ``epoch 1: an earlier
    state (the run is at epoch 3)``, or that the result does not say."""
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        return "epoch not recorded (an older result)"
    if last is None:
        return f"epoch {epoch}"
    if epoch == last:
        return f"epoch {epoch} (the run's last)"
    if epoch < last:
        return f"epoch {epoch}: an earlier state (the run is at epoch {last})"
    return f"epoch {epoch} (metrics.jsonl ends at epoch {last})"


def _chance_table(result) -> str:
    """The headline metrics that have a chance level (factor and rotation probes) beside it, as
    ``eval factors`` prints them (``results.chance_levels``); "" for the other results."""
    from contrastlab.eval.results import chance_levels

    chance = chance_levels(result) if isinstance(result, dict) else {}
    if not chance:
        return ""
    head = "<tr><th>metric</th><th>accuracy (%)</th><th>chance (%)</th></tr>"
    rows = "".join(
        f"<tr><td>{html.escape(key)}</td>{_cell(result['summary'][key], accuracy=True)}"
        f"{_cell(level, accuracy=True)}</tr>"
        for key, level in chance.items()
    )
    return f"<table>{head}{rows}</table>"


def _eval_section(run: Run) -> str:
    files = sorted((run.path / "eval").glob("*.json")) if (run.path / "eval").is_dir() else []
    if not files:
        return '<p class="missing">no evaluation results (eval/*.json)</p>'
    last = run_epoch(run)
    summary, parts = [], []
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            parts.append(
                f'<h3>{html.escape(path.name)}</h3><p class="missing">unreadable: '
                f"{html.escape(str(e))}</p>"
            )
            continue
        flat = flatten(data) if isinstance(data, dict) else {"value": data}
        # the checkpoint's epoch and step, written with the result (setup.epoch / setup.step)
        state = checkpoint_state(flat.get("setup.epoch"), last)
        unknown = [v for k, v in flat.items() if k.startswith("setup.trained_with.")]
        if flat.get("setup.epoch") is None and any(_is_unknown(v) for v in unknown):
            state = "epoch " + next(v for v in unknown if _is_unknown(v))  # a converted encoder
        checkpoint = flat.get("setup.checkpoint")
        step = flat.get("setup.step")
        summary.append(
            f"<tr><td>{html.escape(path.stem)}</td>"
            f"<td>{html.escape(Path(checkpoint).name if checkpoint else 'not recorded')}</td>"
            f"<td>{html.escape(state)}</td>{_cell(step if step is not None else '')}</tr>"
        )
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td>{_cell(v, accuracy=k.startswith('summary.'))}</tr>"
            for k, v in flat.items()
        )
        parts.append(
            f'<h3>{html.escape(path.stem)}</h3><p class="sub">checkpoint: '
            f"{html.escape(state)}</p>{_chance_table(data)}<table>{rows}</table>"
        )
    head = "<tr><th>result</th><th>checkpoint</th><th>epoch</th><th>step</th></tr>"
    return f"<table>{head}{''.join(summary)}</table>" + "".join(parts)


def _checkpoint_section(run: Run) -> str:
    folder = run.path / "checkpoints"
    files = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    if not files:
        return '<p class="missing">no checkpoints</p>'
    rows = []
    for p in files:
        st = p.stat()
        when = datetime.fromtimestamp(st.st_mtime).strftime("%Y-%m-%d %H:%M")
        rows.append(
            f'<tr><td>{html.escape(p.name)}</td><td class="num">{st.st_size / 2**20:.1f} MiB'
            f"</td><td>{when}</td></tr>"
        )
    return f"<table><tr><th>file</th><th>size</th><th>modified</th></tr>{''.join(rows)}</table>"


def _scores_section(run: Run) -> str:
    if run.record is None:  # why, as the scores command says it (scores.record, a stop, ...)
        reason = html.escape(no_scores_reason(run))
        return f'<p class="missing">no recorded scores (scores/meta.json): {reason}</p>'
    return "".join(_img(fig, stem) for stem, fig in score_figures([run]))


def _state_value(enc: dict, key: str):
    """An encoder's ``epoch`` or ``step`` in analyze's table: ``unknown`` where its checkpoint
    records none (an encoder converted from a file without it), ``not recorded`` where an older
    analysis.json has no such entry."""
    if key not in enc:
        return "not recorded"
    return "unknown" if enc[key] is None else enc[key]


def _analysis_section(folder: Path | None, result: dict | None) -> str:
    """``contrastlab analyze`` results (``result``, read from ``folder``): per space the
    sensitivity table and the figures."""
    if result is None:
        return '<p class="missing">no encoder analysis (contrastlab analyze)</p>'
    from contrastlab.analysis import (
        CONDITIONS,
        analysis_figures,
        encoder_label,
        encoder_recipe,
        pos_header,
    )

    parts = [f'<p class="sub">{html.escape(str(folder))}</p>']
    # which training state and which views each encoder's scores are of
    rows = []
    for enc in result["encoders"]:
        recipe = encoder_recipe(result, enc) or "the checkpoint's own (not recorded)"
        rows.append(
            f"<tr><td>{html.escape(enc['label'])}</td>"
            f"<td>{html.escape(str(enc.get('checkpoint', 'not recorded')))}</td>"
            + _cell(_state_value(enc, "epoch"))
            + _cell(_state_value(enc, "step"))
            + f"<td>{html.escape(recipe)}</td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>" for h in ("encoder", "checkpoint", "epoch", "step", "recipe of the views")
    )
    parts.append(f"<table><tr>{head}</tr>{''.join(rows)}</table>")
    for space in result["settings"]["spaces"]:
        head = ["encoder", pos_header(result), "neg mean"]
        head += [f"pos, only {c}" for c in CONDITIONS]
        rows = []
        for enc in result["encoders"]:
            sp = enc["spaces"].get(space)
            if sp is not None:
                values = [sp["pos"]["mean"], sp["neg"]["mean"]]
                values += [sp["sensitivity"][c]["mean"] for c in CONDITIONS]
                rows.append(
                    f"<tr><td>{html.escape(encoder_label(result, enc))}</td>"
                    + "".join(_cell(round(v, 4)) for v in values)
                    + "</tr>"
                )
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        parts.append(
            f"<h3>space {html.escape(space)}</h3><table><tr>{th}</tr>{''.join(rows)}</table>"
        )
    parts += [_img(fig, stem) for stem, fig in analysis_figures(folder)]
    return "".join(parts)


def _training_section(run: Run) -> str:
    """The run's state where it is not plain (stopped: where, and how to continue), its history
    of stops and resumes, then the curves or the true reason there are none yet."""
    epochs = run.config.get("optim.epochs")
    parts = [f'<p class="sub">{html.escape(_trained_by(run))}</p>']
    state = runstate.status(run.metrics, epochs)
    if state is not None:
        parts.append(f'<p class="stopped">{html.escape(state[0].upper() + state[1:])}</p>')
    lines = runstate.history(run.metrics)
    if any(e.get("event") == "resume" for e in run.metrics):  # a single stop: said just above
        items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
        parts.append(f'<p class="sub">History (stops and resumes):</p><ul>{items}</ul>')
    curves = training_figure(run)
    if curves is not None:
        parts.append(_img(curves, "training curves"))
    elif not (run.path / "metrics.jsonl").is_file():
        parts.append('<p class="missing">no metrics.jsonl</p>')
    else:
        reason = runstate.no_curves_reason(run.metrics, run.config)
        parts.append(f'<p class="missing">{html.escape(reason)}</p>')
    return "".join(parts)


def _trained_by(run: Run) -> str:
    """``Trained on cuda by 2 processes × batch 128 = 256 per step``, as the training's start
    line says it; from the start events of metrics.jsonl (else the score record)."""
    worlds, last_part = world_sizes(run)
    batch = run.config.get("optim.batch_size")
    text = processes_text(worlds, batch if isinstance(batch, int) else None)
    if last_part:
        text += " (its last part; the earlier parts' are not recorded)"
    devices = recorded_values(run, "device") or [run.config.get("train.device")]
    device = setting_text(joined_values(devices))
    where = f" on {device}" if devices[0] not in (None, "auto") else ""
    return f"Trained{where} by {text}." if worlds else f"Trained{where}; {text}."


def _knn_summary(run) -> str:
    """The header's figure, with what it is: "kNN top-1 30.70% at epoch 16 of 16 (backbone
    space, 1000 test images)"."""
    event = run.knn_event
    if event is None:
        return "no kNN result"
    said = f"kNN top-1 {accuracy_text(float(event['knn_top1']))}%"
    if isinstance(event.get("epoch"), int):
        epochs = run.config.get("optim.epochs")
        said += f" at epoch {event['epoch']}" + (f" of {epochs}" if epochs else "")
    where = [f"{event['knn_space']} space"] if event.get("knn_space") else []
    if event.get("knn_queries"):
        where.append(f"{event['knn_queries']} test images")
    return said + (f" ({', '.join(where)})" if where else "")


def write_report(
    run_dir: Path | str, out: Path | str | None = None, analysis: Path | str | None = None
) -> Path:
    """Write the run's HTML report (default ``run_dir/report.html``) and return its path.

    ``analysis``: a ``contrastlab analyze`` output folder to include (default: ``run_dir/analysis``
    when it holds one).
    """
    run = load_run(run_dir)
    if analysis is None and (run.path / "analysis" / "analysis.json").is_file():
        analysis = run.path / "analysis"
    if not (run.config or run.metrics or run.record is not None):
        raise UserError(
            f"{run.path} does not look like a run directory "
            "(no config.yaml, metrics.jsonl or scores/)"
        )
    analysis = Path(analysis) if analysis else None
    # read (and so checked) before any figure is drawn: a wrong --analysis is one line, early
    result = None
    if analysis is not None:
        from contrastlab.analysis import load_analysis

        result = load_analysis(analysis)
    out = Path(out) if out is not None else run.path / "report.html"
    title = html.escape(run.name)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary = _knn_summary(run)
    state = runstate.status(run.metrics, run.config.get("optim.epochs"))
    if state is not None:  # said at the top too: the first thing to know about the run
        summary += f" · {html.escape(state)}"
    sections = [
        ("Configuration", _config_section(run)),
        ("Training", _training_section(run)),
        ("Pos and neg scores", _scores_section(run)),
        ("Evaluation", _eval_section(run)),
        ("Encoder analysis", _analysis_section(analysis, result)),
        ("Checkpoints", _checkpoint_section(run)),
    ]
    body = "".join(f"<h2>{name}</h2>\n{content}\n" for name, content in sections)
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>contrastlab report: {title}</title><style>{_CSS}</style></head>\n<body>\n"
        f'<h1>{title}</h1><p class="sub">{html.escape(str(run.path))} · {summary} · '
        f"generated {stamp}</p>\n{body}</body></html>\n"
    )
    return write_text(out, page)
