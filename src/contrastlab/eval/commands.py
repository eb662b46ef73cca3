"""Command-line interface of the evaluation suite: ``contrastlab eval ...`` and ``contrastlab export``.

``register(subparsers)`` is called by ``contrastlab.cli``; every handler takes the parsed
arguments and returns an exit status. Results are printed as a markdown table and written as JSON
to ``--out FILE`` or, by default, to ``<run_dir>/eval/<protocol>.json`` next to the checkpoint.
"""

from __future__ import annotations

import argparse
import math
from functools import partial
from pathlib import Path

from contrastlab.errors import UserError
from contrastlab.eval.context import DEVICES
from contrastlab.outputs import check_output, is_eval_result, is_export


def comma_list(kind: type = str, what: str = "names"):
    """An argparse ``type`` for a comma-separated list (``--corruptions a,b``, ``--shots 1,5``):
    ``kind`` converts each item. An empty list (``''``, an unset shell variable), an empty item
    (``a,,b``) or an item given twice is refused in one line, never read as "all" or ignored."""

    def parse(text: str) -> list:
        items = [v.strip() for v in text.split(",")]
        if not text.strip():
            raise argparse.ArgumentTypeError(
                f"expected one or more comma-separated {what}, got an empty list"
            )
        if not all(items):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got an empty item in '{text}'"
            )
        try:
            values = [kind(v) for v in items]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got '{text}'"
            ) from None
        twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if twice is not None:
            raise argparse.ArgumentTypeError(f"'{twice}' is given twice in '{text}'; give it once")
        return values

    return parse


_ints = comma_list(int, "integers")
_names = comma_list(str, "names")


def _common(checkpoint_nargs: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    if checkpoint_nargs is None:
        p.add_argument("checkpoint", metavar="CHECKPOINT", help="a contrastlab checkpoint (.pt)")
    else:
        p.add_argument(
            "checkpoints",
            metavar="CHECKPOINT",
            nargs=checkpoint_nargs,
            help="contrastlab checkpoints (.pt)",
        )
    g = p.add_argument_group("common options")
    spaces = "MoCo adds z, LooC z0, color, rotation, texture and, for LooC++, concat"
    g.add_argument(
        "--space",
        default=None,
        help=(
            "feature space: backbone (default; for knn: the space the run's kNN monitor read, "
            f"train.knn_space); {spaces}"
            if checkpoint_nargs is None
            else "feature space of every protocol and checkpoint, knn included: backbone "
            f"(default); {spaces}"
        ),
    )
    g.add_argument(
        "--dataset",
        default=None,
        help="dataset to evaluate on (synthetic, cifar10, cifar100, stl10, imagefolder); "
        "default: the checkpoint's own",
    )
    g.add_argument("--data-path", default=None, metavar="DIR", help="root folder of --dataset")
    g.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out (and count) unreadable images of an image folder instead of stopping "
        "(default: the checkpoint's data.skip_bad_images)",
    )
    g.add_argument("--device", default="auto", choices=DEVICES, help="auto (default), cpu or cuda")
    g.add_argument(
        "--batch-size", type=int, default=256, help="images per forward pass of feature extraction"
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="data-loading processes (default: the checkpoint's data.num_workers)",
    )
    g.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="cache extracted features in DIR (keyed by checkpoint, dataset, transform, space)",
    )
    g.add_argument(
        "--norm",
        choices=("checkpoint", "target"),
        default="checkpoint",
        help="normalize with the statistics the model was trained with (default) "
        "or the evaluation dataset's own",
    )
    g.add_argument(
        "--max-train",
        type=int,
        default=None,
        metavar="N",
        help="use a fixed random subset of N training images (quick runs)",
    )
    g.add_argument(
        "--max-test",
        type=int,
        default=None,
        metavar="N",
        help="use a fixed random subset of N test images (quick runs)",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="seed of the subsets, splits and classifiers drawn"
    )
    g.add_argument(
        "--no-progress",
        action="store_true",
        help="hide progress bars (without a bar, a line on stderr every 30 s still says how far "
        "a long step is)",
    )
    g.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        # eval all writes a folder (--out-dir) and refuses --out with a line that says so
        help="write the JSON result here (default: <run_dir>/eval/<protocol>[-<variant>]"
        "[-<selection>][-<space>][-<dataset>[-<folder>]][-sub<train>x<test>][-<checkpoint>].json: "
        "-fast for linear --fast, -knn for corruption --classifier knn, -allway or -episodes for "
        "fewshot --which; -<selection> for sub-results chosen other than by default, e.g. "
        "factors-texture.json, corruption-severities1+5.json, fewshot-ways10.json; -<space> for a space other than backbone, e.g. knn-z.json; -<dataset> with "
        "--dataset, -<folder> the name of --data-path; -sub<train>x<test> with --max-train / "
        "--max-test, e.g. knn-sub200x100.json, all for a split not limited; -<checkpoint> for any "
        "checkpoint other than checkpoints/last.pt)"
        if checkpoint_nargs is None
        else argparse.SUPPRESS,
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file that is not an earlier eval result"
        if checkpoint_nargs is None
        else "replace existing files where each result is saved (<run_dir>/eval/<protocol>"
        "[...].json) that are not earlier eval results",
    )
    p.set_defaults(setting_flags=EVAL_FLAGS)
    return p


