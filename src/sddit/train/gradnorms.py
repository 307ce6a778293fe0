"""How hard each loss term pulls on each part of the network: the gradient norm of every weighted
loss term (the objective's `parts`, e.g. `gen` and `disc` for SD-DiT) on every part of the model.

Why: SD-DiT's encoder gets gradients from two losses. If the discriminative one is much larger, the
encoder (and the timestep / label embedders that the decoder shares) is trained almost only for
alignment. These norms, logged every `train.gradnorm_every` steps as `gradnorm_<term>_<part>` in
metrics.jsonl and drawn in gradnorm.png, show the balance.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Model attribute -> part. DiT has no split: its blocks count as "encoder" and its final layer as
# "decoder", so its rows line up with the split models'. Fixed tables (pos_embed) have no gradient.
PART_OF = {
    "x_embedder": "embedders",
    "t_embedder": "embedders",
    "y_embedder": "embedders",
    "cls_token": "embedders",
    "cls_pos_embed": "embedders",
    "blocks": "encoder",
    "decoder_embed": "decoder",
    "decoder_cond": "decoder",
    "mask_token": "decoder",
    "decoder_blocks": "decoder",
    "final_layer": "decoder",
    "head": "head",
}


def parameter_parts(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters of a DiT or SplitDiT grouped by part (embedders, encoder, decoder, head)."""
    parts: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            parts.setdefault(PART_OF[name.split(".", 1)[0]], []).append(p)
    return parts


def gradient_norms(terms: dict[str, Tensor], model: nn.Module) -> dict[str, float]:
    """`gradnorm_<term>_<part>`: the L2 norm of d(term)/d(parameters of part), for every term and part.

    Uses `torch.autograd.grad` with `retain_graph=True`, so the training step's backward still runs
    on the same graph afterwards and the parameters' `.grad` are untouched. A part a term does not
    reach gets 0.
    """
    parts = parameter_parts(model)
    names = list(parts)
    flat = [p for n in names for p in parts[n]]
    out: dict[str, float] = {}
    for term, value in terms.items():
        grads = torch.autograd.grad(value, flat, retain_graph=True, allow_unused=True)
        i = 0
        for n in names:
            sq = sum(float(g.float().pow(2).sum()) for g in grads[i : i + len(parts[n])] if g is not None)
            out[f"gradnorm_{term}_{n}"] = sq**0.5
            i += len(parts[n])
    return out
