"""What each stage of a call is given besides the loaded networks: prompt embeddings (``prompts``), a
fresh scheduler (``schedulers``), the pipelines and arguments for a call from a picture (``pictures``)
and, optionally, a step cache (``step_cache``). ``generation.py`` runs the stages with them.
"""
