"""The ``scores`` and ``report`` subcommands."""

from __future__ import annotations

from pathlib import Path

from contrastlab.outputs import check_output, is_report
from contrastlab.viz.report import write_report
from contrastlab.viz.score_plots import check_run_dir, plot_scores

__all__ = ["register", "plot_scores", "write_report"]


def register(subparsers) -> None:
    """Add ``scores`` and ``report`` to an argparse subparsers object (``func`` takes the args)."""
    p = subparsers.add_parser(
        "scores",
        help="plot the recorded pos/neg scores of one or more runs",
        description="Plot pos score, neg mean and neg variance over training and the score "
        "distributions per epoch; several runs are overlaid, each labelled with the settings "
        "that differ and its final kNN accuracy. One figure set per embedding space.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: RUN/figures for one run, ./score-plots for several)",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        default=None,
        metavar="LABEL",
        help="one legend label per run instead of the automatic ones",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files in the output folder with a figure's name that contrastlab did not "
        "write",
    )
    p.set_defaults(func=_cmd_scores)

    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a run",
        description="Write one HTML file (figures embedded, no external resources) with the "
        "config, training curves, score figures, evaluation results and checkpoints of a run.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--out", default=None, metavar="FILE", help="default: RUN/report.html")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file that is not an earlier report",
    )
    p.add_argument(
        "--analysis",
        default=None,
        metavar="DIR",
        help="include a `contrastlab analyze` folder (default: RUN/analysis if present)",
    )
    p.set_defaults(func=_cmd_report)


def _cmd_scores(args) -> int:
    for run in args.runs:  # a checkpoint given for its run: say so before the output is checked
        check_run_dir(run)
    if args.out is not None:
        check_output(args.out, folder=True, what="the figures")
    # the paths as given: a run given twice is named as it was spelled (plot_scores)
    for path in plot_scores(list(args.runs), args.out, args.labels, overwrite=args.overwrite):
        print(path)
    return 0


def _cmd_report(args) -> int:
    run = check_run_dir(args.run)  # before the output: last.pt/report.html is no place to write
    out = Path(args.out) if args.out is not None else run / "report.html"
    # everything the report reads (an earlier report is its output, which it may replace)
    inputs = (
        [p for p in run.rglob("*") if p.is_file() and p.suffix != ".html"] if run.is_dir() else []
    )
    check_output(
        out, inputs=inputs, replaceable=is_report, what="a report", overwrite=args.overwrite
    )
    print(write_report(Path(args.run), args.out, args.analysis))
    return 0
