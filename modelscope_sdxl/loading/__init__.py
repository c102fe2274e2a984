"""Loading base + refiner, in data-flow order: a repo's configuration and what it may decide
(``repo_configs``, ``repo_trust``), checks of its folders before any weight is read (``folder_checks``),
single-file checkpoints (``single_file``), dtypes (``dtypes``), then the networks themselves
(``networks.load_components``) with LoRAs fused (``lora``), held as ``components.SDXLComponents`` and
placed per call by a memory mode (``memory_modes``).

Importing this package imports nothing heavy: the command line reads a few names from it.
"""