# The config settings that eval's flags stand for, as its error messages name them
# (contrastlab.errors.setting); a setting not listed has no flag in eval.
EVAL_FLAGS = {
    "data.name": "--dataset",
    "data.path": "--data-path",
    "data.skip_bad_images": "--skip-bad-images",
    "data.num_workers": "--workers",
}


# Numeric options and their valid values: (test, description). Checked before any work.
_OPTION_RANGES = {
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "workers": (lambda v: v >= 0, "0 or more"),
    "max_train": (lambda v: v >= 1, "at least 1"),
    "max_test": (lambda v: v >= 1, "at least 1"),
    "k": (lambda v: v >= 1, "at least 1"),
    # as train.knn_temperature: below 0.001 the weights overflow, and every vote is rounding
    "temperature": (lambda v: 0.001 <= v <= 10, "in [0.001, 10]"),
    "seed": (lambda v: 0 <= v < 2**32, "in [0, 4294967295]"),
    "severities": (lambda v: len(v) > 0 and all(1 <= s <= 5 for s in v), "within 1..5"),
    "val_fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
    "epochs": (lambda v: v >= 1, "at least 1"),
    "lr": (lambda v: v > 0 and math.isfinite(v), "a positive number"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0 and math.isfinite(v), "0 or more"),
    "C": (lambda v: v > 0 and math.isfinite(v), "a positive number"),
    "trials": (lambda v: v >= 1, "at least 1"),
    "ways": (lambda v: v >= 2, "at least 2"),
    "queries": (lambda v: v >= 1, "at least 1"),
    "episodes": (lambda v: v >= 1, "at least 1"),
    "shots": (lambda v: len(v) > 0 and min(v) >= 1, "one or more K values, each at least 1"),
    "episode_shots": (
        lambda v: len(v) > 0 and min(v) >= 1,
        "one or more K values, each at least 1",
    ),
}


def check_options(args) -> None:
    """Every numeric option of the parsed ``args`` in its valid range, and ``--cache`` a folder
    (one line otherwise)."""
    for name, (ok, valid) in _OPTION_RANGES.items():
        value = getattr(args, name, None)
        if value is not None and not ok(value):
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} must be {valid}, got {value}")
    cache = getattr(args, "cache", None)
    if cache is not None and Path(cache).exists() and not Path(cache).is_dir():
        raise UserError(f"--cache {cache} is a file; give a folder to keep the features in")


# eval linear's options of one mode only, with their defaults (None in the parser, so that an
# option given for the other mode is seen and refused instead of silently ignored)
LINEAR_MOCO_DEFAULTS = {"epochs": 100, "lr": 30.0, "momentum": 0.9, "weight_decay": 0.0}
LINEAR_FAST_DEFAULTS = {"C": None, "val_fraction": 0.2}
# eval fewshot's options of one branch (--which) only, with their defaults (likewise)
FEWSHOT_ALLWAY_DEFAULTS = {"shots": [5, 10], "trials": 5}
FEWSHOT_EPISODE_DEFAULTS = {
    "ways": 5,
    "episode_shots": [1, 5],
    "queries": 15,
    "episodes": 600,
    "classifier": "centroid",
}


def refuse_unused(args, options: tuple[str, ...], why: str) -> None:
    """One line if any of ``options`` (argparse dests whose default is None) was given although
    the command will not use it; ``why`` completes "... apply only to ..."."""
    given = ["--" + name.replace("_", "-") for name in options if getattr(args, name) is not None]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise UserError(f"{' '.join(given)} {verb} only to {why}; leave it out or change that")


def _monitor_space(checkpoint: str) -> str:
    """The space of the checkpoint's kNN monitor (``train.knn_space``), so that ``eval knn``
    reproduces the figure its training printed."""
    from contrastlab.checkpoint import read_checkpoint

    train = read_checkpoint(checkpoint, verify=False)["config"].get("train", {})
    return train.get("knn_space") or "backbone"


