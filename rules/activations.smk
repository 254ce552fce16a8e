rule cache_activations:
    input:
        model=MODEL_DIR,
        train=rules.prepare_dataset.output.train,
    output:
        shards=per_layer("activations/layer_{layer}.parquet"),
        manifest=f"{RESULTS}/activations/manifest.json",
    params:
        settings=settings("cache_activations"),
    log:
        f"{RESULTS}/logs/cache_activations.log",
    benchmark:
        f"{RESULTS}/benchmarks/cache_activations.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    conda:
        ENV
    script:
        "../workflow/scripts/cache_activations.py"
