"""Single-file SDXL checkpoints (``sd_xl_base_1.0.safetensors``, what AUTOMATIC1111 and model sites use).

A single file holds the networks' weights in the original (Stability AI) key layout but no configs
and no tokenizers. diffusers' own single-file loading (``from_single_file``) converts the weights; it
is always given a local config folder, so it never asks a hub for configs:

- by default the SDXL base and refiner configs shipped in this package (``single_file_configs/``:
  model_index.json, scheduler, UNet, VAE and text encoder configs of stabilityai's SDXL 1.0 repos);
- or ``single_file_config=``: a diffusers-layout folder (an SDXL repo folder; its weights are not
  read) for the base, or ``{'base': folder, 'refiner': folder}``, for checkpoints of other shapes.

Tokenizers: a single file holds none. A config folder with ``tokenizer/`` and ``tokenizer_2/`` folders
provides its own; for the shipped configs (and any given folder lacking them) the package's copy of
CLIP's BPE tokenizer is used (``single_file_configs/clip_tokenizer/``: OpenAI CLIP's vocabulary of
49,408 tokens, MIT License, built by tests/build_clip_tokenizer.py from ``bpe_simple_vocab_16e6.txt.gz``).
SDXL's two tokenizers share that vocabulary and differ only in padding (:data:`TOKENIZER_PADS`), so
one copy serves both. Nothing is fetched from a hub: a single-file load works offline from the start.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

#: The package's config folders for SDXL 1.0 single files: CONFIG_ROOT/base and CONFIG_ROOT/refiner.
CONFIG_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'single_file_configs')
#: CLIP's BPE tokenizer files (vocab.json, merges.txt; CLIP ViT-L's settings), shared by SDXL's two tokenizers.
CLIP_TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'single_file_configs', 'clip_tokenizer')
#: The padding token of each SDXL tokenizer: CLIP ViT-L's pads with <|endoftext|> (id 49407), OpenCLIP
#: bigG's (tokenizer_2) with '!' (id 0), as in stabilityai's SDXL repos.
TOKENIZER_PADS = {'tokenizer': '<|endoftext|>', 'tokenizer_2': '!'}
ROLES = ('base', 'refiner')
_TOKENIZERS = {'base': ('tokenizer', 'tokenizer_2'), 'refiner': ('tokenizer_2',)}


def is_single_file(ref: Any) -> bool:
    """A model reference naming one ``.safetensors`` file rather than a folder or hub id."""
    return isinstance(ref, str) and ref.lower().endswith('.safetensors') and not os.path.isdir(ref)


def local_single_file(ref: str, relative_to: Optional[str] = None) -> str:
    """The absolute path of a single-file checkpoint (relative ones also tried next to `relative_to`)."""
    path = os.path.expanduser(ref)
    if not os.path.isabs(path) and not os.path.isfile(path) and relative_to is not None:
        path = os.path.join(relative_to, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'single-file checkpoint {ref!r} does not exist (resolved to {os.path.abspath(path)!r})')
    return os.path.abspath(path)


def config_folders(single_file_config: Any) -> Dict[str, str]:
    """``single_file_config=`` -> {role: config folder} for each role it names (the others: the shipped ones)."""
    if single_file_config is None:
        return {}
    if isinstance(single_file_config, str):
        single_file_config = {'base': single_file_config}
    if not isinstance(single_file_config, Mapping) or set(single_file_config) - set(ROLES) or not all(
            isinstance(v, str) for v in single_file_config.values()):
        raise TypeError("single_file_config must be a config folder (for the base) or {'base': folder, "
                        f"'refiner': folder}}, got {single_file_config!r}")
    for role, folder in single_file_config.items():
        if not os.path.isfile(os.path.join(folder, 'model_index.json')):
            raise FileNotFoundError(f"single_file_config['{role}']: {folder!r} is not a diffusers config folder "
                                    '(it has no model_index.json)')
    return dict(single_file_config)


def config_folder(role: str, given: Mapping[str, str]) -> str:
    """The config folder a `role` single file loads with: the one given, else the package's."""
    return given.get(role) or os.path.join(CONFIG_ROOT, role)


def shipped_tokenizer(name: str) -> Any:
    """SDXL's `name` tokenizer ('tokenizer' or 'tokenizer_2') from the package's CLIP vocabulary."""
    from transformers import CLIPTokenizer

    if name not in TOKENIZER_PADS:
        raise ValueError(f'tokenizer name must be one of {sorted(TOKENIZER_PADS)}, got {name!r}')
    missing = [f for f in ('vocab.json', 'merges.txt') if not os.path.isfile(os.path.join(CLIP_TOKENIZER, f))]
    if missing:
        raise FileNotFoundError(f'the package\'s CLIP tokenizer files {missing} are missing from {CLIP_TOKENIZER} '
                                '(a broken install: reinstall modelscope-sdxl), or pass single_file_config= a '
                                'folder with tokenizer/ and tokenizer_2/ (any SDXL repo folder)')
    return CLIPTokenizer.from_pretrained(CLIP_TOKENIZER, pad_token=TOKENIZER_PADS[name])


def _missing_tokenizers(config_dir: str, role: str, passed: Mapping[str, Any]) -> Dict[str, Any]:
    return {name: shipped_tokenizer(name) for name in _TOKENIZERS[role]
            if name not in passed and not os.path.isdir(os.path.join(config_dir, name))}


def load_single_file(cls: Any, path: str, role: str, config_dir: str, **kwargs: Any) -> Any:
    """diffusers' `cls.from_single_file` on `path` with `config_dir`'s configs, offline; `kwargs` are
    components passed in (shared networks) and loading options (dtype)."""
    tokenizers = _missing_tokenizers(config_dir, role, kwargs)
    return cls.from_single_file(path, config=config_dir, local_files_only=True, **tokenizers, **kwargs)


def loaded_configs(pipe: Any) -> Dict[str, Dict[str, Any]]:
    """Component configs of a loaded pipeline, laid out as folder_checks.check_folder returns them."""
    configs: Dict[str, Dict[str, Any]] = {}
    for name in ('unet', 'vae', 'scheduler'):
        configs[name] = dict(getattr(pipe, name).config)
    for name in ('text_encoder', 'text_encoder_2'):
        encoder = getattr(pipe, name, None)
        if encoder is not None:
            configs[name] = encoder.config.to_dict()
    return configs