def _context(
    args,
    checkpoint: str,
    data_path: str | None = None,
    dataset: str | None = None,
    data_like=None,
):
    from contrastlab.eval.context import EvalContext, refuse_path_of_generated

    check_options(args)
    refuse_path_of_generated(dataset or args.dataset, data_path or args.data_path)
    if args.space is None and args.func is not _knn:
        args.space = "backbone"
    if args.space is None and args.out is None:  # the default file name holds the space
        args.space = _monitor_space(checkpoint)
    if getattr(args, "func", None) is not _all:
        check_output(
            result_file(args, checkpoint, dataset),
            inputs=[checkpoint],
            replaceable=is_eval_result,
            what="an eval result",
            overwrite=args.overwrite,
        )
    if args.space is None:
        args.space = _monitor_space(checkpoint)
    return EvalContext.from_checkpoint(
        checkpoint,
        dataset=dataset or args.dataset,
        data_path=data_path or args.data_path,
        device=args.device,
        space=args.space,
        batch_size=args.batch_size,
        num_workers=args.workers,
        cache=args.cache,
        progress=not args.no_progress,
        norm=args.norm,
        max_train=args.max_train,
        max_test=args.max_test,
        seed=args.seed,
        skip_bad_images=args.skip_bad_images,
        data_like=data_like,
    )


def _own_data(checkpoint: str) -> tuple[str, str | None]:
    """The dataset (name, path) a checkpoint was trained on, from its config."""
    from contrastlab.checkpoint import read_checkpoint, require_file

    require_file(checkpoint)  # the line every command gives, not the file system's own
    path = Path(checkpoint).resolve()
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)  # read once per file, again if it changes
    if key not in _OWN_DATA:
        data = read_checkpoint(checkpoint, verify=False)["config"].get("data", {})
        _OWN_DATA[key] = (data.get("name"), data.get("path"))
    return _OWN_DATA[key]


_OWN_DATA: dict[tuple, tuple[str, str | None]] = {}


def _dataset_tag(args, checkpoint: str | None = None, dataset: str | None = None) -> str | None:
    """Names a result on a dataset other than the run's own: the dataset evaluated on (``dataset``
    where the command chooses it, as ``eval factors`` chooses synthetic, else ``--dataset``, else
    the checkpoint's own), plus the name of ``--data-path`` (``imagefolder-f1``); None where that
    is the checkpoint's own dataset and folder, so that one result never gets two names. For
    ``eval transfer`` its two folders (``A-B``, or ``flowers-train-test`` for two folders of one
    parent), so that another pair of folders does not replace the result."""
    train_dir, test_dir = getattr(args, "train_dir", None), getattr(args, "test_dir", None)
    if train_dir and test_dir:
        train, test = Path(train_dir).resolve(), Path(test_dir).resolve()
        tag = f"{train.name}-{test.name}"
        return f"{train.parent.name}-{tag}" if train.parent == test.parent else tag
    if getattr(args, "out", None):
        return None  # --out names the file
    dataset = dataset or getattr(args, "dataset", None)
    path = getattr(args, "data_path", None)
    if checkpoint is not None:
        own, own_path = _own_data(checkpoint)
        same_path = path is None or (
            own_path is not None and Path(path).resolve() == Path(own_path).resolve()
        )
        if dataset in (None, own) and same_path:
            return None
        dataset = dataset or own  # --data-path alone: the checkpoint's dataset, another folder
    if not dataset:
        return None
    return f"{dataset}-{Path(path).name}" if path else dataset


def _subset(args) -> str | None:
    """``sub200x100`` for a result on subsets (``--max-train`` / ``--max-test``), so that it
    replaces neither the full sets' result nor another subset's."""
    from contrastlab.eval.results import subset_tag

    return subset_tag(getattr(args, "max_train", None), getattr(args, "max_test", None))


def _selection(args, protocol: str | None = None) -> str | None:
    """The sub-results the command's ``protocol`` was asked for, where they name its result
    (``factors-texture.json`` for ``--factors texture``; see
    :func:`~contrastlab.eval.results.selection_tag`), so that it does not replace the full one."""
    from contrastlab.eval.results import selection_tag

    protocol = protocol or getattr(args, "protocol", "eval")
    options = ("factors", "corruptions", "severities", "shots", "ways", "episode_shots")
    return selection_tag(protocol, {name: getattr(args, name, None) for name in options})


def _variant(args) -> str | None:
    """The variant of the command's protocol that names its result (``linear-fast.json``),
    from the options that choose it (``--mode``, ``--classifier``)."""
    from contrastlab.eval.results import variant_of

    setup = {k: getattr(args, k, None) for k in ("mode", "classifier", "which")}
    return variant_of(getattr(args, "protocol", "eval"), setup)


def command_dataset(args) -> str | None:
    """The dataset an eval command evaluates on where it chooses one itself: ``eval factors``
    reads the synthetic set unless ``--dataset`` names another; None for the others (their
    ``--dataset``, else the checkpoint's own)."""
    if getattr(args, "protocol", None) == "factors":
        return args.dataset or "synthetic"
    return None


