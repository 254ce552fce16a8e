rule attribute_prompt:
    input:
        prompt=lambda wildcards: prompt_files(PLAN, wildcards.slug),
        model=MODEL_DIR,
        transcoders=complete_transcoder_set,
        weights=TRANSCODER_WEIGHTS,
    output:
        graph=f"{RESULTS}/attribution/{{slug}}.json",
        metadata=f"{RESULTS}/attribution/{{slug}}.metadata.json",
        scores=f"{RESULTS}/attribution/{{slug}}.scores.json",
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
        "../workflow/scripts/attribute_prompt.py"
