"""What a run directory's ``metrics.jsonl`` says about the run's course: where it stopped, when it
was resumed and what changed then, and so why a part of it (training curves, scores) is missing.

``report`` and ``scores`` read a run through these, so that a run stopped inside its first epoch
is described as such, not as one trained without metrics or with ``scores.record=false``.
"""

from __future__ import annotations

import json
from pathlib import Path

from contrastlab.errors import plural, signal_text

RESUME_HINT = "to continue, run the same train command with train.resume=auto"
# events whose lines are training curves (report) or show that an epoch ended
_CURVE_EVENTS = ("train", "epoch", "knn")


def flatten(data, prefix: str = "") -> dict:
    """Nested dicts to dotted keys (lists stay values)."""
    out = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
    elif prefix:
        out[prefix[:-1]] = data
    return out


def read_metrics(path: Path) -> list[dict]:
    """The JSON objects of a metrics.jsonl; blank, broken or non-object lines are skipped."""
    lines = []
    if not path.is_file():
        return lines
    for text in path.read_text(errors="replace").splitlines():
        try:
            obj = json.loads(text)
        except ValueError:
            continue  # e.g. a line cut short by a crash
        if isinstance(obj, dict):
            lines.append(obj)
    return lines


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _complete(event: dict) -> int | None:
    """Completed epochs at an event: ``epochs_complete``, or ``epoch`` (which counts them in the
    checkpoint, stopped and resume events of older runs too)."""
    done = _int(event.get("epochs_complete"))
    return done if done is not None else _int(event.get("epoch"))


def _where(event: dict) -> str:
    """``in epoch 1 after 2 of its 36 steps`` (inside an epoch) or ``after epoch 3``."""
    done, batch = _complete(event), _int(event.get("batch_in_epoch"))
    if done is None:
        return ""
    if batch is None:
        return f"after epoch {done}"
    running = _int(event.get("in_epoch")) or done + 1
    of = _int(event.get("steps_per_epoch"))
    return f"in epoch {running} after {batch}{f' of its {of}' if of else ''} steps"


def stop_text(event: dict, epochs: int | None = None) -> str:
    """A ``stopped`` event as the stop line says it: ``stopped by SIGTERM in epoch 1 after 2 of
    its 3 steps (0 of 12 epochs complete, step 2)``."""
    done, step = _complete(event), _int(event.get("step"))
    counts = []
    if done is not None:
        counts.append(
            f"{done} of {plural(epochs, 'epoch')} complete"
            if epochs
            else f"{plural(done, 'epoch')} complete"
        )
    if step is not None:
        counts.append(f"step {step}")
    where = _where(event)
    name = event.get("signal")
    said = f"stopped by {signal_text(name) if name else 'a stop signal'}"
    said += f" {where}" if where else ""
    return said + (f" ({', '.join(counts)})" if counts else "")