def result_file(args, checkpoint: str | None = None, dataset: str | None = None) -> Path:
    """The file an ``eval`` command writes its result to: ``--out``, else the name its options
    give (:func:`~contrastlab.eval.results.result_path`). Scripts that run the command read the
    result from here: ``result_file(build_parser().parse_args(["eval", "linear", CKPT, ...]))``
    (with ``--space`` given: without it, ``eval knn`` takes the checkpoint's monitor space)."""
    from contrastlab.eval.results import result_path

    checkpoint = checkpoint or args.checkpoint
    return result_path(
        checkpoint,
        getattr(args, "protocol", "eval"),
        args.out,
        args.space or "backbone",
        _dataset_tag(args, checkpoint, dataset or command_dataset(args)),
        _variant(args),
        _subset(args),
        _selection(args),
    )


def _finish(args, result: dict, checkpoint: str, dataset: str | None = None) -> int:
    """Print ``result`` and write it where ``result_path`` says (``dataset``: the dataset the
    command chose, as for ``_context``)."""
    from contrastlab.eval.protocols import summary_table
    from contrastlab.eval.results import result_path, variant_of, write_json

    print(summary_table(result))
    protocol = result["protocol"]
    path = write_json(
        result,
        result_path(
            checkpoint,
            protocol,
            args.out,
            args.space,
            _dataset_tag(args, checkpoint, dataset),
            variant_of(protocol, result["setup"]),
            _subset(args),
            _selection(args, protocol),
        ),
    )
    print(f"\nresult written to {path}")
    return 0


# ----------------------------------------------------------------------------------------------
# handlers
# ----------------------------------------------------------------------------------------------


def _knn(args) -> int:
    from contrastlab.eval.protocols import run_knn

    return _finish(
        args, run_knn(_context(args, args.checkpoint), args.k, args.temperature), args.checkpoint
    )


def _linear_opts(args) -> dict:
    args.mode = args.mode or "moco"  # None in the parser: "--fast --mode moco" is a conflict
    if args.mode == "fast":
        refuse_unused(args, tuple(LINEAR_MOCO_DEFAULTS), "--mode moco (this is --mode fast)")
        if args.C is not None:
            refuse_unused(args, ("val_fraction",), f"the sweep of C, which --C {args.C:g} fixes")
    else:
        refuse_unused(args, tuple(LINEAR_FAST_DEFAULTS), "--mode fast (this is --mode moco)")
    opts = {"mode": args.mode}
    for name, default in {**LINEAR_MOCO_DEFAULTS, **LINEAR_FAST_DEFAULTS}.items():
        value = getattr(args, name)
        opts[name] = default if value is None else value
    return opts


def _linear(args) -> int:
    from contrastlab.eval.protocols import run_linear

    opts = _linear_opts(args)  # before any work: options of the other mode are refused
    return _finish(args, run_linear(_context(args, args.checkpoint), **opts), args.checkpoint)


def _fewshot_opts(args) -> dict:
    allway, episodes = args.which in ("allway", "both"), args.which in ("episodes", "both")
    if not allway:
        refuse_unused(
            args,
            tuple(FEWSHOT_ALLWAY_DEFAULTS),
            "--which allway or both (this is --which episodes)",
        )
    if not episodes:
        refuse_unused(
            args,
            tuple(FEWSHOT_EPISODE_DEFAULTS),
            "--which episodes or both (this is --which allway)",
        )
    if not allway and args.classifier in (None, "centroid"):
        refuse_unused(
            args,
            ("C",),
            "the all-way protocol and --classifier logistic (this is --which episodes with "
            "--classifier centroid)",
        )
    opts = {"which": args.which}
    for name, default in {**FEWSHOT_ALLWAY_DEFAULTS, **FEWSHOT_EPISODE_DEFAULTS, "C": 1.0}.items():
        value = getattr(args, name)
        opts[name] = default if value is None else value
    opts["n_way"], opts["num_episodes"] = opts.pop("ways"), opts.pop("episodes")
    opts["required"] = fewshot_required(args)
    return opts


def fewshot_required(args) -> tuple[str, ...]:
    """The few-shot parts whose sizes were given (``--shots``; ``--ways``, ``--episode-shots``,
    ``--queries``): the user asked for them, so data that cannot support them is an error
    before any work, not a part skipped with a warning as the defaults' are."""
    given = {
        "allway": ("shots",),
        "episodes": ("ways", "episode_shots", "queries"),
    }
    return tuple(
        p for p, names in given.items() if any(getattr(args, n) is not None for n in names)
    )


def _fewshot(args) -> int:
    from contrastlab.eval.protocols import run_fewshot

    opts = _fewshot_opts(args)  # before any work: options of the other branch are refused
    return _finish(args, run_fewshot(_context(args, args.checkpoint), **opts), args.checkpoint)


