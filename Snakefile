# circuitflow: Hugging Face causal LM -> MLP activations -> transcoders -> attribution graphs.
# Targets only; every rule lives in rules/<stage>.smk and calls one library function.
from snakemake.utils import min_version, validate

from circuitflow.config import validate_config

min_version("9.0")


configfile: "config/config.yaml"


# `snakemake --report report.html`: this page on top, the figures of rules/report.smk below.
report: "report/workflow.rst"


# The schema ships with the library (config/schema.yaml links to it); Snakemake's validate
# fills in its defaults, and a failure is reported as one line naming the key.
validate_config(config, validate)


include: "rules/common.smk"
include: "rules/model.smk"
include: "rules/dataset.smk"
include: "rules/activations.smk"
include: "rules/transcoders.smk"
include: "rules/imported.smk"
include: "rules/features.smk"
include: "rules/attribution.smk"
include: "rules/interp.smk"
include: "rules/graphs.smk"
include: "rules/hub.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    localrule: True
    input:
        "results/graphs",
        # an imported set (transcoder.source) is measured only when evaluation.imported_set asks
        rules.evaluate_transcoders.output if PLAN.evaluate else [],
        rules.pack_features.output,
        rules.collect_neurons.output.metadata,
        rules.compare_explanations.output,
        rules.plot_run_report.output,


rule activations:
    localrule: True
    input:
        rules.cache_activations.output,


rule transcoders:
    localrule: True
    input:
        TRANSCODER_SET,
        rules.evaluate_transcoders.output,


rule features:
    localrule: True
    input:
        rules.pack_features.output,
        rules.collect_neurons.output.metadata,


# Classifications, explanations and their scores for transcoder features and MLP neurons,
# with the table comparing them (results/<run>/interp/scores_table.md).
rule interp:
    localrule: True
    input:
        expand(f"{INTERP}/{{kind}}/{{name}}", kind=INTERP_KINDS,
               name=["feature_classifications.json", "autointerp.json", "scores.json"]),
        rules.compare_explanations.output,


# The report's figures and tables (and all they need); then `snakemake --report report.html`.
rule report:
    localrule: True
    input:
        rules.plot_run_report.output,


# Publish the run to hub.repo_id (needs HF_TOKEN): the staged repo, one commit (none when
# nothing changed) with its receipt, and results/graphs-hub/ whose graphs read that repo.
rule hub:
    localrule: True
    input:
        rules.upload_to_hub.output.receipt,
        rules.assemble_hub_graphs.output,
