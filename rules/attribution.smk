rule attribute_prompt:
    input:
        prompt=prompt_input,
        model=MODEL_DIR,
        transcoders=rules.write_transcoder_set.output.config,
        weights=transcoder_weights(),
    output:
        graph=f"{RESULTS}/attribution/{{slug}}.json",
        metadata=f"{RESULTS}/attribution/{{slug}}.metadata.json",
        scores=f"{RESULTS}/attribution/{{slug}}.scores.json",
    params:
        prompt=prompt_params,
        settings=attribution_settings(),
        device=config["device"],
    log:
        f"{RESULTS}/logs/attribute_prompt/{{slug}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/attribute_prompt/{{slug}}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    conda:
        ENV
    script:
        "../workflow/scripts/attribute_prompt.py"


# results/graphs must be exactly one directory output (see README): per-prompt graphs are
# made above and assembled here, so each prompt can still be rerun on its own.
rule graphs:
    input:
        graphs=per_prompt(".json"),
        metadata=per_prompt(".metadata.json"),
        scores=per_prompt(".scores.json"),
        features=rules.collect_features.output.features,
    output:
        directory("results/graphs"),
    params:
        slugs=list(PROMPTS),
    log:
        f"{RESULTS}/logs/graphs.log",
    localrule: True
    conda:
        ENV
    script:
        "../workflow/scripts/graphs.py"
