"""Measured quality of the mini model: do the pixels show what the prompt asks for?

A fixed set of prompts covering the mini grammar (scenes.py), one seed each,
is run through a pipeline in each refiner mode. From every returned BGR array
the background colour, the shape colour, the shape kind (two readings of how
much of its bounding box the shape fills), its 3x3 grid cell, its size and any
stray patches are read back (scenes.read_image) and compared with the
prompt; the median seconds per image are reported too. THRESHOLDS are what
the shipped model is held to in every mode.

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
from .scenes import COLOURS, POSITIONS, SHAPES, SIZES, Scene, read_image

EVAL_SEED = 20240611
#: Every shape x size x position phrase (3 x 3 x 10, "in the center" and no position both
#: included), each once, with shape/background colour pairs dealt from a seeded shuffle of all
#: 56 ordered pairs so that every pair appears.
EVAL_COUNT = len(SHAPES) * len(SIZES) * len(POSITIONS)
#: What the quality test asserts, in every refiner mode: the shipped model's measured level less a
#: margin of about one image in 90 (docs/mini-model.md has the figures). The goal for the
#: shape-related columns is 0.90 and more (clean: 0.95); the shipped model does not reach it.
THRESHOLDS: Dict[str, float] = {'colours': 0.95, 'position': 0.95, 'shape': 0.54, 'shape_fill': 0.55,
                                'size': 0.70, 'clean': 0.72}


def eval_scenes(count: int = EVAL_COUNT) -> List[Scene]:
    """The fixed evaluation prompts (the same every run), covering the whole grammar; the first
    `count` of them (their order is shuffled, so a prefix is a fair sample)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= EVAL_COUNT:
        raise ValueError(f'count: the number of evaluation prompts, an integer from 1 to {EVAL_COUNT}; got {count!r}')
    rng = np.random.default_rng(EVAL_SEED)
    colours = list(COLOURS)
    pairs = [(a, b) for a in colours for b in colours if a != b]
    dealt = [pairs[i] for i in rng.permutation(len(pairs))]
    dealt += [pairs[i] for i in rng.permutation(len(pairs))]
    combos = [(shape, size, position) for shape in SHAPES for size in SIZES for position in POSITIONS]
    scenes = [Scene(colour=c, shape=shape, background=b, size=size, position=position)
              for (shape, size, position), (c, b) in zip(combos, dealt)]
    return [scenes[i] for i in rng.permutation(len(scenes))][:count]


def score_images(scenes: Sequence[Scene], bgr_images: Sequence[np.ndarray]) -> Dict[str, float]:
    """Shares of images whose pixels match their scene.

    colours (both), background, shape colour, position (3x3 grid cell); shape by the
    reader's fill thresholds (``shape``) and by the nearest ideal fill ratio (``shape_fill``:
    square 1, circle 0.785, triangle 0.5); size (the area read, for the prompted shape);
    ``clean``: no stray patch (scenes.read_image); and the mean fill ratio read for
    each prompted shape kind (``fill_circle`` ...; drawn exactly: 1.0, 0.785, 0.5).
    """
    keys = ('colours', 'background', 'shape_colour', 'shape', 'shape_fill', 'position', 'size', 'clean')
    hits = dict.fromkeys(keys, 0)
    fills: Dict[str, List[float]] = {shape: [] for shape in SHAPES}
    for scene, bgr in zip(scenes, bgr_images):
        seen = read_image(np.asarray(bgr)[:, :, ::-1])
        hits['background'] += seen.background == scene.background
        hits['shape_colour'] += seen.colour == scene.colour
        hits['colours'] += seen.background == scene.background and seen.colour == scene.colour
        hits['shape'] += seen.shape == scene.shape
        hits['shape_fill'] += seen.fill_shape() == scene.shape
        hits['position'] += seen.cell == scene.cell()
        hits['size'] += seen.colour is not None and seen.size_word(scene.shape) == scene.size
        hits['clean'] += seen.colour is not None and seen.stray_pixels == 0
        fills[scene.shape].append(seen.fill if seen.fill is not None else 0.0)
    report = {k: v / len(scenes) for k, v in hits.items()}
    report.update({f'fill_{shape}': float(np.mean(v)) for shape, v in fills.items() if v})
    return report


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
