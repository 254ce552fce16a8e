# The LLM judge's stages, for transcoder features and MLP neurons alike ({kind}):
# select -> classify and explain -> score, then one table comparing them.
# Each LLM job starts llama.cpp's server on a loopback port unless llm.base_url is set;
# every request and reply is kept in one SQLite response cache (INTERP_CACHE).


rule select_features:
    input:
        features=f"{RESULTS}/{{kind}}/json",
        metadata=f"{RESULTS}/{{kind}}/feature_metadata.json",
        graphs=graphs_for_interp,
    output:
        f"{INTERP}/{{kind}}/selection.json",
    params:
        settings=settings("select_features"),
    log:
        f"{RESULTS}/logs/select_features/{{kind}}.log",
    localrule: True
    conda:
        ENV
    script:
        "../workflow/scripts/select_features.py"


rule classify_features:
    input:
        selection=rules.select_features.output[0],
        features=f"{RESULTS}/{{kind}}/json",
    output:
        classifications=f"{INTERP}/{{kind}}/feature_classifications.json",
        usage=f"{INTERP}/{{kind}}/classify.usage.json",
    params:
        settings=settings("classify_features"),
        cache=INTERP_CACHE,
    log:
        job=f"{RESULTS}/logs/classify_features/{{kind}}.log",
        judge=f"{RESULTS}/logs/classify_features/{{kind}}.judge.log",
    benchmark:
        f"{RESULTS}/benchmarks/classify_features/{{kind}}.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=120,
    retries: 1
    conda:
        ENV
    script:
        "../workflow/scripts/classify_features.py"


rule explain_features:
    input:
        selection=rules.select_features.output[0],
        features=f"{RESULTS}/{{kind}}/json",
    output:
        explanations=f"{INTERP}/{{kind}}/autointerp.json",
        usage=f"{INTERP}/{{kind}}/explain.usage.json",
    params:
        settings=settings("explain_features"),
        cache=INTERP_CACHE,
    log:
        job=f"{RESULTS}/logs/explain_features/{{kind}}.log",
        judge=f"{RESULTS}/logs/explain_features/{{kind}}.judge.log",
    benchmark:
        f"{RESULTS}/benchmarks/explain_features/{{kind}}.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=120,
    retries: 1
    conda:
        ENV
    script:
        "../workflow/scripts/explain_features.py"


rule score_explanations:
    input:
        selection=rules.select_features.output[0],
        explanations=rules.explain_features.output.explanations,
        features=f"{RESULTS}/{{kind}}/json",
        validation=rules.prepare_dataset.output.validation,
        model=MODEL_DIR,
        transcoders=transcoders_for_interp,
    output:
        scores=f"{INTERP}/{{kind}}/scores.json",
        usage=f"{INTERP}/{{kind}}/score.usage.json",
    params:
        settings=settings("score_explanations"),
        cache=INTERP_CACHE,
    log:
        job=f"{RESULTS}/logs/score_explanations/{{kind}}.log",
        judge=f"{RESULTS}/logs/score_explanations/{{kind}}.judge.log",
    benchmark:
        f"{RESULTS}/benchmarks/score_explanations/{{kind}}.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=240,
    retries: 1
    conda:
        ENV
    script:
        "../workflow/scripts/score_explanations.py"


# The headline table: transcoder features vs MLP neurons vs the non-LLM explanation.
rule compare_explanations:
    input:
        scores=expand(f"{INTERP}/{{kind}}/scores.json", kind=INTERP_KINDS),
        classifications=expand(f"{INTERP}/{{kind}}/feature_classifications.json", kind=INTERP_KINDS),
    output:
        summary=f"{INTERP}/summary.json",
        table=f"{INTERP}/scores_table.md",
    params:
        kinds=INTERP_KINDS,
    log:
        f"{RESULTS}/logs/compare_explanations.log",
    localrule: True
    conda:
        ENV
    script:
        "../workflow/scripts/compare_explanations.py"
