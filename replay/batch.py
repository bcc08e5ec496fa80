"""Replay batches and recorded episodes (numpy dicts {key: (B, T, ...)}) as torch tensors."""
from __future__ import annotations

import numpy as np
import torch


def to_torch(batch: dict, device) -> dict:
    """Replay batch (numpy, (B, T, ...)) -> tensors; images stay uint8, flags bool, rest float32."""
    out = {}
    for key, value in batch.items():
        t = torch.as_tensor(np.asarray(value))
        if t.dtype == torch.float64:
            t = t.float()
        out[key] = t.to(device, non_blocking=True)
    return out
