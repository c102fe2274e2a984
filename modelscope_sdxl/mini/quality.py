"""Measured quality of the mini model: do the pixels show the colours the prompt asks for?

A fixed set of prompts from the mini grammar (scenes.py), one seed each, is
run through a pipeline in each refiner mode. From every returned BGR array the
background colour and the shape colour are read back (scenes.read_image)
and compared with the prompt. ``colours`` -- the headline figure -- is the share
of images where both match; the shape kind and its 3x3 grid cell are reported
too, as are the median seconds per image.

    python -m modelscope_sdxl.mini.quality [MODEL_DIR]
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..parameters import REFINER_MODES
from .scenes import Scene, random_scenes, read_image

EVAL_SEED = 20240611
EVAL_COUNT = 64


def eval_scenes(count: int = EVAL_COUNT) -> List[Scene]:
    """The fixed evaluation prompts (the same every run)."""
    return random_scenes(np.random.default_rng(EVAL_SEED), count)


def score_images(scenes: Sequence[Scene], bgr_images: Sequence[np.ndarray]) -> Dict[str, float]:
    """Shares of images whose pixels match their scene: colours (both), background, shape colour,
    shape kind and position (3x3 grid cell)."""
    hits = {'colours': 0, 'background': 0, 'shape_colour': 0, 'shape': 0, 'position': 0}
    for scene, bgr in zip(scenes, bgr_images):
        seen = read_image(np.asarray(bgr)[:, :, ::-1])
        hits['background'] += seen.background == scene.background
        hits['shape_colour'] += seen.colour == scene.colour
        hits['colours'] += seen.background == scene.background and seen.colour == scene.colour
        hits['shape'] += seen.shape == scene.shape
        hits['position'] += seen.cell == scene.cell()
    return {k: v / len(scenes) for k, v in hits.items()}


def evaluate(pipe: Any, modes: Sequence[str] = REFINER_MODES, count: int = EVAL_COUNT,
             first_seed: int = 0, **params: Any) -> Dict[str, Dict[str, Any]]:
    """Run the fixed prompts (seed first_seed + i for prompt i) in each mode; score and time them.

    `params` (e.g. num_inference_steps) go to every call; by default the
    pipeline's own defaults (30 steps, guidance 5.0, native size) are used.
    """
    scenes = eval_scenes(count)
    report: Dict[str, Dict[str, Any]] = {}
    for mode in modes:
        images, seconds = [], []
        for i, scene in enumerate(scenes):
            start = time.perf_counter()
            out = pipe({'text': scene.prompt(), 'seed': first_seed + i, 'refiner_mode': mode, **params})
            seconds.append(time.perf_counter() - start)
            images.append(out['output_imgs'][0])
        report[mode] = dict(score_images(scenes, images), images=count,
                            seconds_per_image=statistics.median(seconds))
    return report


def evaluate_folder(model_dir: Optional[str] = None, modes: Sequence[str] = REFINER_MODES, count: int = EVAL_COUNT,
                    **params: Any) -> Dict[str, Dict[str, Any]]:
    """`evaluate` on the ModelScope pipeline built from `model_dir` (default: the shipped mini model)."""
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    from . import mini_model_dir

    pipe = pipeline(task=Tasks.text_to_image_synthesis, model=model_dir or mini_model_dir(), device='cpu')
    return evaluate(pipe, modes=modes, count=count, **params)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    report = evaluate_folder(argv[0] if argv else None)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
