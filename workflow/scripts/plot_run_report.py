"""Rule plot_run_report: the figures and tables of the run's Snakemake report."""
from circuitflow.logs import start_job

start_job(snakemake, uses_torch=False)

from circuitflow.report import plot_run_report

plot_run_report(outputs=dict(snakemake.output.items()), kind=snakemake.params.kind, layers=snakemake.params.layers,
                training_metrics=snakemake.input.training, fidelity=snakemake.input.fidelity or None,
                feature_metadata=snakemake.input.features, neuron_metadata=snakemake.input.neurons,
                graph_scores=snakemake.input.graph_scores, interp_units=snakemake.params.interp_units,
                classifications=snakemake.input.classifications, detection_scores=snakemake.input.detection,
                interp_summary=snakemake.input.summary)
