rule prepare_dataset:
    input:
        model=MODEL_DIR,
        source=dataset_files(config),
    output:
        train=PATHS.train,
        validation=PATHS.validation,
        summary=PATHS.dataset_summary,
    params:
        settings=settings("prepare_dataset"),
    log:
        f"{RESULTS}/logs/prepare_dataset.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_dataset.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/prepare_dataset.py"
