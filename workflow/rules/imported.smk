# transcoder.source: a published circuit-tracer set explained instead of trained transcoders.
# A hub set is downloaded once into resources/transcoders/ (its receipt records the commit);
# import_transcoder_set checks it against the model and writes the run's set config.
if PLAN.imported:

    if PLAN.set_source.on_hub:

        # On the submitting machine: cluster nodes often have no internet.
        rule download_transcoder_set:
            output:
                receipt=str(PLAN.set_source.receipt),
            params:
                settings=settings("download_transcoder_set"),
            log:
                f"{RESULTS}/logs/download_transcoder_set.log",
            localrule: True
            conda:
                ENV
            script:
                "../scripts/download_transcoder_set.py"

    rule import_transcoder_set:
        input:
            unpack(lambda wildcards: imported_set_inputs(PLAN)),
            model=MODEL_DIR,
        output:
            config=TRANSCODER_SET,
        params:
            settings=settings("import_transcoder_set"),
        log:
            f"{RESULTS}/logs/import_transcoder_set.log",
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            ENV
        script:
            "../scripts/import_transcoder_set.py"
