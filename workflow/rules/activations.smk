rule cache_activations:
    input:
        model=MODEL_DIR,
        train=rules.prepare_dataset.output.train,
    output:
        shards=per_layer(PATHS.shard, PLAN.layers),
        manifest=PATHS.activations_manifest,
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
        "../scripts/cache_activations.py"
