"""attribution: one circuit-tracer attribution graph per prompt, on the local model + transcoders.

Uses circuit-tracer 0.5.0's `ReplacementModel`, `attribute()`, `compute_graph_scores` and
`create_graph_files`, in `attribution.dtype` (float32 by default). Known 0.5.0 issues handled here:

- error nodes got ids that collide with layer-0 feature nodes, the nnsight backend does not
  know Qwen2 or circuitflow's hook names on Gemma, and Gemma-3's token nodes missed the embedding
  scale: see `circuitflow.attribution.patches` (applied before the replacement model is built);
- the TransformerLens backend rejects local folders and ignores Llama's ``rope_theta``
  (SmolLM2 uses 100000), so the default backend is nnsight, which loads the local folder with
  transformers itself;
- prompts are passed as token ids that already start with BOS, so circuit-tracer's BOS-id-0
  lookup bug never applies;
- `create_graph_files` needs an output path with a directory part: absolute paths are used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from circuitflow.attribution.influence import error_influence_by_layer
from circuitflow.attribution.patches import apply_patches
from circuitflow.config import AttributePromptSettings, ConfigError
from circuitflow.data.prompts import Prompt, read_prompt_text, tokenize_prompt
from circuitflow.io import atomic_path, write_json
from circuitflow.logs import pick_device
from circuitflow.model.facts import read_model_facts
from circuitflow.model.loading import load_tokenizer
from circuitflow.transcoders.circuit_tracer import load_transcoder_set

log = logging.getLogger("circuitflow.attribution")


def attribution_dtype(dtype: str, device: str) -> torch.dtype:
    """The torch dtype for `attribution.dtype` on `device`; one line naming the key if the device
    cannot compute in it (CPU computes all three, slowly in 16 bits; CUDA bfloat16 needs Ampere+)."""
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"attribution.dtype {dtype!r} is not one of float32, bfloat16, float16")
    if dtype == "bfloat16" and torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"attribution.dtype bfloat16 is not supported by {torch.cuda.get_device_name(device)}; "
                          "set attribution.dtype to float16 or float32")
    return getattr(torch, dtype)


def load_replacement_model(model_dir: str | Path, transcoder_set: str | Path, backend: str, device: str,
                           dtype: str = "float32"):
    from circuit_tracer import ReplacementModel

    apply_patches()
    torch_dtype = attribution_dtype(dtype, device)
    model_dir = Path(model_dir).resolve()
    facts = read_model_facts(model_dir)
    transcoders = load_transcoder_set(transcoder_set, facts.n_layers, d_model=facts.d_model, dtype=torch_dtype)
    return ReplacementModel.from_pretrained_and_transcoders(
        str(model_dir), transcoders, backend=backend, device=torch.device(device), dtype=torch_dtype)


def next_token_probabilities(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The model's next-token distribution (the replacement model is exact at its output)."""
    hf_model = getattr(model, "_model", model)
    with torch.no_grad():
        logits = hf_model(input_ids[None]).logits[0, -1]
    return logits.float().softmax(-1).cpu()


