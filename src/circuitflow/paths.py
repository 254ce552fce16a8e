"""Every output path of a run, declared once.

The rule files declare their outputs from these attributes, and `circuitflow.workflow` builds
its input lists (the hub repo's files, the report's metrics) from the same ones, so a path is
never spelled twice. Patterns keep Snakemake's wildcards: ``{layer}`` (a transcoder layer),
``{slug}`` (a prompt), ``{group}`` (a plt training job's layers, ``<first>-<last>``) and ``{unit}`` (``features`` or ``neurons``: what the judge explains).
Logs and benchmarks are declared only by their rule and are not listed here.
"""

from __future__ import annotations

from collections.abc import Iterable

# What the judge explains: transcoder features, and the MLP-neuron baseline.
INTERP_UNITS = ("features", "neurons")
# The default run's graphs are also linked at results/graphs/ (the README's target).
GRAPHS_LINK = "results/graphs"


class RunPaths:
    """The outputs of one run, all under ``results/<run>/`` (the model lives in resources/)."""

    def __init__(self, results: str) -> None:
        self.results = results

        self.train = f"{results}/dataset/train.parquet"
        self.validation = f"{results}/dataset/validation.parquet"
        self.dataset_summary = f"{results}/dataset/summary.json"

        self.shard = f"{results}/activations/layer_{{layer}}.parquet"
        self.activations_manifest = f"{results}/activations/manifest.json"

        transcoders = f"{results}/transcoders"
        self.transcoder_set = f"{transcoders}/config.yaml"
        self.layer_weights = f"{transcoders}/layer_{{layer}}.safetensors"
        self.layer_architecture = f"{transcoders}/layer_{{layer}}.architecture.json"
        self.layer_metrics = f"{transcoders}/layer_{{layer}}.metrics.json"
        # A plt training job's folder, for layers <first>-<last>: the three layer files above for
        # each of its layers, linked into place by write_transcoder_set.
        self.training_group = f"{transcoders}/training/layers_{{group}}"
        # Outside the job's folder, which Snakemake clears before a rerun: a killed job resumes.
        self.checkpoints = f"{transcoders}/checkpoints"
        self.clt_encoder = f"{transcoders}/W_enc_{{layer}}.safetensors"
        self.clt_decoder = f"{transcoders}/W_dec_{{layer}}.safetensors"
        self.clt_architecture = f"{transcoders}/clt.architecture.json"
        self.clt_metrics = f"{transcoders}/clt.metrics.json"
        self.fidelity = f"{transcoders}/fidelity.json"
        self.fidelity_table = f"{transcoders}/fidelity.csv"

        self.unit_examples = f"{results}/{{unit}}/json"
        self.unit_metadata = f"{results}/{{unit}}/feature_metadata.json"
        self.packed_features = f"{results}/features/packed"

        self.graph = f"{results}/attribution/{{slug}}.json"
        self.graph_metadata = f"{results}/attribution/{{slug}}.metadata.json"
        self.graph_scores = f"{results}/attribution/{{slug}}.scores.json"
        self.graphs = f"{results}/graphs"
        self.graphs_hub = f"{results}/graphs-hub"

        self.interp = f"{results}/interp"
        # One response cache per LLM job ({stage}: classify, explain or score), so no SQLite file
        # is ever open in two jobs (on a cluster, on two nodes over a network file system).
        self.judge_cache = f"{self.interp}/llm-cache/{{stage}}-{{unit}}.sqlite"
        self.selection = f"{self.interp}/{{unit}}/selection.json"
        self.classifications = f"{self.interp}/{{unit}}/feature_classifications.json"
        self.explanations = f"{self.interp}/{{unit}}/autointerp.json"
        self.detection_scores = f"{self.interp}/{{unit}}/scores.json"
        self.usage = f"{self.interp}/{{unit}}/{{stage}}.usage.json"
        self.interp_summary = f"{self.interp}/summary.json"
        self.interp_table = f"{self.interp}/scores_table.md"

        self.hub_repo = f"{results}/hub/repo"
        self.hub_receipt = f"{results}/hub/receipt.json"
        self.report = f"{results}/report"

    def examples(self, unit: str) -> str:
        return self.unit_examples.format(unit=unit)

    def metadata(self, unit: str) -> str:
        return self.unit_metadata.format(unit=unit)

    def interp_outputs(self, unit: str) -> list[str]:
        """What the judge's stages leave for one unit: classifications, explanations, scores."""
        return [pattern.format(unit=unit) for pattern in (self.classifications, self.explanations,
                                                           self.detection_scores)]

    def judge_cache_of(self, stage: str, unit: str) -> str:
        """The response cache of one LLM job: stage (classify, explain or score) and unit."""
        return self.judge_cache.format(stage=stage, unit=unit)

    def usage_of(self, stage: str) -> str:
        """The token-usage file of an LLM stage (classify, explain or score), per unit."""
        return self.usage.replace("{stage}", stage)


def per_layer(pattern: str, layers: Iterable[int]) -> list[str]:
    return [pattern.format(layer=layer) for layer in layers]


def per_prompt(pattern: str, slugs: Iterable[str]) -> list[str]:
    return [pattern.format(slug=slug) for slug in slugs]
