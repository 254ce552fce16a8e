"""plot_run_report: the figures and tables of a run's Snakemake report (`snakemake --report`).

One pass over the run's metrics files (transcoder training and fidelity, activation
frequencies, graph scores, the judge's categories and scores) writes PNG figures, HTML tables
and `report_data.json`, the numbers each figure shows as read back from the figure itself.
matplotlib is imported only when a figure is drawn, never by importing this package.
"""

from circuitflow.report.inputs import ReportInputError
from circuitflow.report.run import plot_run_report

__all__ = ["ReportInputError", "plot_run_report"]
