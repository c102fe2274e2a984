"""Plain diffusers-format SDXL repos, whatever their configuration.json says about the model.

With ``pipeline_name='sdxl-base-refiner-pipeline'`` a repo is read as a diffusers SDXL folder. Its
configuration.json may name ModelScope's own model (``stable-diffusion-xl``, as hub SDXL repos do),
have no ``model`` section, or be missing. ModelScope's ``Pipeline.__init__`` would hand the first to
``Model.from_pretrained``, which imports ModelScope's own SDXL model class (and dies on a missing
torchvision), and it reads configuration.json itself, failing on the last. So for any folder whose
configuration.json does not name this package's model, the pipeline builds :class:`SDXLModel`
itself and gives ModelScope the package's own configuration for plain repos
(:data:`PLAIN_REPO_CONFIGURATION`) to read instead of the folder's.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from ..names import MODEL_TYPE

#: configuration.json ModelScope's Pipeline reads for a repo whose own does not name this package's model.
PLAIN_REPO_CONFIGURATION = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'plain_repo',
                                        'configuration.json')


def configured_model_type(folder: str) -> Optional[str]:
    """``model.type`` (or ``model.model_type``) of `folder`'s configuration.json; None if it has none."""
    path = os.path.join(folder, 'configuration.json')
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            config: Any = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f'{path} is not valid JSON ({exc}); fix or remove it') from exc
    model = config.get('model') if isinstance(config, dict) else None
    if not isinstance(model, dict):
        return None
    kind = model.get('type', model.get('model_type'))
    return kind if isinstance(kind, str) else None


def names_this_model(folder: str) -> bool:
    """True when ModelScope would build this package's SDXLModel from `folder`'s configuration.json."""
    return configured_model_type(folder) == MODEL_TYPE
