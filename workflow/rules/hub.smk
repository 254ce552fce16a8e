# Publishing (target `hub`, off unless hub.repo_id is set): the run laid out as a Hugging Face
# model repo, then one commit of what changed. Both run on the submitting machine (localrule):
# cluster nodes often have no internet, and neither job needs more than a core.


rule assemble_hub_graphs:
    input:
        graphs=rules.assemble_graphs.output[0],
    output:
        directory(PATHS.graphs_hub),
    params:
        settings=settings("assemble_hub_graphs"),
    log:
        f"{RESULTS}/logs/assemble_hub_graphs.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/assemble_hub_graphs.py"


rule stage_hub_repo:
    input:
        unpack(hub_repo_inputs),
    output:
        directory(PATHS.hub_repo),
    params:
        settings=settings("stage_hub_repo"),
    log:
        f"{RESULTS}/logs/stage_hub_repo.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/stage_hub_repo.py"


rule upload_to_hub:
    input:
        repo=rules.stage_hub_repo.output[0],
        token=hub_token_check,
    output:
        receipt=PATHS.hub_receipt,
    params:
        settings=settings("upload_to_hub"),
    log:
        f"{RESULTS}/logs/upload_to_hub.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/upload_to_hub.py"