def write_attribution(prompt: Prompt, model, tokenizer, out_graph: str | Path, out_metadata: str | Path,
                      out_scores: str | Path, settings: AttributePromptSettings) -> dict:
    """Attribute one prompt and write its pruned graph JSON, metadata entry and scores."""
    from circuit_tracer import attribute
    from circuit_tracer.graph import compute_graph_scores
    from circuit_tracer.utils.create_graph_files import create_graph_files

    apply_patches()
    input_ids = torch.tensor(prompt.input_ids, dtype=torch.long, device=settings.device)
    started = time.perf_counter()
    graph = attribute(input_ids, model, max_n_logits=settings.max_n_logits,
                      desired_logit_prob=settings.desired_logit_prob, batch_size=settings.batch_size,
                      max_feature_nodes=settings.max_feature_nodes, verbose=True)
    attribution_seconds = time.perf_counter() - started
    replacement, completeness = compute_graph_scores(graph)
    error_shares = error_influence_by_layer(graph)
    probabilities = next_token_probabilities(model, input_ids)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"graph-{prompt.slug}-") as tmp:
        tmp = Path(tmp).resolve()
        create_graph_files(graph, prompt.slug, str(tmp), scan=settings.scan,
                           node_threshold=settings.node_threshold, edge_threshold=settings.edge_threshold)
        written = json.loads((tmp / f"{prompt.slug}.json").read_text())
        entries = json.loads((tmp / "graph-metadata.json").read_text())["graphs"]
        with atomic_path(out_graph) as out:
            (tmp / f"{prompt.slug}.json").replace(out)
    write_json(out_metadata, next(e for e in entries if e["slug"] == prompt.slug))
    files_seconds = time.perf_counter() - started

    targets = [
        {"token": t.token_str, "id": int(t.vocab_idx), "probability": float(p)}
        for t, p in zip(graph.logit_targets, graph.logit_probabilities)
    ]
    target = None
    if prompt.target_id is not None:
        ranked = torch.argsort(probabilities, descending=True)
        target = {
            "token": prompt.target_token,
            "id": prompt.target_id,
            "probability": float(probabilities[prompt.target_id]),
            "rank": int((ranked == prompt.target_id).nonzero()[0, 0]) + 1,
            "among_target_logits": any(t["id"] == prompt.target_id for t in targets),
        }
    scores = {
        "slug": prompt.slug,
        "origin": prompt.origin,
        "prompt": prompt.text,
        "input_tokens": [tokenizer.decode([i]) for i in prompt.input_ids],
        "replacement_score": float(replacement),
        "completeness_score": float(completeness),
        "error_influence_by_layer": error_shares,  # adds up to 1 - replacement_score
        "target_logits": targets,
        "expected_target": target,
        "active_features": int(graph.active_features.shape[0]),
        "selected_features": int(graph.selected_features.shape[0]),
        "pruned_nodes": len(written["nodes"]),
        "pruned_links": len(written["links"]),
        "seconds": {"attribution": attribution_seconds, "graph_files": files_seconds},
    }
    write_json(out_scores, scores)
    log.info("%s: replacement %.3f, completeness %.3f, %d nodes, top logit %r (p=%.3f), %.1fs",
             prompt.slug, replacement, completeness, scores["pruned_nodes"], targets[0]["token"],
             targets[0]["probability"], attribution_seconds)
    return scores


def attribute_prompt(*, prompt: dict, model_dir: str | Path, transcoder_set: str | Path, out_graph: str | Path,
                     out_metadata: str | Path, out_scores: str | Path, settings: AttributePromptSettings) -> dict:
    """Rule entry point: read and check the prompt and the set first (cheap), then load and attribute.

    `prompt` is ``{"slug", "origin", "text"}`` (`circuitflow.workflow.prompt_param`): ``text``
    is set for prompts written in the config and None for prompt files.
    """
    settings = dataclasses.replace(settings, device=pick_device(settings.device))
    slug, origin = prompt["slug"], prompt["origin"]
    tokenizer = load_tokenizer(model_dir)
    facts = read_model_facts(model_dir)
    inline = {slug: prompt["text"]} if prompt.get("text") is not None else None
    tokenized = tokenize_prompt(slug, origin, read_prompt_text(origin, inline), tokenizer,
                                settings.drop_last_token_as_target, facts.context_length)
    log.info("prompt %s: %d tokens, target %r", origin, len(tokenized.input_ids), tokenized.target_token)
    started = time.perf_counter()
    model = load_replacement_model(model_dir, transcoder_set, settings.backend, settings.device, settings.dtype)
    log.info("loaded replacement model in %.1fs", time.perf_counter() - started)
    return write_attribution(tokenized, model, tokenizer, out_graph, out_metadata, out_scores, settings)
