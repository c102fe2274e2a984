"""Schedulers by name, each built per call from the model's own scheduler config.

Names follow what SDXL users know from AUTOMATIC1111 / ComfyUI; each maps to a
diffusers class plus the config overrides that make it that sampler.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

SCHEDULERS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    'euler': ('EulerDiscreteScheduler', {}),
    'euler_ancestral': ('EulerAncestralDiscreteScheduler', {}),
    'dpmpp_2m': ('DPMSolverMultistepScheduler', {'algorithm_type': 'dpmsolver++', 'solver_order': 2}),
    'dpmpp_2m_karras': ('DPMSolverMultistepScheduler',
                        {'algorithm_type': 'dpmsolver++', 'solver_order': 2, 'use_karras_sigmas': True}),
    'dpmpp_2m_sde_karras': ('DPMSolverMultistepScheduler',
                            {'algorithm_type': 'sde-dpmsolver++', 'solver_order': 2, 'use_karras_sigmas': True}),
    'ddim': ('DDIMScheduler', {}),
    'unipc': ('UniPCMultistepScheduler', {}),
    'heun': ('HeunDiscreteScheduler', {}),
    # Few-step samplers (docs/few-step.md): for distilled weights such as LCM-LoRA, TCD-LoRA,
    # SDXL-Lightning ('euler_trailing') and SDXL-Turbo ('euler_ancestral_trailing').
    'lcm': ('LCMScheduler', {}),
    'tcd': ('TCDScheduler', {}),
    'euler_trailing': ('EulerDiscreteScheduler', {'timestep_spacing': 'trailing'}),
    'euler_ancestral_trailing': ('EulerAncestralDiscreteScheduler', {'timestep_spacing': 'trailing'}),
}
SCHEDULER_NAMES = tuple(SCHEDULERS)


def make_scheduler(model_scheduler: Any, name: Optional[str]) -> Any:
    """A new scheduler: the model's own class for `name=None`, else the named one, from the model's config."""
    if name is None:
        return type(model_scheduler).from_config(model_scheduler.config)
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(model_scheduler.config, **overrides)