def _rotation(args) -> int:
    from contrastlab.eval.protocols import run_rotation

    return _finish(args, run_rotation(_context(args, args.checkpoint)), args.checkpoint)


def _corruption_opts(args) -> dict:
    if args.classifier != "knn":
        refuse_unused(
            args,
            ("k", "temperature"),
            f"--classifier knn (this is --classifier {args.classifier})",
        )
    return {
        "classifier": args.classifier,
        "corruptions": args.corruptions,
        "severities": args.severities,
        "k": args.k,
        "temperature": args.temperature,
    }


def _corruption(args) -> int:
    from contrastlab.eval.corruption import CORRUPTIONS
    from contrastlab.eval.protocols import run_corruption

    check_options(args)
    unknown = [c for c in args.corruptions or () if c not in CORRUPTIONS]
    if unknown:  # before any features are extracted
        raise UserError(
            f"unknown corruption{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in "
            f"--corruptions; valid: {', '.join(CORRUPTIONS)}"
        )
    opts = _corruption_opts(args)  # before any work: --k / --temperature need --classifier knn
    return _finish(args, run_corruption(_context(args, args.checkpoint), **opts), args.checkpoint)


def _factors(args) -> int:
    from contrastlab.eval.protocols import run_factors

    dataset = command_dataset(args)
    ctx = _context(args, args.checkpoint, dataset=dataset)
    return _finish(args, run_factors(ctx, args.factors), args.checkpoint, dataset)


def _transfer(args) -> int:
    import dataclasses

    from contrastlab.eval.protocols import run_transfer

    if args.dataset is not None or args.data_path is not None:
        flags = [f for f, v in (("--dataset", args.dataset), ("--data-path", args.data_path)) if v]
        raise UserError(
            f"eval transfer reads its images from --train-dir and --test-dir; leave "
            f"{' and '.join(flags)} out"
        )
    # the training folder stands for the dataset until both folders are read (a converted
    # encoder names no dataset of its own)
    ctx = _context(args, args.checkpoint, data_path=args.train_dir, dataset="imagefolder")
    ctx.data_cfg = dataclasses.replace(
        ctx.cfg.data,
        name="imagefolder",
        path=None,
        holdout_fraction=0.0,
        skip_bad_images=ctx.data_cfg.skip_bad_images,  # the checkpoint's or --skip-bad-images
    )
    train = _folder(ctx.data_cfg, args.train_dir, "--train-dir")
    test = _folder(ctx.data_cfg, args.test_dir, "--test-dir", ref=train.classes)
    ctx._raw = {"train": train, "test": test}
    ctx.data_cfg = dataclasses.replace(ctx.data_cfg, path=f"{args.train_dir} -> {args.test_dir}")
    result = run_transfer(ctx, args.shots, args.trials, args.episodes)
    return _finish(args, result, args.checkpoint)


def _folder(data_cfg, folder: str, flag: str, ref: list[str] | None = None):
    """Every image of a folder with class subfolders; test classes are matched to the training
    folder's classes (``ref``, as its dataset found them: class folders holding images).
    Messages about its images name it by ``flag`` (``--test-dir``), the role the user gave it,
    not by the split it is read as (each folder is read whole, as a training split)."""
    import dataclasses

    from contrastlab.data.datasets import build_dataset
    from contrastlab.errors import settings_as_flags

    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{folder} is not a folder; pass a folder with one subfolder per class")
    if (root / "train").is_dir():
        raise UserError(
            f"{folder} has a train/ subfolder; pass the class folders' parent "
            f"(e.g. {root / 'train'}) to --train-dir / --test-dir"
        )
    cfg = dataclasses.replace(data_cfg, path=str(root), holdout_fraction=0.0)
    with settings_as_flags({**EVAL_FLAGS, "data.path": flag}):
        ds = build_dataset(cfg, "train", None)
    if not ds.num_classes:
        raise UserError(f"{folder} has no class subfolders; transfer evaluation needs labels")
    if ref is not None:
        if ds.classes != ref:
            missing = sorted(set(ds.classes) ^ set(ref))
            raise UserError(
                f"--train-dir and --test-dir must hold the same class folders; "
                f"differing: {', '.join(missing[:5])}"
            )
    return ds


def _refuse_unused_in_all(args) -> None:
    """``eval all``'s options of protocols that ``--protocols`` leaves out are refused."""
    for protocol, options in {
        "knn": ("k", "temperature"),
        "fewshot": ("shots", "trials", "ways", "episode_shots", "queries", "episodes"),
        "corruption": ("severities",),
        "linear": ("epochs",),
    }.items():
        if protocol not in args.protocols:
            refuse_unused(args, options, f"the {protocol} protocol, which --protocols leaves out")
    if args.linear_mode == "fast":
        refuse_unused(args, ("epochs",), "--linear-mode moco (this is --linear-mode fast)")


