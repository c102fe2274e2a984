"""Images in [0, 1] -> what ModelScope's image tasks return: BGR uint8 arrays for cv2."""
from __future__ import annotations

from typing import List

import numpy as np
import torch


def to_bgr_arrays(images: torch.Tensor) -> List[np.ndarray]:
    """(N, 3, H, W) floats in [0, 1] (RGB) -> N arrays H x W x 3, uint8, BGR, C-contiguous.

    Rounds like diffusers' ``numpy_to_pil`` so pixels match a plain diffusers run.
    """
    rgb = (images.permute(0, 2, 3, 1).float().numpy() * 255).round().astype(np.uint8)
    return [np.ascontiguousarray(img[:, :, ::-1]) for img in rgb]
