"""Pictures from the command line and batch files: --image/--mask/--denoising-strength, PNGs that record
each input file's SHA-256 so --from-png names the file it needs and remakes the same pixels, and batch
lines whose pictures are paths relative to the JSONL file or base64."""
import base64
import hashlib
import json

import cv2
import numpy as np
from PIL import Image

from modelscope_sdxl import cli
from modelscope_sdxl.cli.batch import run_batch
from modelscope_sdxl.cli.png import read_png_parameters

from test_images import centre_mask, scene_bgr

PROMPT = 'a green square on a white background'


def run_cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_pictures(folder):
    image, mask = folder / 'photo.png', folder / 'mask.png'
    cv2.imwrite(str(image), scene_bgr())
    cv2.imwrite(str(mask), centre_mask())
    return image, mask


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_generate_with_image_and_mask_records_the_files_and_from_png_remakes_the_pixels(tiny_sdxl, sdxl_pipe,
                                                                                         tmp_path, capsys):
    image, mask = write_pictures(tmp_path)
    out = tmp_path / 'out.png'
    code, stdout, err = run_cli(['generate', PROMPT, '--model', tiny_sdxl[0], '--image', image, '--mask', mask,
                                 '--denoising-strength', 0.8, '--refiner-mode', 'sdedit', '--seed', 5, '--steps', 6,
                                 '--out', out, '--quiet'], capsys)
    assert (code, err) == (0, ''), err
    direct = sdxl_pipe({'text': PROMPT, 'image': cv2.imread(str(image)), 'mask_image': centre_mask(),
                        'denoising_strength': 0.8, 'refiner_mode': 'sdedit', 'seed': 5, 'num_inference_steps': 6})
    assert np.array_equal(cv2.imread(str(out)), direct['output_imgs'][0])

    record = read_png_parameters(str(out))
    assert record['image'] == {'file': 'photo.png', 'sha256': sha256(image)}
    assert record['mask_image'] == {'file': 'mask.png', 'sha256': sha256(mask)}
    assert record['denoising_strength'] == 0.8
    with Image.open(out) as png:
        assert 'Denoising strength: 0.8' in png.text['parameters']

    # Without the picture, --from-png says which file it needs.
    code, _, err = run_cli(['generate', '--from-png', out, '--out', tmp_path / 'x.png', '--quiet'], capsys)
    assert code == 2 and 'Traceback' not in err
    assert "was made from the image 'photo.png'" in err and sha256(image) in err and '--image PATH' in err
    code, _, err = run_cli(['generate', '--from-png', out, '--image', image, '--out', tmp_path / 'x.png', '--quiet'],
                           capsys)
    assert code == 2 and "was made from the mask_image 'mask.png'" in err and '--mask PATH' in err

    # With both, the same pixels.
    again = tmp_path / 'again.png'
    code, _, err = run_cli(['generate', '--from-png', out, '--image', image, '--mask', mask, '--out', again,
                            '--quiet'], capsys)
    assert (code, err) == (0, '')
    assert np.array_equal(cv2.imread(str(again)), cv2.imread(str(out)))
    assert read_png_parameters(str(again)) == record

    # Another picture: made, with a note that it is not the recorded one.
    other = tmp_path / 'other.png'
    cv2.imwrite(str(other), scene_bgr('yellow', 'black', 'triangle'))
    code, _, err = run_cli(['generate', '--from-png', out, '--image', other, '--mask', mask,
                            '--out', tmp_path / 'o.png'], capsys)
    assert code == 0 and 'is not the image' in err and 'photo.png' in err


def test_a_text_png_remade_from_a_picture_drops_its_size(tiny_sdxl, tmp_path, capsys):
    image, _ = write_pictures(tmp_path)
    text = tmp_path / 'text.png'
    assert run_cli(['generate', PROMPT, '--model', tiny_sdxl[0], '--steps', 4, '--height', 48, '--out', text,
                    '--quiet'], capsys)[0] == 0
    code, _, err = run_cli(['generate', '--from-png', text, '--image', image, '--out', tmp_path / 'p.png', '--quiet'],
                           capsys)
    assert (code, err) == (0, '')
    assert cv2.imread(str(tmp_path / 'p.png')).shape == (64, 64, 3)


