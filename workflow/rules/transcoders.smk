# Transcoders are trained here (transcoder.source unset: the default), or a published set is
# imported instead (rules/imported.smk): the same set config either way, so every later rule
# reads TRANSCODER_SET without knowing which.
if not PLAN.imported:

    # transcoder.kind plt: transcoder.layers_per_job consecutive layers per job ({group} is
    # "<first>-<last>"), one after another in one process; the layer files go to the job's
    # folder, and write_transcoder_set links them into place.
    rule train_transcoders:
        input:
            shards=lambda wildcards: per_layer(PATHS.shard, TRAINING_GROUPS[wildcards.group]),
        output:
            directory(PATHS.training_group),
        params:
            settings=settings("train_transcoders"),
            layers=lambda wildcards: list(TRAINING_GROUPS[wildcards.group]),
            checkpoints=PATHS.checkpoints,
        log:
            f"{RESULTS}/logs/train_transcoders/layers_{{group}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/train_transcoders/layers_{{group}}.tsv"
        # One thread per job: several jobs train side by side without oversubscribing cores
        # (and the weights do not depend on how layers are grouped).
        threads: 1
        resources:
            mem_mb=3000,
            runtime=lambda wildcards: 60 * len(TRAINING_GROUPS[wildcards.group]),
            gpu=1,
        conda:
            ENV
        script:
            "../scripts/train_transcoders.py"


    # transcoder.kind clt: one cross-layer transcoder over layers 0..n-1, trained jointly from
    # every layer's shard (read in lockstep), saved in circuit-tracer's CLT layout.
    rule train_cross_layer_transcoder:
        input:
            shards=rules.cache_activations.output.shards,
        output:
            weights=cross_layer_weights(PLAN),
            architecture=PATHS.clt_architecture,
            metrics=PATHS.clt_metrics,
        params:
            settings=settings("train_cross_layer_transcoder"),
        log:
            f"{RESULTS}/logs/train_cross_layer_transcoder.log",
        benchmark:
            f"{RESULTS}/benchmarks/train_cross_layer_transcoder.tsv"
        threads: 2
        resources:
            mem_mb=PLAN.clt_memory_mb,
            runtime=120,
            gpu=1,
        conda:
            ENV
        script:
            "../scripts/train_cross_layer_transcoder.py"


    # plt: links each layer's files into place from its training job's folder, then checks
    # them; clt: checks the files train_cross_layer_transcoder wrote beside the config.
    rule write_transcoder_set:
        input:
            model=MODEL_DIR,
            trained=trained_set_files(config, PLAN),
        output:
            config=TRANSCODER_SET,
            weights=TRAINED_LAYER_FILES["weights"],
            architectures=TRAINED_LAYER_FILES["architectures"],
            metrics=TRAINED_LAYER_FILES["metrics"],
        params:
            settings=settings("write_transcoder_set"),
        log:
            f"{RESULTS}/logs/write_transcoder_set.log",
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            ENV
        script:
            "../scripts/write_transcoder_set.py"


# Fidelity on held-out validation windows: FVU, L0, dead/dense latents, and the next-token loss
# with each MLP (and then every MLP) replaced by its transcoder, against zero-ablation.
rule evaluate_transcoders:
    input:
        model=MODEL_DIR,
        validation=rules.prepare_dataset.output.validation,
        transcoders=TRANSCODER_SET,
        weights=TRANSCODER_WEIGHTS,
    output:
        fidelity=PATHS.fidelity,
        table=PATHS.fidelity_table,
    params:
        settings=settings("evaluate_transcoders"),
    log:
        f"{RESULTS}/logs/evaluate_transcoders.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_transcoders.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/evaluate_transcoders.py"