def _check_data(args):
    """Every checkpoint's feature space (``--space``) and evaluation dataset (``--dataset``,
    ``--data-path``) before any work, so that a problem with the last checkpoint loses no
    evaluation of the first. Returns the data settings of the first checkpoint that knows all
    of its own (one trained here), or None: an encoder converted from another project, whose
    data settings are unknown, is evaluated with these where it names the same dataset (one
    line says so), so that it reads the same test images as the runs beside it."""
    from contrastlab.checkpoint import read_checkpoint, refuse_missing_space
    from contrastlab.config import config_from_dict
    from contrastlab.eval.context import (
        evaluation_data,
        refuse_path_of_generated,
        shared_data_settings,
        unknown_data_keys,
    )
    from contrastlab.eval.protocols import no_factors

    refuse_path_of_generated(args.dataset, args.data_path)
    entries = []
    for checkpoint in args.checkpoints:
        state = read_checkpoint(checkpoint, verify=False)
        cfg = config_from_dict(state["config"])
        refuse_missing_space(checkpoint, cfg, state, args.space or "backbone")
        data = evaluation_data(checkpoint, cfg, args.dataset, args.data_path, args.skip_bad_images)
        if "factors" in args.protocols and data.name != "synthetic":
            raise UserError(f"{checkpoint}: {no_factors(data.name)}")
        entries.append((checkpoint, data, unknown_data_keys(state)))
        del state
    return shared_data_settings(entries)


def _check_saved_results(args) -> None:
    """Where ``eval all`` saves each result (unless ``--no-save``): eval results only are
    replaced, other files with ``--overwrite``; ``--overwrite`` with ``--no-save`` is refused."""
    from contrastlab.eval.results import result_path, variant_of

    if args.no_save:
        if args.overwrite:
            raise UserError(
                "--overwrite applies only to the results eval all saves next to each "
                "checkpoint, which --no-save leaves out; leave one of them out"
            )
        return
    for checkpoint in args.checkpoints:
        for protocol in args.protocols:
            path = result_path(
                checkpoint,
                protocol,
                space=args.space or "backbone",
                dataset=_dataset_tag(args, checkpoint),
                variant=variant_of(protocol, {"mode": args.linear_mode}),
                subset=_subset(args),
                selection=_selection(args, protocol),
            )
            check_output(
                path,
                inputs=[checkpoint],
                replaceable=is_eval_result,
                what="an eval result",
                overwrite=args.overwrite,
                instead="add --no-save to save no result beside the checkpoints",
            )


def _all(args) -> int:
    from contrastlab.eval import protocols as P
    from contrastlab.eval.compare import run_all
    from contrastlab.eval.protocols import linear_text

    if args.out is not None:
        raise UserError(
            f"eval all writes a folder (comparison.md, .json, .png), not one result file; give "
            f"--out-dir {args.out} instead of --out"
        )
    if args.out_dir is None:
        args.out_dir = "eval_all"
    check_options(args)  # --protocols names one or more (comma_list)
    args.linear_mode = args.linear_mode or "fast"  # None in the parser: --fast conflicts with it
    _refuse_unused_in_all(args)
    check_output(args.out_dir, folder=True, what="the comparison", flag="--out-dir")
    data_like = _check_data(args)
    _check_saved_results(args)
    epochs = LINEAR_MOCO_DEFAULTS["epochs"] if args.epochs is None else args.epochs
    trials = 5 if args.trials is None else args.trials
    episodes = 600 if args.episodes is None else args.episodes
    severities = [1, 2, 3, 4, 5] if args.severities is None else args.severities
    # few-shot's sizes as eval fewshot takes them, so that its errors' advice applies here too
    given = {"shots": args.shots, "n_way": args.ways, "episode_shots": args.episode_shots}
    shots = {k: v for k, v in {**given, "queries": args.queries}.items() if v is not None}
    shots["required"] = fewshot_required(args)
    if "fewshot" in args.protocols and shots["required"]:  # every checkpoint's, before any work
        sizes = {k: v for k, v in shots.items() if k != "trials"}
        for checkpoint in args.checkpoints:
            try:
                P.check_fewshot_sizes(_context(args, checkpoint, data_like=data_like), **sizes)
            except UserError as e:
                raise UserError(f"{checkpoint}: {e}") from None
    runners = {
        "knn": lambda ctx: P.run_knn(ctx, args.k, args.temperature),
        "linear": lambda ctx: P.run_linear(ctx, mode=args.linear_mode, epochs=epochs),
        "fewshot": lambda ctx: P.run_fewshot(ctx, num_episodes=episodes, trials=trials, **shots),
        "rotation": P.run_rotation,
        "corruption": lambda ctx: P.run_corruption(ctx, severities=severities),
        "factors": P.run_factors,
    }
    res = run_all(
        args.checkpoints,
        args.protocols,
        args.out_dir,
        partial(_context, args, data_like=data_like),
        runners,
        save_each=not args.no_save,
        dataset_tag=partial(_dataset_tag, args),
        subset_tag=_subset(args),
        selection_tag=partial(_selection, args),
        note=(
            f"linear probe: {linear_text(args.linear_mode, epochs)}"
            if "linear" in args.protocols
            else ""
        ),
    )
    print(res["table"])
    print(f"\ncomparison written to {res['out_dir']}/comparison.{{md,json,png}}")
    return 0


