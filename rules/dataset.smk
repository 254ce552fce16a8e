rule prepare_dataset:
    input:
        model=MODEL_DIR,
        source=dataset_files(config),
    output:
        train=f"{RESULTS}/dataset/train.parquet",
        validation=f"{RESULTS}/dataset/validation.parquet",
        summary=f"{RESULTS}/dataset/summary.json",
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
        "../workflow/scripts/prepare_dataset.py"
