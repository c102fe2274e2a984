from setuptools import find_packages, setup

setup(
    name='modelscope-sdxl',
    version='0.1.0',
    description='Stable Diffusion XL base + refiner as a ModelScope model and pipeline',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['modelscope_sdxl', 'modelscope_sdxl.*']),
    # The mini model's folders (docs/mini-model.md) ship inside the package: the default model.
    # The configuration read for plain diffusers repos, and the SDXL configs single-file checkpoints load with.
    # (single_file_configs/clip_tokenizer: CLIP's BPE vocabulary, vocab.json and merges.txt.)
    package_data={'modelscope_sdxl.loading': ['plain_repo/configuration.json', 'single_file_configs/*/*.json',
                                              'single_file_configs/*/*/*.json', 'single_file_configs/*/*.txt'],
                  'modelscope_sdxl.mini': [
        'model/training_log.json', 'model/*/*.json', 'model/*/*/*.json', 'model/*/*/*.txt',
        'model/*/*/*.safetensors']},
    zip_safe=False,
    python_requires='>=3.9',
    # torch is not pinned to a build: install the one for your machine first (see README).
    install_requires=[
        'modelscope[framework]>=1.30',
        'torch>=2.1',
        'diffusers>=0.32',
        'transformers>=4.44',
        'accelerate>=0.30',
        'compel>=2.1',
        'safetensors>=0.4',
        'opencv-python-headless>=4.8',
        'numpy>=1.24',
        'pillow>=9.0',
    ],
    extras_require={
        'lora': ['peft>=0.10'],
        # `modelscope server`: ModelScope's server needs Starlette < 1 (1.0 removed add_event_handler).
        'server': ['fastapi>=0.115,<0.120', 'starlette>=0.40,<0.49', 'uvicorn>=0.30'],
        # `modelscope-sdxl batch --ray`: Ray Data's actor pools (docs/batch.md).
        'ray': ['ray[data]>=2.51'],
        # `modelscope-sdxl webui` (docs/webui.md). Gradio 6.16+ needs Starlette >= 1, which `modelscope server`
        # cannot use, so the two extras install together only below that.
        'webui': ['gradio>=6.0,<6.16'],
        # The browser tests drive Debian's chromium (apt-get install chromium) with Playwright.
        'test': ['pytest>=7', 'peft>=0.10', 'fastapi>=0.115,<0.120', 'starlette>=0.40,<0.49', 'uvicorn>=0.30',
                 'ray[data]>=2.51', 'gradio>=6.0,<6.16', 'gradio_client>=2.0', 'playwright>=1.50',
                 # tests/test_a1111.py: an independent reader of A1111's PNG text.
                 'sd-parsers>=0.6'],
    },
    entry_points={
        'console_scripts': ['modelscope-sdxl=modelscope_sdxl.cli:main'],
        # Loaded by the `modelscope` command: `modelscope sdxl ...`, and our pipeline for `modelscope server`.
        'modelscope_hub.cli_plugins': ['sdxl=modelscope_sdxl.cli.plugin:SDXLCommand'],
    },
)
