# results/graphs must be exactly one directory output (docs/outputs.md): per-prompt graphs are
# made by attribute_prompt and assembled here, so each prompt can still be rerun on its own.
rule assemble_graphs:
    input:
        graphs=per_prompt(".json"),
        metadata=per_prompt(".metadata.json"),
        scores=per_prompt(".scores.json"),
        features=rules.collect_features.output.features,
        explanations=f"{INTERP}/features/autointerp.json",
        classifications=f"{INTERP}/features/feature_classifications.json",
        feature_scores=f"{INTERP}/features/scores.json",
    output:
        directory("results/graphs"),
    params:
        slugs=list(PLAN.prompts),
    log:
        f"{RESULTS}/logs/assemble_graphs.log",
    localrule: True
    conda:
        ENV
    script:
        "../workflow/scripts/assemble_graphs.py"
