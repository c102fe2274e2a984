"""SDXL base + refiner for ModelScope: ``import modelscope_sdxl`` registers the model and pipeline.

Then the model card's snippet works unchanged::

    pipe = pipeline(task=Tasks.text_to_image_synthesis, model=MODEL, model_revision='v1.0.0')
    output = pipe({'text': 'a dog'})
    cv2.imwrite('result.png', output['output_imgs'][0])
"""
from .model import SDXLModel
from .names import MODEL_TYPE, PIPELINE_TYPE, TASK
from .pipeline import SDXLPipeline

__version__ = '0.1.0'
__all__ = ['SDXLModel', 'SDXLPipeline', 'MODEL_TYPE', 'PIPELINE_TYPE', 'TASK', '__version__']
