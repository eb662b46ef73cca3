"""Checkpoints: written durably, verified on load, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and Python primitives (no pickled objects), so loading one
never runs code from the file. The model state holds the momentum encoder and the queues.

Durability follows what databases do: the state goes to a temporary file in the checkpoint's own
directory, is flushed and ``fsync``-ed, renamed over the target, and the directory is ``fsync``-ed
so that the rename itself survives a power cut. A SHA-256 of the payload (every tensor's bytes and
every plain value, in a canonical order) is stored in the file and checked on load, so a damaged
file is reported instead of loaded. Weights and buffers that are not finite are refused on save
and on load: a diverged model never becomes "the last good checkpoint".
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from contrastlab.atomic import TEMP_MARK, temp_path, write_atomic  # noqa: F401 - re-exported
from contrastlab.config import Config, config_from_dict, config_to_dict
from contrastlab.errors import TrainingDiverged, UserError, as_path

FORMAT = "contrastlab-checkpoint-v1"

# Config keys that change the shape or meaning of the saved state: a checkpoint can only be
# resumed or evaluated with the same values.
ARCHITECTURE_KEYS = (
    "method",
    "model.backbone",
    "model.width",
    "model.cifar_stem",
    "model.head",
    "model.head_hidden",
    "model.dim",
    "moco.queue_size",
    "looc.augmentations",
    "looc.plus_plus",
)


CHECKSUM_KEY = "checksum"


def _update_digest(h, value) -> None:
    """Feed ``value`` (nested dicts, lists, tensors, plain values) into ``h`` in a canonical order."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, str(k))):
            h.update(f"K{type(key).__name__}:{key!s}".encode())
            _update_digest(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"L{type(value).__name__}{len(value)}".encode())
        for item in value:
            _update_digest(h, item)
    else:
        h.update(f"V{type(value).__name__}:{value!r}".encode())


