from setuptools import find_packages, setup

setup(
    name='modelscope-sdxl',
    version='0.1.0',
    description='Stable Diffusion XL base + refiner as a ModelScope model and pipeline',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['modelscope_sdxl', 'modelscope_sdxl.*']),
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
        'test': ['pytest>=7', 'peft>=0.10'],
    },
    entry_points={'console_scripts': ['modelscope-sdxl=modelscope_sdxl.cli:main']},
)
