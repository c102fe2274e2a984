"""Checks of base and refiner folders before any weight is loaded, with errors that say what to fix.

Loading a broken folder otherwise fails deep in diffusers or transformers, or —
worse — transformers fills missing weights with random numbers and only logs it.
Each check reads configs and safetensors headers only (no weights), and the
networks are compared with their configs on the meta device, so a full-size
check takes well under a second.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

BASE_PIPELINE = 'StableDiffusionXLPipeline'
REFINER_PIPELINE = 'StableDiffusionXLImg2ImgPipeline'
# component -> (weights file stem, library class name used to build it from its config)
NETWORKS = {
    'unet': ('diffusion_pytorch_model', 'UNet2DConditionModel'),
    'vae': ('diffusion_pytorch_model', 'AutoencoderKL'),
    'text_encoder': ('model', 'CLIPTextModel'),
    'text_encoder_2': ('model', 'CLIPTextModelWithProjection'),
}
BASE_COMPONENTS = ('unet', 'vae', 'text_encoder', 'text_encoder_2', 'tokenizer', 'tokenizer_2', 'scheduler')
# The refiner borrows the base's text_encoder_2, tokenizer_2 and VAE.
REFINER_COMPONENTS = ('unet', 'scheduler')
PICKLE_SUFFIXES = ('.bin', '.ckpt', '.pt', '.pth')


class ModelFolderError(ValueError):
    """A base or refiner folder is not a loadable SDXL folder; the message names the file and the fix."""


def _read_json(path: str, what: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ModelFolderError(f'{what}: {path} is missing')
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f'{what}: {path} is not valid JSON ({exc})') from exc


def weights_file(folder: str, component: str, allow_pickle: bool) -> str:
    """The component's single weights file; pickle files only with `allow_pickle`."""
    stem = NETWORKS[component][0]
    sub = os.path.join(folder, component)
    safe = os.path.join(sub, stem + '.safetensors')
    if os.path.isfile(safe):
        return safe
    if os.path.isfile(safe + '.index.json'):
        return safe + '.index.json'
    pickles = [f for f in sorted(os.listdir(sub)) if f.endswith(PICKLE_SUFFIXES)] if os.path.isdir(sub) else []
    if pickles and allow_pickle:
        return os.path.join(sub, pickles[0])
    if pickles:
        raise ModelFolderError(
            f'{component}: {os.path.join(sub, pickles[0])} is a pickle file, which can run code when loaded; '
            f'it is refused unless the caller opts in with pipeline(..., allow_pickle=True) or --allow-pickle (a '
            f"repo's configuration.json cannot), or convert it to {stem}.safetensors")
    raise ModelFolderError(f'{component}: {safe} is missing')


def _header_shapes(path: str) -> Dict[str, List[int]]:
    from safetensors import SafetensorError, safe_open

    files = [path]
    if path.endswith('.index.json'):
        index = _read_json(path, 'weights index')
        files = sorted({os.path.join(os.path.dirname(path), f) for f in index.get('weight_map', {}).values()})
    shapes: Dict[str, List[int]] = {}
    for file in files:
        try:
            with safe_open(file, 'pt') as f:
                for key in f.keys():
                    shapes[key] = list(f.get_slice(key).get_shape())
        except (SafetensorError, OSError) as exc:
            raise ModelFolderError(f'{file} is truncated or corrupt ({exc}); download it again') from exc
    return shapes


def _expected_shapes(component: str, config_dir: str) -> Dict[str, List[int]]:
    """Parameter shapes the component's config implies, from a network built on the meta device.

    Weight initialisation is skipped (transformers' own `no_init_weights`, which its from_pretrained
    uses too): on meta tensors it only costs time, as much as loading a small model.
    """
    import accelerate

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights

    class_name = NETWORKS[component][1]
    with accelerate.init_empty_weights(), no_init_weights():
        if class_name.startswith('CLIP'):
            import transformers
            config = transformers.CLIPTextConfig.from_pretrained(config_dir)
            network = getattr(transformers, class_name)(config)
        else:
            import diffusers
            cls = getattr(diffusers, class_name)
            network = cls.from_config(cls.load_config(config_dir))
    return {k: list(v.shape) for k, v in network.state_dict().items()}


def _check_weights(folder: str, component: str, allow_pickle: bool) -> None:
    path = weights_file(folder, component, allow_pickle)
    if path.endswith(PICKLE_SUFFIXES):
        return  # an explicit opt-in: only diffusers can read it
    config_dir = os.path.join(folder, component)
    _read_json(os.path.join(config_dir, 'config.json'), component)
    found, expected = _header_shapes(path), _expected_shapes(component, config_dir)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
    if missing or unexpected or wrong:
        details = []
        if wrong:
            details.append('shape of ' + ', '.join(f'{k} is {found[k]}, config needs {expected[k]}' for k in wrong[:3]))
        if missing:
            details.append(f'{len(missing)} weight(s) missing, e.g. {missing[0]}')
        if unexpected:
            details.append(f'{len(unexpected)} weight(s) the config has no place for, e.g. {unexpected[0]}')
        raise ModelFolderError(f'{component}: {path} does not match {os.path.join(config_dir, "config.json")}: '
                               + '; '.join(details))