def payload_checksum(state: dict) -> str:
    """SHA-256 (hex) of everything in a checkpoint except the checksum itself."""
    h = hashlib.sha256()
    _update_digest(h, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return h.hexdigest()


def nonfinite_entries(tensors: dict) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` holding NaN or +-inf."""
    return [
        name
        for name, t in tensors.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(t.isfinite().all())
    ]


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temporary files left in ``folder`` by an interrupted write; returns them."""
    removed = []
    if folder.is_dir():
        for p in folder.glob(f".*{TEMP_MARK}*"):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def durable_write(path: Path, write, also: tuple[Path, ...] = ()) -> None:
    """Write ``path`` (and identical copies ``also``, renamed first) through a temporary file:
    ``contrastlab.atomic.write_atomic``, which every writer of contrastlab uses."""
    write_atomic(path, write, also)


def save_checkpoint(path: Path, state: dict, also: tuple[Path, ...] = ()) -> None:
    """Write ``state`` durably to ``path`` (and to each of ``also`` first: e.g. ``best.pt``).

    Refuses (``TrainingDiverged``) a model state with NaN or infinite weights or buffers, and
    stores the payload's SHA-256 under ``"checksum"``, which ``read_checkpoint`` verifies.
    """
    path = Path(path)
    bad = nonfinite_entries(state.get("model", {}))
    if bad:
        intact = (
            f"the last good checkpoint {path} is intact" if path.exists() else "none was written"
        )
        raise TrainingDiverged(
            f"the model holds NaN or infinite values ({_listed(bad)}) at epoch "
            f"{state.get('epoch')}, step {state.get('step')}; it was not saved and {intact}; "
            "lower optim.lr, or check the data for broken images"
        )
    state = {**state, CHECKSUM_KEY: payload_checksum(state)}
    durable_write(path, lambda f: torch.save(state, f), also)


def _listed(names: list[str], limit: int = 4) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def make_state(
    cfg: Config,
    model: nn.Module,
    optimizer,
    epoch: int,
    step: int,
    best_metric: float | None,
    metrics: dict | None = None,
    normalization: tuple | None = None,
) -> dict:
    """The checkpoint dict. ``normalization`` = (mean, std) per channel that the training images
    were normalized with; evaluation with ``--norm checkpoint`` uses exactly these."""
    return {
        "format": FORMAT,
        "config": config_to_dict(cfg),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "epoch": epoch,  # number of completed epochs
        "step": step,
        "best_metric": best_metric,
        "metrics": metrics or {},
        "normalization": (
            {
                "mean": [float(v) for v in normalization[0]],
                "std": [float(v) for v in normalization[1]],
            }
            if normalization is not None
            else None
        ),
    }


REQUIRED = {"config": dict, "model": dict}


def require_file(path: str | Path, what: str = "checkpoint", foreign: bool = False) -> None:
    """A ``UserError`` unless ``path`` is a file: ``checkpoint X does not exist`` (the path as
    given), or ``X is a folder, not a checkpoint file; ...``. The one check of every command
    that reads a checkpoint, made before any other work (``foreign``: another project's file,
    as in :func:`load_torch_file`)."""
    path = Path(path)
    if path.is_dir():
        where = (
            "the other project's checkpoint file, e.g. the .pth or .ckpt it saved"
            if foreign
            else "a .pt file (a run keeps its checkpoints in <run>/checkpoints/)"
        )
        raise UserError(f"{path} is a folder, not a {what} file; give {where}")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")


def load_torch_file(
    path: Path, what: str, pickled: Callable[[str], str], foreign: bool = False
) -> object:
    """``torch.load(path, weights_only=True)`` with one line per kind of file it cannot read.

    ``what`` names the file in messages ("checkpoint"); ``pickled(name)`` gives the message for a
    file that pickles Python objects (``name``: the refused global, or ``""``). A folder, a
    missing or empty file, a zip archive cut short (an unfinished copy or write), a zip that is
    not a ``torch.save`` file and bytes that are not a pickle each get their own ``UserError``
    instead of torch's multi-line internals. ``foreign``: the file is another project's (read by
    ``contrastlab convert``): the advice is to download it or save it again from there, not to
    use another checkpoint of a contrastlab run.
    """
    in_run = path.parent.name == "checkpoints"
    require_file(path, what, foreign)
    if foreign:
        again = "download it again, or save it again with the project that made it"
    elif in_run:
        again = "copy it again, or use another checkpoint of the run (<run>/checkpoints/)"
    else:
        again = "copy it again or write it again (contrastlab train, convert or export)"
    damaged = f"an unfinished copy, download or write, or a full disk; {again}"
    if path.stat().st_size == 0:
        raise UserError(f"{what} {path} is empty (0 bytes): {damaged}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - translated by kind below
        text = str(e)
        low = text.lower()
    with open(path, "rb") as f:
        head = f.read(4)
    is_zip = head == b"PK\x03\x04"  # torch.save writes a zip archive (before torch 1.6: a pickle)
    is_pickle = head.startswith(b"\x80")
    if is_zip and not zipfile.is_zipfile(path):  # no end-of-archive record: the end is missing
        size = path.stat().st_size
        raise UserError(
            f"{what} {path} is cut short ({size:,} bytes, its end is missing): {damaged}"
        )
    if (is_zip and not _has_torch_layout(path)) or not (is_zip or is_pickle):
        written_by = "the other project" if foreign else "contrastlab train or convert"
        raise UserError(
            f"{path} is not a PyTorch checkpoint (its contents are not a torch.save file); "
            f"give a file written by torch.save, e.g. by {written_by}"
        )
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found or "weights only" in low:
        raise UserError(pickled(found.group(1) if found else ""))
    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    if len(first) > 160:
        first = first[:157] + "..."
    raise UserError(f"cannot read {what} {path}: {first}; the file is damaged or not a checkpoint")


def _has_torch_layout(path: Path) -> bool:
    """Whether the zip archive at ``path`` holds the ``<name>/data.pkl`` that torch.save writes."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _convertible(state: object) -> str | None:
    """The ``contrastlab convert --from`` format that recognizes the layout of ``state``, if any."""
    from contrastlab.convert import detect_format

    try:
        return detect_format(state)
    except UserError:
        return None


def read_checkpoint(path: str | Path, verify: bool = True) -> dict:
    """Load a checkpoint without unpickling objects; check its format, keys, checksum, values.

    Every problem is a one-line ``UserError`` naming the file: missing, unreadable or damaged,
    holding pickled Python objects (not loaded), tagged as a checkpoint but missing ``config`` or
    ``model``, a checksum that does not match (a flipped byte), or non-finite weights.
    """
    path = as_path(path, "checkpoint")
    state = load_torch_file(
        path,
        "checkpoint",
        pickled=lambda _name: (
            f"{path} holds pickled Python objects, not only tensors and plain values, and was "
            "not loaded (loading it could run code from the file); contrastlab checkpoints "
            "never hold such objects"
        ),
    )
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        source = _convertible(state)
        if source:
            raise UserError(
                f"{path} is not a contrastlab checkpoint (expected format {FORMAT}); it has the "
                f"layout of a {source} checkpoint, which becomes one with: contrastlab convert "
                f"{path} --from {source} --out {path.stem}-contrastlab.pt"
            )
        raise UserError(
            f"{path} is not a contrastlab checkpoint (expected format {FORMAT}) nor a "
            "checkpoint that contrastlab convert recognizes (MoCo, PyContrast, lightly, "
            "solo-learn or a torchvision ResNet state dict); give a .pt file written by "
            "contrastlab train or convert"
        )
    for key, kind in REQUIRED.items():
        if not isinstance(state.get(key), kind):
            raise UserError(
                f"{path} is tagged as a contrastlab checkpoint but has no '{key}' "
                f"{kind.__name__}; the file is incomplete or was not written by contrastlab"
            )
    if verify and CHECKSUM_KEY in state and state[CHECKSUM_KEY] != payload_checksum(state):
        raise UserError(
            f"checkpoint {path} is damaged: its contents do not match the checksum stored in it"
        )
    bad = nonfinite_entries(state["model"])
    if bad:
        raise UserError(
            f"checkpoint {path} holds NaN or infinite weights or buffers ({_listed(bad)}); "
            "it comes from a diverged run and was not used"
        )
    return state


def _first(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def dotted_value(d: dict, dotted: str):
    """``d["model"]["width"]`` for ``"model.width"`` in a config as a checkpoint holds it (nested
    dicts); ``{}`` where a part is missing."""
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d


def config_differences(saved: dict, current: dict, keys=ARCHITECTURE_KEYS) -> list[str]:
    return [
        f"{k}: checkpoint {dotted_value(saved, k)!r}, now {dotted_value(current, k)!r}"
        for k in keys
        if dotted_value(saved, k) != dotted_value(current, k)
    ]


def _leaves(data, prefix: str = "") -> dict:
    if not isinstance(data, dict):
        return {prefix[:-1]: data}
    out = {}
    for key, value in data.items():
        out.update(_leaves(value, f"{prefix}{key}."))
    return out


# Keys that say how to run, not what is trained: changing them on resume is routine.
OPERATIONAL_KEYS = ("train.resume", "train.progress", "train.overwrite", "data.num_workers")


def changed_settings(saved: dict, current: dict) -> dict[str, list]:
    """``{key: [checkpoint value, current value]}`` for every setting that differs between the
    configuration a checkpoint was trained with and the current one, the operational keys
    (``OPERATIONAL_KEYS``) left out."""
    before, after = _leaves(saved), _leaves(current)
    return {
        k: [before.get(k), after.get(k)]
        for k in sorted(set(before) | set(after))
        if k not in OPERATIONAL_KEYS and before.get(k) != after.get(k)
    }


def check_compatible(path: Path, state: dict, cfg: Config) -> None:
    diffs = config_differences(state["config"], config_to_dict(cfg))
    if diffs:
        raise UserError(
            f"checkpoint {path} comes from a different model ({'; '.join(diffs)}); resume "
            "it with the settings it was trained with, or start a new run (another name, "
            "without train.resume)"
        )


def state_mismatches(model: nn.Module, saved: dict) -> list[str]:
    """What keeps ``saved`` from loading into ``model``: missing and unexpected keys, shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [
        f"{k} (checkpoint {list(saved[k].shape)}, model {list(own[k].shape)})"
        for k in own
        if k in saved
        and isinstance(saved[k], torch.Tensor)
        and tuple(saved[k].shape) != tuple(own[k].shape)
    ]
    out = []
    if missing:
        out.append(f"missing keys {_listed(missing)}")
    if unexpected:
        out.append(f"unexpected keys {_listed(unexpected)}")
    if shapes:
        out.append(f"different shapes {_listed(shapes, 3)}")
    return out


def load_model_state(model: nn.Module, state: dict, path: Path) -> None:
    problems = state_mismatches(model, state["model"])
    if problems:
        raise UserError(f"checkpoint {path} does not fit this model: {'; '.join(problems)}")
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        raise UserError(f"checkpoint {path} does not fit this model: {_first(e)}") from None


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the trained method from a checkpoint, in eval mode: returns ``(model, cfg)``.

    In eval mode ``model(views)`` scores the views without changing the model (no momentum
    update, no enqueue); ``model.train()`` makes it a training step again."""
    model, cfg, _ = load_model_and_normalization(path, device)
    return model, cfg


# A converted checkpoint (contrastlab convert) holds a full config, but only part of it is known:
# the rest are contrastlab's defaults, which no command may show as the encoder's settings.
UNKNOWN = "unknown (converted from {source})"


def converted_source(state: dict) -> str | None:
    """The file a converted checkpoint was converted from (its name), ``"another project"``
    where the record does not say; None for a checkpoint trained here."""
    converted = state.get("converted")
    if not isinstance(converted, dict):
        return None
    source = converted.get("source")
    return Path(source).name if isinstance(source, str) and source else "another project"


def inferred_settings(state: dict) -> list[str]:
    """The config keys of a converted checkpoint that its weights show: the architecture (read
    from the tensor shapes) and, where a projection head was kept, its kind and sizes; and the
    name, which convert takes from the source file."""
    keys = ["name", "model.backbone", "model.width", "model.cifar_stem"]
    if (state.get("converted") or {}).get("head"):
        mlp = dotted_value(state["config"], "model.head") == "mlp"
        keys += ["model.head", "model.dim", *(["model.head_hidden"] if mlp else [])]
    return keys


def known_settings(state: dict) -> list[str]:
    """The dotted config keys (``model.width``) whose values a checkpoint really knows: all of
    them for one trained here; for one converted from another project those its ``converted``
    record lists (``"known"``), or, converted by a version that recorded none, those its weights
    show (``inferred_settings``)."""
    keys = list(_leaves(state["config"]))
    if converted_source(state) is None:
        return keys
    known = state["converted"].get("known")
    if not isinstance(known, list):
        known = inferred_settings(state)
    return [k for k in keys if k in known]


def unknown_settings(state: dict) -> list[str]:
    """The dotted config keys of a checkpoint whose values are not known (a converted one's
    defaults); empty for a checkpoint trained here."""
    known = set(known_settings(state))
    return [k for k in _leaves(state["config"]) if k not in known]


def is_unknown(value) -> bool:
    """Whether ``value`` is the mark ``shown_config`` puts for an unknown setting."""
    head = UNKNOWN.split("{", 1)[0]
    return isinstance(value, str) and value.startswith(head) and value.endswith(")")


def shown_config(state: dict, known: tuple[str, ...] = ()) -> dict:
    """The checkpoint's config as commands show it: every unknown setting's value (of an encoder
    converted from another project) replaced by ``unknown (converted from <source file>)``.
    ``known``: keys to keep as they are all the same (analyze's ``augment.recipe``, the recipe
    of the views it made). Nested as ``state["config"]``; not a config to load."""
    source = converted_source(state)
    unknown = set(unknown_settings(state)) - set(known)

    def walk(node: dict, prefix: str) -> dict:
        out = {}
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                out[key] = walk(value, f"{dotted}.")
            else:
                out[key] = UNKNOWN.format(source=source) if dotted in unknown else value
        return out

    return walk(state["config"], "")


def checkpoint_feature_spaces(cfg, state: dict) -> tuple[str, ...]:
    """The feature spaces of the model a checkpoint holds (``model.feature_spaces`` once built),
    from its config alone: a converted encoder without a projection head has the backbone only."""
    from contrastlab.config import feature_spaces

    converted = state.get("converted") or {}
    return ("backbone",) if converted.get("head") is False else feature_spaces(cfg)


def refuse_missing_space(checkpoint, cfg, state: dict, space: str) -> None:
    """One line naming the checkpoint and its valid spaces when ``space`` is not one of its
    feature spaces (``checkpoint_feature_spaces``); commands that read several checkpoints call
    it for every one before any work, so that the last one's lack loses nothing.

    Raises:
        UserError: ``space`` is not a feature space of the checkpoint's model."""
    spaces = checkpoint_feature_spaces(cfg, state)
    if space not in spaces:
        raise UserError(
            f"{checkpoint}: feature space '{space}' does not exist for this model; "
            f"valid spaces: {', '.join(spaces)}"
        )


def load_model_and_normalization(path: str | Path, device: str | torch.device = "cpu"):
    """``(model, cfg, (mean, std) or None)``: the model in eval mode and the per-channel statistics
    its training images were normalized with (None for checkpoints written before they were
    stored)."""
    path = as_path(path, "checkpoint")
    return model_from_state(path, read_checkpoint(path), device)


def model_from_state(path: Path, state: dict, device: str | torch.device = "cpu"):
    """``load_model_and_normalization`` of a checkpoint already read (``read_checkpoint``)."""
    from contrastlab.methods import build_method

    cfg = config_from_dict(state["config"])
    model = build_method(cfg)
    load_model_state(model, state, path)
    converted = state.get("converted") or {}
    if converted.get("head") is False:
        # converted without a projection head (contrastlab convert): its placeholder is no space
        model.feature_spaces = ("backbone",)
    # the source project's format (contrastlab convert): a converted encoder is held in a MoCo
    # container, but it was not trained here and maybe not with MoCo (a supervised torchvision net)
    model.converted_from = converted.get("format")
    norm = state.get("normalization")
    stats = (tuple(norm["mean"]), tuple(norm["std"])) if norm else None
    return model.to(device).eval(), cfg, stats