def test_bad_picture_flags_end_in_one_line(tiny_sdxl, tmp_path, capsys):
    image, mask = write_pictures(tmp_path)
    for argv, expected in [
        (['--image', tmp_path / 'missing.png'], 'image: no such file'),
        (['--mask', mask], 'mask_image needs an image'),
        (['--image', image, '--height', 64], 'height cannot be given with an image'),
        (['--image', image, '--denoising-strength', 1.5], 'denoising_strength must be'),
        # In the command line's words (cli/words.py).
        (['--refiner-mode', 'refiner_only'], '--refiner-mode refiner_only refines a given picture'),
    ]:
        code, _, err = run_cli(['generate', PROMPT, '--model', tiny_sdxl[0], '--out', tmp_path / 'b.png', '--quiet',
                                *argv], capsys)
        assert code == 2 and 'Traceback' not in err and expected in err.strip().splitlines()[-1], err


def test_batch_lines_take_pictures_relative_to_the_jsonl_file_or_as_base64(sdxl_pipe, tmp_path, monkeypatch):
    folder = tmp_path / 'inputs'
    folder.mkdir()
    image, mask = write_pictures(folder)
    encoded = base64.b64encode(image.read_bytes()).decode()
    lines = [
        {'id': 'paths', 'text': PROMPT, 'image': 'photo.png', 'mask_image': 'mask.png', 'seed': 1,
         'num_inference_steps': 6, 'refiner_mode': 'refiner_only'},
        {'id': 'base64', 'text': PROMPT, 'image': encoded, 'seed': 2, 'num_inference_steps': 6},
        {'id': 'missing', 'text': PROMPT, 'image': 'nope.png', 'num_inference_steps': 6},
    ]
    prompts = folder / 'prompts.jsonl'
    prompts.write_text('\n'.join(json.dumps(line) for line in lines) + '\n')
    monkeypatch.chdir(tmp_path)  # relative to the JSONL file, not to the working directory
    out = tmp_path / 'out'
    result = run_batch(str(prompts), str(out), pipe=sdxl_pipe, log=lambda _: None)
    assert (result.ok, result.invalid) == (2, 1)

    made = cv2.imread(str(out / 'paths-1.png'))
    direct = sdxl_pipe({'text': PROMPT, 'image': scene_bgr(), 'mask_image': centre_mask(), 'seed': 1,
                        'num_inference_steps': 6, 'refiner_mode': 'refiner_only'})['output_imgs'][0]
    assert np.array_equal(made, direct)
    assert read_png_parameters(str(out / 'paths-1.png'))['image'] == {'file': 'photo.png', 'sha256': sha256(image)}
    direct = sdxl_pipe({'text': PROMPT, 'image': scene_bgr(), 'seed': 2, 'num_inference_steps': 6})['output_imgs'][0]
    assert np.array_equal(cv2.imread(str(out / 'base64-1.png')), direct)
    assert read_png_parameters(str(out / 'base64-1.png'))['image'] == {'sha256': sha256(image)}
    manifest = [json.loads(line) for line in (out / 'manifest.jsonl').read_text().splitlines()]
    missing = next(entry for entry in manifest if entry['id'] == 'missing')
    assert missing['status'] == 'invalid' and 'image: no such file' in missing['error']

    # Resumable as before: a second run makes nothing again.
    again = run_batch(str(prompts), str(out), pipe=sdxl_pipe, log=lambda _: None)
    assert again.skipped == 3 and again.recorded == 0


def test_only_the_modelscope_server_process_refuses_picture_paths():
    from modelscope_sdxl.cli.plugin import serving

    assert serving(['modelscope', 'server', '--model_id', 'a/b'])
    assert serving(['modelscope', '--token', 'T', 'server', '--model_id', 'a/b'])
    assert not serving(['modelscope', 'sdxl', 'generate', 'server'])
    assert not serving(['modelscope', 'download', '--model', 'a/b'])
    assert not serving(['modelscope-sdxl', 'generate', 'a dog'])
