rule attribute_prompt:
    input:
        prompt=lambda wildcards: prompt_files(PLAN, wildcards.slug),
        model=MODEL_DIR,
        transcoders=complete_transcoder_set,
        weights=TRANSCODER_WEIGHTS,
    output:
        graph=PATHS.graph,
        metadata=PATHS.graph_metadata,
        scores=PATHS.graph_scores,
    params:
        prompt=lambda wildcards: prompt_param(config, PLAN, wildcards.slug),
        settings=settings("attribute_prompt"),
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
        "../scripts/attribute_prompt.py"
