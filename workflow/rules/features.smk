rule collect_features:
    input:
        model=MODEL_DIR,
        validation=rules.prepare_dataset.output.validation,
        transcoders=TRANSCODER_SET,
        weights=TRANSCODER_WEIGHTS,
    output:
        features=directory(PATHS.examples("features")),
        metadata=PATHS.metadata("features"),
    params:
        settings=settings("collect_features"),
    log:
        f"{RESULTS}/logs/collect_features.log",
    benchmark:
        f"{RESULTS}/benchmarks/collect_features.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/collect_features.py"


rule collect_neurons:
    input:
        model=MODEL_DIR,
        validation=rules.prepare_dataset.output.validation,
    output:
        features=directory(PATHS.examples("neurons")),
        metadata=PATHS.metadata("neurons"),
    params:
        settings=settings("collect_neurons"),
    log:
        f"{RESULTS}/logs/collect_neurons.log",
    benchmark:
        f"{RESULTS}/benchmarks/collect_neurons.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/collect_neurons.py"


# circuit-tracer's packed binary (index.json.gz + layer_{L}.bin): the `features/` folder of a
# Hugging Face repo, read by the frontend with Range requests.
rule pack_features:
    input:
        features=rules.collect_features.output.features,
        transcoders=TRANSCODER_SET,
    output:
        directory(PATHS.packed_features),
    log:
        f"{RESULTS}/logs/pack_features.log",
    benchmark:
        f"{RESULTS}/benchmarks/pack_features.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/pack_features.py"
