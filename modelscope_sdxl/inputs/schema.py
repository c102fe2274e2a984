"""The parameter table as a JSON Schema and as docs/parameters.md (``modelscope-sdxl schema``), so
that neither can drift from what the pipeline validates."""
from __future__ import annotations

import json
from typing import Any, Dict

from ..parameters import ALL_REFINER_MODES, PARAMS, PICTURES, _allowed


def json_schema() -> Dict[str, Any]:
    """JSON Schema of the input, generated from the same table the validation uses."""
    props: Dict[str, Any] = {}
    for p in PARAMS:
        json_type = {'size': 'array', 'image': 'string', 'mask': 'string'}.get(p.type, p.type)
        s: Dict[str, Any] = {'type': [json_type, 'null'] if p.nullable else json_type,
                             'description': p.description, 'x-stage': p.stage}
        if p.type == 'size':
            s.update(items={'type': 'integer', 'minimum': 0 if 'crops' in p.name else 1}, minItems=2, maxItems=2)
        if p.default is not None:
            s['default'] = list(p.default) if isinstance(p.default, tuple) else p.default
        if p.choices:
            s['enum'] = list(p.choices) + ([None] if p.nullable else [])
        for key, val in (('minimum', p.minimum), ('maximum', p.maximum),
                         ('exclusiveMinimum', p.exclusive_minimum), ('exclusiveMaximum', p.exclusive_maximum)):
            if val is not None:
                s[key] = val
        if p.refiner_modes != ALL_REFINER_MODES:
            s['x-refiner-modes'] = list(p.refiner_modes)
        props[p.name] = s
    return {'$schema': 'https://json-schema.org/draft/2020-12/schema', 'title': 'SDXL base + refiner input',
            'type': 'object', 'properties': props, 'required': ['text'], 'additionalProperties': False}


def parameters_markdown() -> str:
    """docs/parameters.md, generated from the table (a test keeps the file equal to this)."""
    lines = ['# Parameters', '',
             'Generated from `modelscope_sdxl/parameters.py` by `modelscope-sdxl schema --markdown`; '
             'the JSON Schema is `modelscope-sdxl schema`.', '',
             'Each parameter can be a key of the input dict or a keyword argument of the call '
             '(in `modelscope server`, a key of "parameters"). Unknown names are rejected.', '',
             '| name | type | default | allowed | stage | description |', '|---|---|---|---|---|---|']
    for p in PARAMS:
        default = 'required' if p.name == 'text' else 'none' if p.name in PICTURES else (
            'derived' if p.default is None else f'`{json.dumps(p.default)}`')
        allowed = _allowed(p)
        if p.nullable:
            allowed += ', or null'
        if p.refiner_modes != ALL_REFINER_MODES:
            allowed += '; only with refiner_mode ' + ' or '.join(f"'{m}'" for m in p.refiner_modes)
        lines.append(f'| `{p.name}` | {p.type} | {default} | {allowed} | {p.stage} | {p.description} |')
    lines += ['', 'Python callers may also pass `callback=fn`: `fn(stage, step, total_steps)` is called after every '
              "denoising step of each stage ('base', 'refiner'); returning `False` stops the run, which raises "
              '`GenerationCancelled`.', '']
    return '\n'.join(lines)
