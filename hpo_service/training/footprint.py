"""How much device memory a trial needs, estimated from the model's config (no weights loaded)."""

from __future__ import annotations

import torch

from hpo_service.core.definition import ModelSpec
from hpo_service.training.modeling import load_config

# fp32 weights, gradients and AdamW's two moments.
STATE_BYTES_PER_PARAMETER = 16
# CUDA context, cuBLAS workspaces and the caching allocator's slack of one trial.
TRIAL_OVERHEAD_BYTES = 1 << 30


def gpu_memory_bytes() -> int:
    """The total memory of this process's first CUDA device."""
    return int(torch.cuda.get_device_properties(0).total_memory)


def trial_footprint(
    spec: ModelSpec, label_names: list[str], batch_size: int, seq_length: int
) -> tuple[int, int]:
    """(bytes of one trial alone, bytes each further fused member adds).

    States are 16 bytes a parameter; activations follow Korthikanti et al. (2022): per layer
    ``s·b·h·(34 + 5·a·s/h)`` bytes in 16-bit precision.
    """
    from transformers import AutoModelForSequenceClassification

    config = load_config(spec, label_names)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    parameters = sum(p.numel() for p in model.parameters())
    hidden, heads = config.hidden_size, config.num_attention_heads
    per_layer = seq_length * batch_size * hidden * (34 + 5 * heads * seq_length / hidden)
    member = STATE_BYTES_PER_PARAMETER * parameters + int(config.num_hidden_layers * per_layer)
    return member + TRIAL_OVERHEAD_BYTES, member
