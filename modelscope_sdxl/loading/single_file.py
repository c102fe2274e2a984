"""Single-file SDXL checkpoints (``sd_xl_base_1.0.safetensors``, what AUTOMATIC1111 and model sites use).

A single file holds the networks' weights in the original (Stability AI) key layout but no configs
and no tokenizers. diffusers' own single-file loading (``from_single_file``) converts the weights; it
is always given a local config folder, so it never asks a hub for configs:

- by default the SDXL base and refiner configs shipped in this package (``single_file_configs/``:
  model_index.json, scheduler, UNet, VAE and text encoder configs of stabilityai's SDXL 1.0 repos);
- or ``single_file_config=``: a diffusers-layout folder (an SDXL repo folder; its weights are not
  read) for the base, or ``{'base': folder, 'refiner': folder}``, for checkpoints of other shapes.

Tokenizers: CLIP's BPE vocabulary (49,408 tokens) is not shipped with the package, and no installed
library carries it. A config folder that has ``tokenizer/`` and ``tokenizer_2/`` folders provides its
own; otherwise (the shipped configs) the two tokenizer folders of :data:`TOKENIZER_REPO` are fetched
once through ModelScope's client (about 3 MB, no weights) and taken from its cache afterwards, also
offline. A wrong vocabulary would silently draw the wrong pictures, so there is no fallback to any
other tokenizer: without the hub and without a cached copy, loading stops and says so.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

#: The package's config folders for SDXL 1.0 single files: CONFIG_ROOT/base and CONFIG_ROOT/refiner.
CONFIG_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'single_file_configs')
#: The hub repo whose tokenizer/ and tokenizer_2/ a single-file load uses when its config folder has none.
TOKENIZER_REPO = 'AI-ModelScope/stable-diffusion-xl-base-1.0'
TOKENIZER_FILES = ['tokenizer/*', 'tokenizer_2/*']
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


def _missing_tokenizers(config_dir: str, role: str, passed: Mapping[str, Any]) -> Dict[str, Any]:
    missing = [name for name in _TOKENIZERS[role]
               if name not in passed and not os.path.isdir(os.path.join(config_dir, name))]
    if not missing:
        return {}
    from transformers import CLIPTokenizer

    from ..hub import resolve_folder

    try:
        folder = resolve_folder(TOKENIZER_REPO, None, TOKENIZER_FILES)
    except Exception as exc:
        raise ConnectionError(
            f'a single-file checkpoint has no tokenizers, and the config folder {config_dir} has none either; '
            f'fetching the CLIP tokenizers of {TOKENIZER_REPO} failed ({type(exc).__name__}: {exc}). Pass '
            'single_file_config= a folder with tokenizer/ and tokenizer_2/ (any SDXL repo folder)') from exc
    return {name: CLIPTokenizer.from_pretrained(os.path.join(folder, name)) for name in missing}


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
