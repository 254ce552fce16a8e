# The run's graph folder must be exactly one directory output (docs/outputs.md): per-prompt
# graphs are made by attribute_prompt and assembled here, so each prompt can still be rerun
# on its own.
rule assemble_graphs:
    input:
        graphs=per_prompt(PATHS.graph, PLAN.prompts),
        metadata=per_prompt(PATHS.graph_metadata, PLAN.prompts),
        scores=per_prompt(PATHS.graph_scores, PLAN.prompts),
        features=rules.collect_features.output.features,
        explanations=PATHS.explanations.format(unit="features"),
        classifications=PATHS.classifications.format(unit="features"),
        feature_scores=PATHS.detection_scores.format(unit="features"),
    output:
        directory(PATHS.graphs),
    params:
        slugs=list(PLAN.prompts),
    log:
        f"{RESULTS}/logs/assemble_graphs.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/assemble_graphs.py"


# `snakemake results/graphs/` (the README's command): links to this run's graph folder, so
# the default command and the viewer's default folder keep working for every run.
rule link_graphs:
    input:
        graphs=rules.assemble_graphs.output[0],
    output:
        directory(GRAPHS_LINK),
    log:
        f"{RESULTS}/logs/link_graphs.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/link_graphs.py"
