"""Write a diffusers SDXL folder as one checkpoint in the original (Stability AI / SGM, AUTOMATIC1111) key layout.

Single-file checkpoints as model sites publish them (``sd_xl_base_1.0.safetensors``) hold every
network under its original names: the UNet under ``model.diffusion_model.`` in LDM block numbering,
the VAE under ``first_stage_model.``, the CLIP ViT-L text encoder under
``conditioner.embedders.0.transformer.`` and the OpenCLIP ViT-bigG one under
``conditioner.embedders.{1|0}.model.`` with fused q/k/v projections. This module writes that layout
from a diffusers folder, key by key, as the inverse of the names diffusers' single-file loader reads
(``diffusers.loaders.single_file_utils``): the tests load the file back with diffusers and compare
with the folder, so a wrong name here fails them.
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict

import torch
from safetensors.torch import load_file, save_file

_RESNET = (('norm1', 'in_layers.0'), ('conv1', 'in_layers.2'), ('time_emb_proj', 'emb_layers.1'),
           ('norm2', 'out_layers.0'), ('conv2', 'out_layers.3'), ('conv_shortcut', 'skip_connection'))
_UNET_FIXED = {
    'time_embedding.linear_1': 'time_embed.0', 'time_embedding.linear_2': 'time_embed.2',
    'add_embedding.linear_1': 'label_emb.0.0', 'add_embedding.linear_2': 'label_emb.0.2',
    'conv_in': 'input_blocks.0.0', 'conv_norm_out': 'out.0', 'conv_out': 'out.2',
}
_VAE_FIXED = {'encoder.conv_norm_out': 'encoder.norm_out', 'decoder.conv_norm_out': 'decoder.norm_out'}
_VAE_ATTENTION = (('group_norm', 'norm'), ('to_q', 'q'), ('to_k', 'k'), ('to_v', 'v'), ('to_out.0', 'proj_out'))


def _resnet(rest: str) -> str:
    for new, old in _RESNET:
        if rest.startswith(new + '.'):
            return old + rest[len(new):]
    raise KeyError(rest)


def unet_to_original(state: Dict[str, torch.Tensor], config: dict) -> Dict[str, torch.Tensor]:
    per_block = config['layers_per_block'] + 1
    out = {}
    for key, value in state.items():
        module, _, param = key.rpartition('.')
        if module in _UNET_FIXED:
            out[f'{_UNET_FIXED[module]}.{param}'] = value
            continue
        m = re.match(r'down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$', key)
        if m:
            index = 1 + int(m[1]) * per_block + int(m[3])
            out[f'input_blocks.{index}.0.{_resnet(m[4])}' if m[2] == 'resnets' else
                f'input_blocks.{index}.1.{m[4]}'] = value
            continue
        m = re.match(r'down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$', key)
        if m:
            out[f'input_blocks.{1 + int(m[1]) * per_block + per_block - 1}.0.op.{m[2]}'] = value
            continue
        m = re.match(r'mid_block\.(resnets|attentions)\.(\d+)\.(.+)$', key)
        if m:
            out[f'middle_block.{2 * int(m[2])}.{_resnet(m[3])}' if m[1] == 'resnets' else
                f'middle_block.1.{m[3]}'] = value
            continue
        m = re.match(r'up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$', key)
        if m:
            index = int(m[1]) * per_block + int(m[3])
            out[f'output_blocks.{index}.0.{_resnet(m[4])}' if m[2] == 'resnets' else
                f'output_blocks.{index}.1.{m[4]}'] = value
            continue
        m = re.match(r'up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$', key)
        if m:
            block = int(m[1])
            slot = 2 if config['up_block_types'][block].startswith('CrossAttn') else 1
            out[f'output_blocks.{block * per_block + per_block - 1}.{slot}.conv.{m[2]}'] = value
            continue
        raise KeyError(f'no original name for UNet weight {key}')
    return {'model.diffusion_model.' + k: v for k, v in out.items()}


def vae_to_original(state: Dict[str, torch.Tensor], config: dict) -> Dict[str, torch.Tensor]:
    blocks = len(config['up_block_types'])
    out = {}
    for key, value in state.items():
        module, _, param = key.rpartition('.')
        name = key
        if module in _VAE_FIXED:
            name = f'{_VAE_FIXED[module]}.{param}'
        elif m := re.match(r'encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$', key):
            name = f'encoder.down.{m[1]}.block.{m[2]}.{m[3]}'
        elif m := re.match(r'encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$', key):
            name = f'encoder.down.{m[1]}.downsample.conv.{m[2]}'
        elif m := re.match(r'decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$', key):
            name = f'decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}.{m[3]}'
        elif m := re.match(r'decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$', key):
            name = f'decoder.up.{blocks - 1 - int(m[1])}.upsample.conv.{m[2]}'
        elif m := re.match(r'(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$', key):
            name = f'{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}'
        elif m := re.match(r'(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$', key):
            rest = m[2]
            for new, old in _VAE_ATTENTION:
                if rest.startswith(new + '.'):
                    rest = old + rest[len(new):]
                    break
            name = f'{m[1]}.mid.attn_1.{rest}'
            if value.ndim == 2:  # the original attention uses 1x1 convolutions
                value = value[:, :, None, None]
        name = name.replace('conv_shortcut', 'nin_shortcut')
        out['first_stage_model.' + name] = value
    return out


def _text_model_keys(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {(k if k.startswith(('text_model.', 'text_projection')) else 'text_model.' + k): v
            for k, v in state.items() if not k.endswith('position_ids')}


def clip_l_to_original(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {'conditioner.embedders.0.transformer.' + k: v for k, v in _text_model_keys(state).items()}


def open_clip_to_original(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    state = _text_model_keys(state)
    fixed = {'text_model.embeddings.token_embedding.weight': 'token_embedding.weight',
             'text_model.embeddings.position_embedding.weight': 'positional_embedding',
             'text_model.final_layer_norm.weight': 'ln_final.weight',
             'text_model.final_layer_norm.bias': 'ln_final.bias'}
    out = {}
    layers = {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
        elif key == 'text_projection.weight':
            out['text_projection'] = value.T.contiguous()
        elif m := re.match(r'text_model\.encoder\.layers\.(\d+)\.(.+)$', key):
            layer, rest = m[1], m[2]
            if q := re.match(r'self_attn\.([qkv])_proj\.(weight|bias)$', rest):
                layers.setdefault((layer, q[2]), {})[q[1]] = value
                continue
            rest = (rest.replace('self_attn.', 'attn.').replace('layer_norm1', 'ln_1').replace('layer_norm2', 'ln_2')
                    .replace('mlp.fc1', 'mlp.c_fc').replace('mlp.fc2', 'mlp.c_proj'))
            out[f'transformer.resblocks.{layer}.{rest}'] = value
        else:
            raise KeyError(f'no original name for text encoder weight {key}')
    for (layer, kind), qkv in layers.items():
        out[f'transformer.resblocks.{layer}.attn.in_proj_{kind}'] = torch.cat([qkv['q'], qkv['k'], qkv['v']])
    return {prefix + k: v for k, v in out.items()}


def _component(folder: str, name: str, file: str):
    with open(os.path.join(folder, name, 'config.json'), encoding='utf-8') as f:
        config = json.load(f)
    return load_file(os.path.join(folder, name, file)), config


def write_original_checkpoint(base_dir: str, path: str, refiner_dir: str = None) -> str:
    """The base (or, with `refiner_dir`, the refiner: its UNet, the base's VAE and OpenCLIP encoder) as one file."""
    vae, vae_config = _component(base_dir, 'vae', 'diffusion_pytorch_model.safetensors')
    te2, _ = _component(base_dir, 'text_encoder_2', 'model.safetensors')
    unet, unet_config = _component(refiner_dir or base_dir, 'unet', 'diffusion_pytorch_model.safetensors')
    state = {**unet_to_original(unet, unet_config), **vae_to_original(vae, vae_config)}
    if refiner_dir is None:
        te1, _ = _component(base_dir, 'text_encoder', 'model.safetensors')
        state.update(clip_l_to_original(te1))
        state.update(open_clip_to_original(te2, 'conditioner.embedders.1.model.'))
    else:
        state.update(open_clip_to_original(te2, 'conditioner.embedders.0.model.'))
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path
