"""SDXL-shaped random-weight model pairs for the benchmark: tiny, mid-size and full-size.

Full-size networks are built and saved one at a time, so building never holds
more than one network (the 10.3 GB base UNet) in memory.
"""
from __future__ import annotations

import copy
import gc
import json
import os
import shutil
from typing import Any, Dict, Tuple

from modelscope_sdxl.mini.sdxl_folders import build_sdxl_pair, build_tiny_sdxl, tiny_configs

# SDXL 1.0's component configs (base and refiner UNets, VAE, both text encoders), kept in the repository
# so a fresh machine (a GPU lent for a day) can build full-size random weights without a download.
FULL_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sdxl-full-size-configs.json')


def full_configs(path: str) -> Dict[str, Dict[str, Any]]:
    with open(path, encoding='utf-8') as f:
        configs = json.load(f)
    configs.pop('param_counts', None)
    return configs


def mid_configs(full: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """SDXL's exact block layout (blocks, layers, transformer depths, head counts) at half the width."""
    mid = copy.deepcopy(full)
    for name in ('unet_base', 'unet_refiner'):
        unet = mid[name]
        unet['block_out_channels'] = [c // 2 for c in unet['block_out_channels']]
    te1, te2 = mid['text_encoder'], mid['text_encoder_2']
    for te in (te1, te2):
        te['hidden_size'] //= 2
        te['intermediate_size'] //= 2
        te['projection_dim'] //= 2
        te['num_attention_heads'] //= 2
    time_dim = mid['unet_base']['addition_time_embed_dim']
    mid['unet_base']['cross_attention_dim'] = te1['hidden_size'] + te2['hidden_size']
    mid['unet_base']['projection_class_embeddings_input_dim'] = 6 * time_dim + te2['projection_dim']
    mid['unet_refiner']['cross_attention_dim'] = te2['hidden_size']
    mid['unet_refiner']['projection_class_embeddings_input_dim'] = 5 * time_dim + te2['projection_dim']
    mid['vae']['block_out_channels'] = [c // 2 for c in mid['vae']['block_out_channels']]
    return mid


def _replace(folder: str, network: Any) -> None:
    shutil.rmtree(folder)
    network.save_pretrained(folder, safe_serialization=True)


def build_pair(root: str, configs: Dict[str, Dict[str, Any]], seed: int = 0, device: str = 'cpu',
               dtype: Any = None) -> Tuple[str, str]:
    """Base and refiner folders in the hub layout with networks of `configs`, built one at a time.

    `device='cuda'` initialises the random weights on a GPU (seconds instead of minutes at full size);
    `dtype` (e.g. torch.float16) halves the files a GPU run reads. Weights differ by device.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from modelscope_sdxl.mini.sdxl_folders import text_encoder_config

    base_dir, refiner_dir = os.path.join(root, 'base'), os.path.join(root, 'refiner')
    marker = os.path.join(root, '.complete')
    if os.path.exists(marker):
        return base_dir, refiner_dir
    if os.path.exists(root):
        shutil.rmtree(root)
    build_sdxl_pair(root, seed=seed)  # the layout, tokenizers, scheduler and configuration.json
    with open(os.path.join(base_dir, 'tokenizer', 'vocab.json'), encoding='utf-8') as f:
        vocab = json.load(f)
    builders = [
        (base_dir, 'text_encoder', lambda: CLIPTextModel(text_encoder_config(configs['text_encoder'], vocab))),
        (base_dir, 'text_encoder_2',
         lambda: CLIPTextModelWithProjection(text_encoder_config(configs['text_encoder_2'], vocab))),
        (base_dir, 'vae', lambda: AutoencoderKL(**configs['vae'])),
        (base_dir, 'unet', lambda: UNet2DConditionModel(**configs['unet_base'])),
        (refiner_dir, 'unet', lambda: UNet2DConditionModel(**configs['unet_refiner'])),
    ]
    for i, (folder, component, make) in enumerate(builders):
        torch.manual_seed(seed + i)
        with torch.no_grad(), torch.device(device):
            network = make().eval()
        _replace(os.path.join(folder, component), network.to('cpu', dtype) if dtype is not None else network.cpu())
        del network
        gc.collect()
    # The refiner borrows the base's text_encoder_2 and VAE: its folders hold their configs only.
    for component in ('text_encoder_2', 'vae'):
        target = os.path.join(refiner_dir, component)
        shutil.rmtree(target)
        os.makedirs(target)
        shutil.copy(os.path.join(base_dir, component, 'config.json'), target)
    open(marker, 'w').close()
    return base_dir, refiner_dir


def build_scale(scale: str, cache_dir: str, full_config_path: str) -> Tuple[str, str]:
    if scale == 'tiny':
        return build_tiny_sdxl(os.path.join(cache_dir, 'tiny'))
    full = full_configs(full_config_path)
    configs = mid_configs(full) if scale == 'mid' else full
    return build_pair(os.path.join(cache_dir, scale), configs)


__all__ = ['build_scale', 'mid_configs', 'full_configs', 'tiny_configs']
