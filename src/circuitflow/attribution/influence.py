"""Where a graph's error influence sits: the replacement score broken down by layer.

circuit-tracer's replacement score is token influence / (token + error influence), both read
off the influence of every node on the target logits (its `normalize_matrix` and
`compute_influence`, as `compute_graph_scores` does). Each layer's share below is that layer's
error nodes' influence over the same denominator, so the shares add up to 1 - replacement: a
transcoder set that loses replacement shows in which layers it loses it.
"""

from __future__ import annotations


def error_influence_by_layer(graph) -> list[float]:
    """Per layer, its error nodes' share of the token + error influence on the logits."""
    import torch
    from circuit_tracer.graph import compute_influence, normalize_matrix

    n_tokens, n_layers = len(graph.input_tokens), graph.cfg.n_layers
    error_start = len(graph.selected_features)
    error_end = error_start + n_tokens * n_layers
    matrix = graph.adjacency_matrix
    logit_weights = torch.zeros(matrix.shape[0], device=matrix.device)
    logit_weights[-len(graph.logit_targets):] = graph.logit_probabilities
    influence = compute_influence(normalize_matrix(matrix), logit_weights)
    errors = influence[error_start:error_end].reshape(n_layers, n_tokens).sum(-1)  # layer-major, as circuit-tracer
    total = influence[error_end:error_end + n_tokens].sum() + errors.sum()
    return [float(share) for share in (errors / total).cpu()]
