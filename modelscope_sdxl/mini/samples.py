"""The sample sheet of docs/mini-model.md, drawn by the shipped mini model so it can be remade.

    python -m modelscope_sdxl.mini.samples docs/mini-model-samples.png [MODEL_DIR]

One row per refiner mode (``none``, ``ensemble``, ``sdedit``), one column per prompt of
SAMPLE_PROMPTS, seed 0 and the pipeline's defaults, through the ModelScope pipeline; shown at
twice the size (nearest neighbour, so every pixel stays visible).
"""
from __future__ import annotations

import sys
from typing import Any, List, Optional, Sequence

import numpy as np

from ..parameters import REFINER_MODES as MODES

SAMPLE_PROMPTS: Sequence[str] = (
    'a red circle on a blue background',
    'a small green square at the top left on a white background',
    'a large yellow triangle at the bottom right on a purple background',
    'a white square in the center on a black background',
    'a cyan circle at the right on a red background',
    'a black triangle at the top on a yellow background',
    'a large purple square at the left on a green background',
    'a small blue triangle at the bottom on a cyan background',
)


def sample_sheet(pipe: Any, prompts: Sequence[str] = SAMPLE_PROMPTS, modes: Sequence[str] = MODES,
                 seed: int = 0, gap: int = 4, scale: int = 2) -> np.ndarray:
    """A BGR uint8 grid: a row per mode, a column per prompt, each image enlarged `scale` times,
    `gap` white pixels between them."""
    rows: List[np.ndarray] = []
    for mode in modes:
        images = [pipe({'text': p, 'seed': seed, 'refiner_mode': mode})['output_imgs'][0] for p in prompts]
        images = [img.repeat(scale, axis=0).repeat(scale, axis=1) for img in images]
        h, w, _ = images[0].shape
        row = np.full((h, len(images) * (w + gap) - gap, 3), 255, np.uint8)
        for i, img in enumerate(images):
            row[:, i * (w + gap):i * (w + gap) + w] = img
        rows.append(row)
    sheet = np.full((len(rows) * (rows[0].shape[0] + gap) - gap, rows[0].shape[1], 3), 255, np.uint8)
    for i, row in enumerate(rows):
        sheet[i * (row.shape[0] + gap):i * (row.shape[0] + gap) + row.shape[0]] = row
    return sheet


def main(argv: Optional[Sequence[str]] = None) -> int:
    import cv2
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    from . import mini_model_dir

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print('usage: python -m modelscope_sdxl.mini.samples OUT.png [MODEL_DIR]', file=sys.stderr)
        return 2
    pipe = pipeline(task=Tasks.text_to_image_synthesis, model=argv[1] if len(argv) > 1 else mini_model_dir(),
                    device='cpu')
    if not cv2.imwrite(argv[0], sample_sheet(pipe)):
        print(f'could not write {argv[0]}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
