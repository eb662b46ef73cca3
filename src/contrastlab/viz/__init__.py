"""Score plots and the HTML report (``contrastlab scores``, ``contrastlab report``)."""

from contrastlab.viz.report import write_report
from contrastlab.viz.score_plots import plot_scores

__all__ = ["plot_scores", "write_report"]
