rule cache_activations:
    input:
        model=MODEL_DIR,
        train=rules.prepare_dataset.output.train,
    output:
        shards=list(shard_paths().values()),
        manifest=f"{RESULTS}/activations/manifest.json",
    params:
        layers=LAYERS,
        activations=config["activations"],
        model_dtype=config["model"]["dtype"],
        device=config["device"],
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
