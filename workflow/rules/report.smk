# The figures and tables of `snakemake --report report.html`: one job reads the metrics files of
# every stage of the `all` target and draws them (captions in report/, two category levels).
REPORT = PATHS.report


rule plot_run_report:
    input:
        training=training_metrics_files(PLAN),
        fidelity=rules.evaluate_transcoders.output.fidelity if PLAN.evaluate else [],
        features=rules.collect_features.output.metadata,
        neurons=rules.collect_neurons.output.metadata,
        graph_scores=graph_score_files(PLAN),
        classifications=expand(rules.classify_features.output.classifications, unit=UNITS),
        detection=expand(rules.score_explanations.output.scores, unit=UNITS),
        summary=rules.compare_explanations.output.summary,
    output:
        # an imported set: fidelity only when evaluation.imported_set asks, no training curves
        **(
            {
                "fidelity_plot": report(
                    f"{REPORT}/transcoder_fidelity.png",
                    caption="../report/transcoder_fidelity.rst",
                    category="Transcoders",
                    subcategory="Fidelity",
                    labels={"figure": "FVU, L0, dead and loss recovered per layer"},
                ),
                "fidelity_table": report(
                    f"{REPORT}/transcoder_fidelity.html",
                    caption="../report/transcoder_fidelity_table.rst",
                    category="Transcoders",
                    subcategory="Fidelity",
                    labels={"figure": "fidelity table"},
                ),
            }
            if PLAN.evaluate
            else {}
        ),
        **(
            {
                "training_plot": report(
                    f"{REPORT}/training_curves.png",
                    caption="../report/training_curves.rst",
                    category="Transcoders",
                    subcategory="Training",
                    labels={"figure": "training loss and dead latents"},
                ),
            }
            if not PLAN.imported
            else {}
        ),
        frequency_plot=report(
            f"{REPORT}/activation_frequency.png",
            caption="../report/activation_frequency.rst",
            category="Features",
            subcategory="Activation frequency",
            labels={"figure": "activation frequency histograms"},
        ),
        # Snakemake outputs are fixed at parse time: the graph section only for complete sets.
        **(
            {
                "graph_plot": report(
                    f"{REPORT}/graph_scores.png",
                    caption="../report/graph_scores.rst",
                    category="Attribution graphs",
                    subcategory="Scores",
                    labels={"figure": "replacement and completeness"},
                ),
                "graph_table": report(
                    f"{REPORT}/graph_scores.html",
                    caption="../report/graph_scores_table.rst",
                    category="Attribution graphs",
                    subcategory="Scores",
                    labels={"figure": "graph scores table"},
                ),
            }
            if PLAN.complete
            else {}
        ),
        interp_table=report(
            f"{REPORT}/interp_scores.html",
            caption="../report/interp_scores_table.rst",
            category="Interpretability",
            subcategory="Explanation scores",
            labels={"figure": "scores table"},
        ),
        detection_plot=report(
            f"{REPORT}/detection_scores.png",
            caption="../report/detection_scores.rst",
            category="Interpretability",
            subcategory="Explanation scores",
            labels={"figure": "detection score distributions"},
        ),
        classification_plot=report(
            f"{REPORT}/classification_shares.png",
            caption="../report/classification_shares.rst",
            category="Interpretability",
            subcategory="Categories",
            labels={"figure": "category shares"},
        ),
        data=f"{REPORT}/report_data.json",
    params:
        kind=PLAN.kind,
        layers=list(PLAN.layers),
        interp_units=UNITS,
        # what the captions quote (report/*.rst: snakemake.params.captions["<key>"])
        captions=caption_values(config),
    log:
        f"{RESULTS}/logs/plot_run_report.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/plot_run_report.py"