def check_folder(folder: str, role: str, allow_pickle: bool = False) -> Dict[str, Any]:
    """Check an SDXL `role` ('base' or 'refiner') folder; return its configs by component."""
    expected_class = BASE_PIPELINE if role == 'base' else REFINER_PIPELINE
    check_links(folder)
    index = _read_json(os.path.join(folder, 'model_index.json'), f'SDXL {role} folder {folder}')
    class_name = index.get('_class_name')
    if class_name != expected_class:
        hint = (' (a Stable Diffusion 1.x/2.x layout, with one text encoder)'
                if class_name in ('StableDiffusionPipeline', 'StableDiffusionImg2ImgPipeline') else '')
        raise ModelFolderError(f'{folder} is not an SDXL {role}: model_index.json names {class_name!r}{hint}; '
                               f'expected {expected_class!r}')
    configs: Dict[str, Any] = {}
    for component in BASE_COMPONENTS if role == 'base' else REFINER_COMPONENTS:
        sub = os.path.join(folder, component)
        if not os.path.isdir(sub):
            raise ModelFolderError(f'SDXL {role} folder {folder} has no {component}/ folder')
        if component in NETWORKS:
            check_config_fields(sub, component)
            _check_weights(folder, component, allow_pickle)
            configs[component] = _read_json(os.path.join(sub, 'config.json'), component)
        elif component == 'scheduler':
            configs[component] = _read_json(os.path.join(sub, 'scheduler_config.json'), component)
        elif not any(os.path.isfile(os.path.join(sub, f)) for f in ('tokenizer.json', 'vocab.json')):
            raise ModelFolderError(f'{component}: {sub} holds neither tokenizer.json nor vocab.json')
        else:
            check_bpe_files(sub, component)
    if role == 'refiner':
        for shared in ('text_encoder_2', 'vae'):
            path = os.path.join(folder, shared, 'config.json')
            check_config_fields(os.path.dirname(path), shared)
            if os.path.isfile(path):
                configs[shared] = _read_json(path, shared)
    return configs


def _time_ids_width(unet: Dict[str, Any], pooled_width: int, time_ids: int, role: str) -> None:
    expected = time_ids * unet.get('addition_time_embed_dim', 0) + pooled_width
    if unet.get('projection_class_embeddings_input_dim') != expected:
        raise ModelFolderError(
            f"{role} unet/config.json: projection_class_embeddings_input_dim is "
            f"{unet.get('projection_class_embeddings_input_dim')}, but {time_ids} time ids x "
            f"{unet.get('addition_time_embed_dim')} + the pooled text embedding ({pooled_width}) make {expected}")


def check_pair(base: Dict[str, Any], refiner: Optional[Dict[str, Any]]) -> None:
    """The UNets must fit the text encoders they get; the refiner must fit the base's shared parts."""
    te1, te2, unet = base['text_encoder'], base['text_encoder_2'], base['unet']
    width = te1['hidden_size'] + te2['hidden_size']
    if unet.get('cross_attention_dim') != width:
        raise ModelFolderError(f"base unet/config.json: cross_attention_dim is {unet.get('cross_attention_dim')}, "
                               f'but the two text encoders give {width}')
    _time_ids_width(unet, te2['projection_dim'], 6, 'base')
    if refiner is None:
        return
    for key in ('hidden_size', 'projection_dim', 'num_hidden_layers', 'vocab_size'):
        theirs = refiner.get('text_encoder_2', {}).get(key, te2[key])
        if theirs != te2[key]:
            raise ModelFolderError(
                f"the refiner's text_encoder_2 does not match the base's ({key}: {theirs} vs {te2[key]}); "
                'the refiner shares the base text encoder, so base and refiner must come from the same family')
    r_unet = refiner['unet']
    if r_unet.get('cross_attention_dim') != te2['hidden_size']:
        raise ModelFolderError(
            f"refiner unet/config.json: cross_attention_dim is {r_unet.get('cross_attention_dim')}, but the base's "
            f"text_encoder_2 gives {te2['hidden_size']}")
    _time_ids_width(r_unet, te2['projection_dim'], 5, 'refiner')
    for key in ('latent_channels', 'scaling_factor'):
        theirs = refiner.get('vae', {}).get(key, base['vae'].get(key))
        if theirs != base['vae'].get(key):
            raise ModelFolderError(f"the refiner's vae does not match the base's ({key}: {theirs} vs "
                                   f"{base['vae'].get(key)})")
    if r_unet.get('in_channels') != base['vae'].get('latent_channels'):
        raise ModelFolderError(f"refiner unet/config.json: in_channels is {r_unet.get('in_channels')}, but the VAE "
                               f"makes {base['vae'].get('latent_channels')}-channel latents")


