rule prepare_model:
    output:
        directory(MODEL_DIR),
    params:
        settings=settings("prepare_model"),
    log:
        f"{RESULTS}/logs/prepare_model.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_model.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/prepare_model.py"