def setting_text(value, sep: str = ",") -> str:
    """A setting's value as a YAML file or the command line spells it, for every message, label
    and table: ``null``, ``true``, ``false``, ``0.1`` (floats in at most 6 significant digits),
    ``step``; a list as its items joined by ``sep`` (``color,rotation``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return sep.join(setting_text(v, sep) for v in value)
    return str(value)


def processes_text(worlds: list[int], batch: int | None) -> str:
    """How many processes trained and what batch each step took: ``1 process, batch 256 per
    step``, ``2 processes × batch 128 = 256 per step`` (``optim.batch_size`` is the batch of all
    processes together), or ``2→1 processes, batch 256 per step`` where a resume changed their
    number. ``batch`` None: the processes only."""
    if not worlds:
        return "number of processes not recorded"
    if len(set(worlds)) > 1:
        said = "→".join(map(str, worlds)) + " processes"
        return said + (f", batch {batch} per step" if batch else "")
    world = worlds[0]
    if not batch:
        return f"{world} process{'es' if world != 1 else ''}"
    if world == 1:
        return f"1 process, batch {batch} per step"
    return f"{world} processes × batch {batch // world} = {batch} per step"


def flow_text(value) -> str:
    """A setting's value as a YAML file spells it, a list in flow form (``[1, 2]``), for the
    messages and tables that show one value (``setting_text`` joins a list's items, for labels)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(flow_text(v) for v in value) + "]"
    return setting_text(value)


def change_text(key: str, old, new) -> str:
    """``optim.milestones [1] -> [2]``: a changed setting, as resume warnings and history say it."""
    return f"{key} {flow_text(old)} -> {flow_text(new)}"


def _change(key: str, values) -> str:
    old, new = values if isinstance(values, list) and len(values) == 2 else (None, values)
    return change_text("processes" if key == "world_size" else key, old, new)


def resume_text(event: dict) -> str:
    """``resumed after epoch 1 (step 3) from runs/x/checkpoints/last.pt; changed: optim.epochs
    2 -> 3, processes 2 -> 1`` (or ``nothing changed``)."""
    where = _where(event)
    step = _int(event.get("step"))
    said = (
        "resumed" + (f" {where}" if where else "") + (f" (step {step})" if step is not None else "")
    )
    if event.get("checkpoint"):
        said += f" from {event['checkpoint']}"
    changed = event.get("changed")
    if isinstance(changed, dict) and changed:
        said += "; changed: " + ", ".join(_change(k, v) for k, v in changed.items())
    else:
        said += "; same settings"
    return said


def history(metrics: list[dict]) -> list[str]:
    """One line per stop and resume of the run, in order (empty: trained in one go). Epochs are
    counted without "of N": ``optim.epochs`` may have been raised on a resume since."""
    out = []
    for event in metrics:
        if event.get("event") == "stopped":
            out.append(stop_text(event))
        elif event.get("event") == "resume":
            out.append(resume_text(event))
    return out


def last_stop(metrics: list[dict]) -> dict | None:
    """The ``stopped`` event the run ends with (nothing resumed it since), else None."""
    for event in reversed(metrics):
        kind = event.get("event")
        if kind == "stopped":
            return event
        if kind in ("resume", "start", *_CURVE_EVENTS):
            return None
    return None


def epochs_done(metrics: list[dict]) -> int:
    """The epochs the run has completed by its ``epoch`` events (0: none yet)."""
    done = [_int(e.get("epoch")) for e in metrics if e.get("event") == "epoch"]
    return max((d for d in done if d is not None), default=0)


def finished(metrics: list[dict], epochs: int) -> bool:
    """Whether the run has completed ``epochs`` epochs and did not stop after its last one (a stop
    in the final kNN monitor leaves it to a resume): a script's test before it trains again."""
    return epochs_done(metrics) >= epochs and last_stop(metrics) is None


def status(metrics: list[dict], epochs: int | None = None) -> str | None:
    """The run's state now, where it is not plain: stopped (and how to continue), else None."""
    stop = last_stop(metrics)
    if stop is None:
        return None
    return f"{stop_text(stop, epochs)}; {RESUME_HINT}"


def no_curves_reason(metrics: list[dict], config: dict) -> str:
    """Why a run directory with a metrics.jsonl has no training curves to draw (a stop is only
    placed: ``status`` says it with the way to continue)."""
    every = config.get("train.log_every")
    when = (
        f"every train.log_every={every} steps and at each epoch's end"
        if every
        else "every train.log_every steps and at each epoch's end"
    )
    stop = last_stop(metrics)
    if stop is not None:
        step = _int(stop.get("step"))
        return (
            f"no training curves yet: the run stopped at step {step}, before its first metrics "
            f"line (one is written {when})"
        )
    return (
        "no training curves yet: metrics.jsonl holds no step (the first line is written "
        f"{when}); the run is still starting, or ended before it"
    )


def no_scores_reason(config: dict, metrics: list[dict], epochs: int | None = None) -> str:
    """Why a run directory has no ``scores/meta.json``, and what to do: the cause and its advice,
    from the run's config (``scores.record``) and its metrics.jsonl (did an epoch end?)."""
    if not config:
        return "it has no scores/meta.json, and no config.yaml to say whether it recorded scores"
    if config.get("scores.record", True) is False:
        return (
            "it was trained with scores.record=false; train with scores.record=true to record them"
        )
    if epochs_done(metrics):
        return (
            "scores.record=true, but scores/meta.json is missing (deleted, or not copied with "
            "the run directory)"
        )
    stop = last_stop(metrics)
    if stop is not None:
        return (
            f"it {stop_text(stop, epochs)}, before its first epoch ended: scores are written at "
            "the end of each epoch (the partial epoch is kept in its checkpoint); resume it "
            "(run the same train command with train.resume=auto) to record them"
        )
    return (
        "it has not finished its first epoch (scores are written at the end of each epoch); "
        "it is still running, or ended without a stop line (killed)"
    )


def file_as_run_dir(path: Path) -> str | None:
    """The one-line error for a file given where a run directory belongs (a checkpoint, also
    one that does not exist, by its .pt suffix), naming the run directory to give; else None."""
    if not (path.is_file() or path.suffix == ".pt"):
        return None
    parent = path.parent
    run = parent.parent if parent.name in ("checkpoints", "scores") else parent
    what = "a checkpoint file" if path.suffix == ".pt" else "a file"
    what += "" if path.exists() else " (which does not exist)"
    return (
        f"{path} names {what}, not a run directory; give its run directory (the folder that "
        f"holds config.yaml, metrics.jsonl and checkpoints/), e.g. {run}"
    )


def run_dir_reason(run_dir: Path) -> str:
    """``no_scores_reason`` for a run directory on disk (its config.yaml and metrics.jsonl)."""
    import yaml

    config = {}
    try:
        data = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
        if isinstance(data, dict):
            config = flatten(data)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        pass
    return no_scores_reason(
        config, read_metrics(Path(run_dir) / "metrics.jsonl"), config.get("optim.epochs")
    )