# Config fields the pipeline relies on: component -> {field: (required, kind)}; kind 'int' is an integer
# >= 1, 'ints' a non-empty list of them, 'number' a finite number > 0, 'int?' an integer >= 1 or null.
CONFIG_FIELDS: Dict[str, Dict[str, Any]] = {
    'unet': {'sample_size': (True, 'int'), 'in_channels': (False, 'int'), 'out_channels': (False, 'int'),
             'cross_attention_dim': (False, 'int'), 'addition_time_embed_dim': (False, 'int'),
             'projection_class_embeddings_input_dim': (False, 'int'), 'time_cond_proj_dim': (False, 'int?')},
    'vae': {'block_out_channels': (True, 'ints'), 'latent_channels': (False, 'int'),
            'scaling_factor': (False, 'number')},
    'text_encoder': {'hidden_size': (True, 'int'), 'num_hidden_layers': (True, 'int'), 'vocab_size': (False, 'int')},
    'text_encoder_2': {'hidden_size': (True, 'int'), 'num_hidden_layers': (True, 'int'),
                       'projection_dim': (True, 'int'), 'vocab_size': (False, 'int')},
}
_LARGEST = 1 << 20
_KINDS = {'int': 'an integer from 1 to 1048576', 'int?': 'an integer from 1 to 1048576 or null',
          'ints': 'a non-empty list of integers from 1 to 1048576', 'number': 'a finite number > 0'}


def _fits(value: Any, kind: str) -> bool:
    import math

    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= _LARGEST

    if kind == 'int?':
        return value is None or whole(value)
    if kind == 'ints':
        return isinstance(value, list) and bool(value) and all(whole(v) for v in value)
    if kind == 'number':
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return whole(value)


def check_config_fields(sub: str, component: str) -> None:
    """The config fields the pipeline reads, type- and range-checked, naming the file and the field
    (a bad one otherwise fails deep inside diffusers or torch, or at every call)."""
    path = os.path.join(sub, 'config.json')
    if component not in CONFIG_FIELDS or not os.path.isfile(path):
        return
    config = _read_json(path, component)
    if not isinstance(config, dict):
        raise ModelFolderError(f'{component}: {path} must hold a JSON object')
    for field, (required, kind) in CONFIG_FIELDS[component].items():
        if field not in config:
            if required:
                raise ModelFolderError(f'{component}: {path} has no {field!r}; it must be {_KINDS[kind]}')
            continue
        if not _fits(config[field], kind):
            raise ModelFolderError(f'{component}: {path}: {field} must be {_KINDS[kind]}, got {config[field]!r:.80}')


def check_bpe_files(sub: str, component: str) -> None:
    """A CLIP tokenizer needs its BPE merges: without them it reads every word letter by letter and
    the images change without any error."""
    vocab, merges, fast = (os.path.join(sub, f) for f in ('vocab.json', 'merges.txt', 'tokenizer.json'))
    if os.path.isfile(vocab):
        if not os.path.isfile(merges):
            raise ModelFolderError(f'{component}: {merges} is missing; a BPE tokenizer needs its merges with vocab.json')
        with open(merges, encoding='utf-8', errors='replace') as f:
            lines = [line for line in f if line.strip() and not line.startswith('#version')]
        if not lines:
            raise ModelFolderError(f'{component}: {merges} holds no merges; download it again')
    if os.path.isfile(fast):
        model = _read_json(fast, component).get('model')
        if isinstance(model, dict) and model.get('type') == 'BPE' and not model.get('merges'):
            raise ModelFolderError(f'{component}: {fast} holds no BPE merges; download it again')


def check_tokenizer(tokenizer: Any, where: str) -> None:
    """A loaded tokenizer must read whole words of its own vocabulary as one token each (most of a
    sample of them): merges that do not belong to the vocabulary fail this."""
    vocab = tokenizer.get_vocab()
    words = sorted((i, t[:-4]) for t, i in vocab.items()
                   if t.endswith('</w>') and len(t) >= 7 and t[:-4].isascii() and t[:-4].isalpha()
                   and t[:-4].islower())
    if not words:
        return
    sample = words[::max(1, len(words) // 64)][:64]
    wrong = [(i, w) for i, w in sample if tokenizer(w, add_special_tokens=False).input_ids != [i]]
    if len(wrong) * 2 > len(sample):
        i, w = wrong[0]
        raise ModelFolderError(
            f'{where}: the tokenizer does not read its own vocabulary ({len(wrong)} of {len(sample)} sampled words '
            f'split, e.g. {w!r}, token {i}); its merges do not belong to its vocab.json; download it again')


def check_links(folder: str) -> None:
    """Symbolic links in a folder downloaded from the hub must stay inside its repo in the download cache
    (where the hub's own links point); a folder named by the caller is the caller's, links included."""
    from .repo_trust import _inside, hub_repo_root

    root = hub_repo_root(folder)
    if root is None:
        return
    for current, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(current, name)
            if os.path.islink(path) and not _inside(path, root):
                raise ModelFolderError(f'{os.path.relpath(path, folder)} in the downloaded repo {os.path.basename(root)} '
                                       'is a link that leaves the repo; links out of a downloaded repo are not followed')
