"""Presenting results: claims and verdicts (``claims``), figures (``plots``) and notebook widgets (``widgets``).

May import: analysis, models, data, world, common (for types); nothing imports ``present`` but notebooks
and the suite.
"""
