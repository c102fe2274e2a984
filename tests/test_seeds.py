"""Per-image seeds: image i of a call has its own generator seeded seed + i (A1111's rule, diffusers'
list of generators), so any image of a call can be made again alone, from Python or from its PNG."""
import numpy as np
import pytest

from modelscope_sdxl import cli
from modelscope_sdxl.cli.png import read_png_parameters
from modelscope_sdxl.parameters import MAX_SEED

from test_cli import read_bgr


@pytest.mark.parametrize('mode', ['ensemble', 'sdedit', 'none'])
def test_image_i_of_a_call_is_the_image_of_seed_plus_i_alone(sdxl_pipe, mode):
    together = sdxl_pipe({'text': 'a red circle', 'seed': 40, 'num_inference_steps': 8, 'refiner_mode': mode,
                          'num_images_per_prompt': 3, 'scheduler': 'euler_ancestral'})
    assert together['seeds'] == [40, 41, 42] and together['seed'] == 40
    for i, image in enumerate(together['output_imgs']):
        alone = sdxl_pipe({'text': 'a red circle', 'seed': 40 + i, 'num_inference_steps': 8, 'refiner_mode': mode,
                           'scheduler': 'euler_ancestral'})
        assert alone['seeds'] == [40 + i]
        assert np.abs(alone['output_imgs'][0].astype(int) - image.astype(int)).max() <= 2
    # The images are not the same picture three times.
    first, second = together['output_imgs'][:2]
    assert np.abs(first.astype(int) - second.astype(int)).max() > 10


def test_the_png_of_the_third_image_makes_that_image_alone(tiny_sdxl, tmp_path, capsys):
    out = tmp_path / 'many.png'
    assert cli.main(['generate', 'a dog', '--model', tiny_sdxl[0], '--device', 'cpu', '--seed', '7',
                     '--num-images', '3', '--steps', '6', '--out', str(out)]) == 0
    captured = capsys.readouterr()
    assert 'seeds: 7, 8, 9' in captured.err
    third = tmp_path / 'many-3-9.png'  # OUT-INDEX-SEED.png
    record = read_png_parameters(str(third))
    assert (record['seed'], record['num_images_per_prompt']) == (9, 1)
    again = tmp_path / 'again.png'
    assert cli.main(['generate', '--from-png', str(third), '--out', str(again), '--quiet']) == 0
    assert capsys.readouterr().out.split() == [str(again)]
    # The same picture; batched arithmetic may differ from a single image's in the last bits.
    assert np.abs(read_bgr(again).astype(int) - read_bgr(third).astype(int)).max() <= 2


def test_a_seed_whose_last_image_would_pass_the_maximum_is_refused(sdxl_pipe):
    with pytest.raises(ValueError, match=rf'seed must be <= {MAX_SEED - 2} for 3 images'):
        sdxl_pipe({'text': 'a dog', 'seed': MAX_SEED - 1, 'num_images_per_prompt': 3})
