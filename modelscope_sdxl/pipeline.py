"""The ModelScope Pipeline: {'text': prompt, ...} -> validated request -> two stages -> BGR arrays."""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from modelscope.outputs import OutputKeys
from modelscope.pipelines.base import Pipeline
from modelscope.pipelines.builder import PIPELINES
from modelscope.utils.constant import Frameworks

from .hub import BASE_FILES, check_device, check_device_present, files_to_fetch, is_local_reference, resolve_folder
from .inputs.limits import LIMIT_ARGS, RequestLimits, check_prompt_lengths, check_request, without_batch_size
from .model import MODEL_ARGS, SDXLModel
from .loading.repo_trust import from_caller
from .names import PIPELINE_TYPE, TASK
from .parameters import merge_inputs, validate
from .loading.repo_configs import PLAIN_REPO_CONFIGURATION, names_this_model
from .loading.single_file import is_single_file, local_single_file

# Keys ModelScope's `pipeline()` builder passes to every pipeline.
_MODELSCOPE_KEYS = frozenset({'trust_remote_code'})


@PIPELINES.register_module(TASK, module_name=PIPELINE_TYPE)
class SDXLPipeline(Pipeline):
    """SDXL the way it was designed: the base makes latents and the refiner finishes them.

    Args:
        model: a folder with configuration.json in diffusers layout, a hub id, a single-file
            ``.safetensors`` checkpoint (see single_file.py), or an SDXLModel.
        revision: revision of the base when `model` is a hub id and the pipeline is chosen with
            ``pipeline_name=`` (ModelScope's builder does not pass ``model_revision`` on then).
        device: 'cpu', 'gpu' or 'cuda:N' (ModelScope's default is 'gpu', which falls back to the CPU).
        max_images_per_call: cap on images one call may make, so one request cannot exhaust memory.
        max_prompt_chars, max_prompt_tokens, max_pixel_steps_per_call: caps on each prompt's length and
            on images x height x width x steps of one call, checked before any model work (limits.py).
        progress_bar: show a progress bar per stage; default: only when stderr is a terminal
            (servers and logs stay clean).
        **model_args: how the model loads, passed to :class:`SDXLModel` (they override
            configuration.json's ``model`` section): ``refiner``, ``refiner_revision``, ``lora``,
            ``allow_pickle`` (only the caller can opt in: configuration.json's ``model.allow_pickle`` is not
            honoured), ``memory_mode``, ``compile_unet``, ``vae_tiling``, and ModelScope's and
            diffusers' own ``torch_dtype`` / ``torch_type`` and ``use_safetensors`` (see dtypes.py).
    """

    def __init__(self, model: Any, revision: Optional[str] = None, device: str = 'gpu',
                 max_images_per_call: int = 8, progress_bar: Optional[bool] = None, **kwargs: Any):
        model_kwargs = {k: v for k, v in kwargs.items() if k in MODEL_ARGS}
        unknown = sorted(set(kwargs) - set(MODEL_ARGS) - _MODELSCOPE_KEYS - set(LIMIT_ARGS))
        if unknown:
            raise TypeError(f'unknown pipeline argument(s) {", ".join(unknown)}; known: revision, device, '
                            f'max_images_per_call, {", ".join(LIMIT_ARGS)}, progress_bar, {", ".join(MODEL_ARGS)}')
        check_device_present(check_device(device))
        self.request_limits = RequestLimits.from_kwargs(kwargs)
        if isinstance(max_images_per_call, bool) or not isinstance(max_images_per_call, int) \
                or max_images_per_call < 1:
            raise ValueError(f'max_images_per_call must be an integer >= 1, got {max_images_per_call!r}')
        if isinstance(model, SDXLModel) and model_kwargs:
            raise ValueError(f'{", ".join(sorted(model_kwargs))} cannot be changed on an SDXLModel that is already '
                             'loaded; pass them to SDXLModel instead')
        if is_single_file(model):
            model = local_single_file(model)
        elif isinstance(model, str) and not is_local_reference(model):
            # Reached with pipeline_name=, where ModelScope's builder neither downloads nor passes
            # model_revision on: the base's revision comes as `revision`.
            model = resolve_folder(model, revision, files_to_fetch(BASE_FILES, model_kwargs.get('allow_pickle') is True))
        elif revision is not None:
            raise ValueError(f'revision={revision!r} is the revision of a hub id given with pipeline_name=; '
                             'otherwise pass model_revision= to pipeline()')
        config_file = None
        folder = model if isinstance(model, str) else getattr(model, 'model_dir', None)
        if isinstance(folder, str) and (is_single_file(folder) or os.path.isdir(folder) and not names_this_model(folder)):
            # A plain diffusers repo (see repo_configs.py) or a single-file checkpoint: ModelScope must
            # neither build the model a configuration.json names nor read one that may be missing.
            if isinstance(model, str):
                model, model_kwargs = SDXLModel(model, device=device, **from_caller(model, model_kwargs)), {}
            config_file = PLAIN_REPO_CONFIGURATION
        super().__init__(config_file=config_file, model=model, device=device, auto_collate=False,
                         **from_caller(model, model_kwargs))
        self.limits = dataclasses.replace(self.model.limits, max_images_per_call=max_images_per_call)
        if progress_bar is not None and not isinstance(progress_bar, bool):
            raise TypeError(f'progress_bar must be True, False or None, got {progress_bar!r}')
        self.progress_bar = sys.stderr.isatty() if progress_bar is None else progress_bar

    def _get_framework(self) -> str:
        # Always torch. ModelScope's own version reads the model folder's configuration.json, which a
        # plain diffusers repo may lack.
        return Frameworks.torch

    def prepare_model(self) -> None:
        # The model placed its networks (and dtypes) itself when it loaded.
        self._model_prepare = True

    def _check_input(self, input: Any) -> None:
        # The whole input contract is checked in preprocess, with messages naming each parameter.
        pass

    def _sanitize_parameters(self, **pipeline_parameters: Any) -> Tuple[Dict, Dict, Dict]:
        return pipeline_parameters, {}, {}

    def __call__(self, input: Any, *args: Any, **kwargs: Any) -> Any:
        return super().__call__(input, *args, **without_batch_size(input, kwargs))

    def preprocess(self, inputs: Any, **call_params: Any) -> Dict[str, Any]:
        raw = merge_inputs(inputs, call_params)
        check_prompt_lengths(raw, self.request_limits)
        request = validate(raw, self.limits)
        base = self.model.components.base
        check_request(request, self.request_limits, (base.tokenizer, base.tokenizer_2))
        return {'request': request}

    def forward(self, inputs: Dict[str, Any], **forward_params: Any) -> Dict[str, Any]:
        images = self.model(inputs['request'], progress_bar=self.progress_bar)
        return {'images': images, 'request': inputs['request']}

    def postprocess(self, inputs: Dict[str, Any], **post_params: Any) -> Dict[str, Any]:
        request = inputs['request']
        return {OutputKeys.OUTPUT_IMGS: to_bgr_arrays(inputs['images']), 'seed': request.seed,
                'seeds': request.seeds, 'parameters': request.parameters()}


def to_bgr_arrays(images: torch.Tensor) -> List[np.ndarray]:
    """(N, 3, H, W) RGB floats in [0, 1] -> N H x W x 3 BGR uint8 C-contiguous arrays: what ModelScope's
    image tasks return and cv2 writes. Rounds like diffusers' ``numpy_to_pil``, so pixels match it."""
    rgb = (images.permute(0, 2, 3, 1).float().numpy() * 255).round().astype(np.uint8)
    return [np.ascontiguousarray(img[:, :, ::-1]) for img in rgb]
