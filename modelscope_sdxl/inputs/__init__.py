"""Checks of what a call brings, before any model work: text (``text_checks``), limits on the work of
one call (``limits``), the caller's pictures (``images``), and the parameter table's JSON Schema and
docs (``schema``). The table itself and the request it validates are ``parameters.py``.
"""