def _export(args) -> int:
    from contrastlab.checkpoint import checkpoint_feature_spaces, read_checkpoint
    from contrastlab.config import config_from_dict
    from contrastlab.export import contents_note, export_checkpoint, loading_note

    check_output(
        args.out,
        inputs=[args.checkpoint],
        replaceable=is_export,
        what="an export",
        overwrite=args.overwrite,
    )
    path = export_checkpoint(args.checkpoint, args.format, args.out)
    print(f"backbone written to {path} ({args.format})")
    state = read_checkpoint(args.checkpoint, verify=False)
    cfg = config_from_dict(state["config"])
    print(contents_note(cfg, checkpoint_feature_spaces(cfg, state), str(args.checkpoint)))
    model = cfg.model
    print(loading_note(model.backbone, model.width, model.cifar_stem, args.format, str(path)))
    return 0


# ----------------------------------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------------------------------


def _knn_options(p, use: str = "") -> None:
    """``--k`` and ``--temperature``; ``use`` heads their help (where they apply)."""
    p.add_argument(
        "--k",
        type=int,
        default=None,
        help=f"{use}neighbours (default: the checkpoint's train.knn_k, 200 unless its preset set "
        "it)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help=f"{use}weights exp(sim / T) (default: the checkpoint's train.knn_temperature, 0.1 "
        "unless set)",
    )


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help only where the help does not already say what
    happens by default and there is a value to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


def register(subparsers) -> None:
    """Add ``eval`` (knn, linear, fewshot, rotation, corruption, factors, transfer, all) and
    ``export`` to an argparse subparsers object."""
    fmt = _HelpFormatter
    ev = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint's frozen features",
        description="Evaluation protocols on frozen features; see docs/evaluation.md.",
    )
    sub = ev.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    common = _common()

    p = sub.add_parser(
        "knn",
        parents=[common],
        formatter_class=fmt,
        help="weighted kNN (MoCo's monitor: cosine, k 200, T 0.1)",
    )
    _knn_options(p)
    p.set_defaults(func=_knn)

    p = sub.add_parser(
        "linear",
        parents=[common],
        formatter_class=fmt,
        help="linear classifier: MoCo's SGD protocol or fast logistic regression",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--mode",
        choices=("moco", "fast"),
        help="moco: SGD on images with crop/flip; fast: logistic regression on features "
        "(default: moco)",
    )
    mode.add_argument(
        "--fast", dest="mode", action="store_const", const="fast", help="same as --mode fast"
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="moco mode: epochs, the learning rate divided by 10 at 60%% and 80%% (default: 100)",
    )
    p.add_argument("--lr", type=float, help="moco mode: SGD learning rate (default: 30.0)")
    p.add_argument("--momentum", type=float, help="moco mode: SGD momentum (default: 0.9)")
    p.add_argument("--weight-decay", type=float, help="moco mode: weight decay (default: 0.0)")
    p.add_argument(
        "--C",
        type=float,
        help="fast mode: fixed inverse regularization (default: swept on a validation split)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        help="fast mode without --C: validation share for the sweep of C (default: 0.2)",
    )
    p.set_defaults(func=_linear)

    p = sub.add_parser(
        "fewshot",
        parents=[common],
        formatter_class=fmt,
        help="all-way K-shot (LooC's Flowers protocol) and N-way K-shot episodes",
    )
    p.add_argument(
        "--which",
        choices=("allway", "episodes", "both"),
        default="both",
        help="all-way K-shot, N-way K-shot episodes or both; the options of the branch left "
        "out are refused",
    )
    p.add_argument("--shots", type=_ints, help="all-way: K values (default: 5,10)")
    p.add_argument("--trials", type=int, help="all-way: random draws per K (default: 5)")
    p.add_argument(
        "--C",
        type=float,
        help="logistic regression's inverse regularization, for all-way and for episodes with "
        "--classifier logistic (default: 1.0)",
    )
    p.add_argument("--ways", type=int, help="episodes: classes per episode (default: 5)")
    p.add_argument("--episode-shots", type=_ints, help="episodes: K values (default: 1,5)")
    p.add_argument("--queries", type=int, help="episodes: query images per class (default: 15)")
    p.add_argument("--episodes", type=int, help="episodes: how many (default: 600)")
    p.add_argument(
        "--classifier",
        choices=("centroid", "logistic"),
        help="episodes: classifier fitted on each support set (default: centroid)",
    )
    p.set_defaults(func=_fewshot)

    p = sub.add_parser(
        "rotation",
        parents=[common],
        formatter_class=fmt,
        help="4-way rotation prediction probe (LooC's Table 1)",
    )
    p.set_defaults(func=_rotation)

    p = sub.add_parser(
        "corruption",
        parents=[common],
        formatter_class=fmt,
        help="accuracy under the 15 ImageNet-C corruptions at 5 severities",
    )
    p.add_argument(
        "--classifier",
        choices=("linear", "knn"),
        default="linear",
        help="trained on clean training features",
    )
    p.add_argument(
        "--corruptions", type=_names, default=None, help="comma-separated subset (default: all 15)"
    )
    p.add_argument(
        "--severities",
        type=_ints,
        default=[1, 2, 3, 4, 5],
        help="comma-separated severities, 1 (mildest) to 5",
    )
    _knn_options(p, "--classifier knn: ")
    p.set_defaults(func=_corruption)

    p = sub.add_parser(
        "factors",
        parents=[common],
        formatter_class=fmt,
        help="linear probes for the synthetic dataset's factors",
    )
    p.add_argument(
        "--factors",
        type=_names,
        default=["shape", "color", "texture", "rotation"],
        help="comma-separated subset of shape, color, texture (the generating factors, probed on "
        "the images as they are) and rotation (4-way, on rotated copies)",
    )
    p.set_defaults(func=_factors)

    p = sub.add_parser(
        "transfer",
        parents=[common],
        formatter_class=fmt,
        help="linear and few-shot evaluation on a pair of image folders",
    )
    p.add_argument(
        "--train-dir", required=True, metavar="DIR", help="training images, one subfolder per class"
    )
    p.add_argument(
        "--test-dir", required=True, metavar="DIR", help="test images, the same class subfolders"
    )
    p.add_argument(
        "--shots", type=_ints, default=[5, 10], help="all-way K-shot: comma-separated K values"
    )
    p.add_argument("--trials", type=int, default=5, help="all-way K-shot: random draws per K")
    p.add_argument(
        "--episodes", type=int, default=600, help="5-way 1- and 5-shot episodes: how many"
    )
    p.set_defaults(func=_transfer)

    p = sub.add_parser(
        "all",
        parents=[_common("+")],
        formatter_class=fmt,
        help="several protocols over several checkpoints: one table and one plot",
    )
    p.add_argument(
        "--protocols",
        type=_names,
        default=["knn", "linear", "fewshot"],
        help="from knn, linear, fewshot, rotation, corruption, factors",
    )
    p.add_argument(
        "--out-dir",
        default=None,
        metavar="DIR",
        help="where comparison.{md,json,png} go (default: ./eval_all)",
    )
    p.add_argument(
        "--no-save",
        action="store_true",
        help="do not also write each result to <run_dir>/eval/<protocol>[-<variant>][...].json "
        "(named as eval <protocol> names it)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--linear-mode",
        choices=("moco", "fast"),
        default=None,
        help="linear protocol: moco (SGD on images with crop/flip, as eval linear) or fast "
        "(logistic regression on features, as eval linear --fast) (default: fast)",
    )
    mode.add_argument(
        "--fast",
        dest="linear_mode",
        action="store_const",
        const="fast",
        help="same as --linear-mode fast",
    )
    p.add_argument("--epochs", type=int, help="linear, --linear-mode moco: epochs (default: 100)")
    p.add_argument("--shots", type=_ints, help="fewshot: all-way K values (default: 5,10)")
    p.add_argument("--trials", type=int, help="fewshot: all-way trials (default: 5)")
    p.add_argument("--ways", type=int, help="fewshot: classes per episode (default: 5)")
    p.add_argument("--episode-shots", type=_ints, help="fewshot: episodes' K values (default: 1,5)")
    p.add_argument(
        "--queries", type=int, help="fewshot: query images per class of an episode (default: 15)"
    )
    p.add_argument("--episodes", type=int, help="fewshot: episodes (default: 600)")
    p.add_argument("--severities", type=_ints, help="corruption: severities (default: 1,2,3,4,5)")
    _knn_options(p, "knn: ")
    p.set_defaults(func=_all)

    p = subparsers.add_parser(
        "export",
        formatter_class=fmt,
        help="export the backbone for torchvision, Detectron2 or safetensors",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a contrastlab checkpoint (.pt)")
    p.add_argument(
        "--format",
        choices=("torchvision", "detectron2", "safetensors"),
        default="torchvision",
        help="torchvision: a state dict for torchvision's resnet (torch.load); detectron2: a "
        "pickle with Detectron2's ResNet names (.pkl); safetensors: torchvision's tensors",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=_export)
