# The LLM judge's stages, for transcoder features and MLP neurons alike ({unit}):
# select -> classify and explain -> score, then one table comparing them.
# Each LLM job starts llama.cpp's server on a loopback port unless llm.base_url is set;
# every request and reply is kept in the job's own SQLite response cache (PATHS.judge_cache),
# which survives reruns (it is not an output) and is never shared by two jobs.


rule select_features:
    input:
        features=PATHS.unit_examples,
        metadata=PATHS.unit_metadata,
        graphs=graphs_for_interp,
    output:
        PATHS.selection,
    params:
        settings=settings("select_features"),
    log:
        f"{RESULTS}/logs/select_features/{{unit}}.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/select_features.py"


rule classify_features:
    input:
        selection=rules.select_features.output[0],
        features=PATHS.unit_examples,
    output:
        classifications=PATHS.classifications,
        usage=PATHS.usage_of("classify"),
    params:
        settings=settings("classify_features"),
        cache=judge_cache("classify"),
    log:
        job=f"{RESULTS}/logs/classify_features/{{unit}}.log",
        judge=f"{RESULTS}/logs/classify_features/{{unit}}.judge.log",
    benchmark:
        f"{RESULTS}/benchmarks/classify_features/{{unit}}.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=120,
    retries: 1
    conda:
        ENV
    script:
        "../scripts/classify_features.py"


rule explain_features:
    input:
        selection=rules.select_features.output[0],
        features=PATHS.unit_examples,
    output:
        explanations=PATHS.explanations,
        usage=PATHS.usage_of("explain"),
    params:
        settings=settings("explain_features"),
        cache=judge_cache("explain"),
    log:
        job=f"{RESULTS}/logs/explain_features/{{unit}}.log",
        judge=f"{RESULTS}/logs/explain_features/{{unit}}.judge.log",
    benchmark:
        f"{RESULTS}/benchmarks/explain_features/{{unit}}.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=120,
    retries: 1
    conda:
        ENV
    script:
        "../scripts/explain_features.py"


rule score_explanations:
    input:
        selection=rules.select_features.output[0],
        explanations=rules.explain_features.output.explanations,
        features=PATHS.unit_examples,
        validation=rules.prepare_dataset.output.validation,
        model=MODEL_DIR,
        transcoders=transcoders_for_interp,
    output:
        scores=PATHS.detection_scores,
        usage=PATHS.usage_of("score"),
    params:
        settings=settings("score_explanations"),
        cache=judge_cache("score"),
    log:
        job=f"{RESULTS}/logs/score_explanations/{{unit}}.log",
        judge=f"{RESULTS}/logs/score_explanations/{{unit}}.judge.log",
    benchmark:
        f"{RESULTS}/benchmarks/score_explanations/{{unit}}.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=240,
    retries: 1
    conda:
        ENV
    script:
        "../scripts/score_explanations.py"


# The headline table: transcoder features vs MLP neurons vs the non-LLM explanation.
rule compare_explanations:
    input:
        scores=expand(rules.score_explanations.output.scores, unit=UNITS),
        classifications=expand(rules.classify_features.output.classifications, unit=UNITS),
    output:
        summary=PATHS.interp_summary,
        table=PATHS.interp_table,
    params:
        units=UNITS,
    log:
        f"{RESULTS}/logs/compare_explanations.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/compare_explanations.py"
