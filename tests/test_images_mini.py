"""The mini model repaints: inpainting with a new colour changes the masked shape's colour and leaves
the rest of the picture; docs/usage.md's before/after pair is what the command line makes."""
import os

import cv2
import numpy as np
import pytest

from modelscope.pipelines import pipeline
from modelscope.utils.constant import Tasks
from modelscope_sdxl import cli
from modelscope_sdxl.mini import mini_model_dir
from modelscope_sdxl.mini.scenes import nearest_colour, read_image

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs')


@pytest.fixture(scope='module')
def mini_pipe():
    return pipeline(task=Tasks.text_to_image_synthesis, model=mini_model_dir(), device='cpu')


def circle_mask(radius=15):
    mask = np.zeros((64, 64), np.uint8)
    cv2.circle(mask, (32, 32), radius, 255, -1)
    return mask


@pytest.mark.parametrize('mode', ['ensemble', 'none', 'sdedit', 'refiner_only'])
def test_inpainting_with_a_new_colour_repaints_the_masked_shape_and_keeps_the_rest(mini_pipe, mode):
    before = mini_pipe({'text': 'a red circle on a blue background', 'seed': 1})['output_imgs'][0]
    assert read_image(before[:, :, ::-1]).colour == 'red'
    mask = circle_mask()
    after = mini_pipe({'text': 'a yellow circle on a blue background', 'seed': 2, 'image': before,
                       'mask_image': mask, 'refiner_mode': mode})['output_imgs'][0]
    reading = read_image(after[:, :, ::-1])
    assert (reading.background, reading.colour, reading.shape) == ('blue', 'yellow', 'circle')
    inner = circle_mask(9) > 0  # well inside the mask: the new colour
    assert nearest_colour(np.median(after[inner][:, ::-1], axis=0)) == 'yellow'
    assert nearest_colour(np.median(before[inner][:, ::-1], axis=0)) == 'red'
    # Outside the mask the picture stays (the VAE's round trip moves pixels a little, more near the edge).
    outside = cv2.dilate(mask, np.ones((5, 5), np.uint8)) == 0
    change = np.abs(after.astype(int) - before.astype(int))[outside]
    assert change.mean() < 4 and np.percentile(change, 99) < 24, (change.mean(), change.max())


def test_img2img_with_a_low_denoising_strength_keeps_the_scene(mini_pipe):
    before = mini_pipe({'text': 'a green square on a white background', 'seed': 4})['output_imgs'][0]
    after = mini_pipe({'text': 'a green square on a white background', 'seed': 5, 'image': before,
                       'denoising_strength': 0.3})['output_imgs'][0]
    seen, was = read_image(after[:, :, ::-1]), read_image(before[:, :, ::-1])
    # The same scene: colours, shape and place; its outline may move by a pixel or two.
    assert (seen.background, seen.colour, seen.shape, seen.cell) == (was.background, was.colour, was.shape, was.cell)
    assert abs(seen.area - was.area) < 0.01 and seen.stray_pixels == was.stray_pixels
    assert np.abs(after.astype(int) - before.astype(int)).mean() < 8


@pytest.mark.parametrize('name,flags', [('inpaint-after.png', ['--image', 'inpaint-before.png', '--mask',
                                                             'inpaint-mask.png']),
                                        ('refine-after.png', ['--image', 'inpaint-before.png'])])
def test_the_docs_pictures_are_what_the_command_line_makes(name, flags, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(DOCS)  # the commands of docs/usage.md run in docs/
    before = cv2.imread('inpaint-before.png')
    assert read_image(before[:, :, ::-1]).colour == 'red'
    out = tmp_path / name
    assert cli.main(['generate', '--from-png', name, *flags, '--out', str(out), '--quiet']) == 0
    assert capsys.readouterr().err == ''
    assert np.abs(cv2.imread(str(out)).astype(int) - cv2.imread(name).astype(int)).max() <= 2
    if name == 'inpaint-after.png':
        assert read_image(cv2.imread(name)[:, :, ::-1]).colour == 'yellow'
