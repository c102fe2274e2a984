"""The names this package registers with ModelScope, defined once."""

#: ModelScope task served (``Tasks.text_to_image_synthesis``).
TASK = 'text-to-image-synthesis'
#: ``model.type`` in configuration.json: base + refiner SDXL model.
MODEL_TYPE = 'sdxl-base-refiner'
#: ``pipeline.type`` in configuration.json.
PIPELINE_TYPE = 'sdxl-base-refiner-pipeline'
