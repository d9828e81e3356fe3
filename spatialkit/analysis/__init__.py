"""Experiments on any ``VLM``: interventions (shuffle, norm normalisation, ScalingVis/AdaptVis, PIN), the
last-row attention probe, WhatsUp evaluation runs, and notebook 01's where-classifier.

May import: ``spatialkit.models``, ``spatialkit.data``, ``spatialkit.world``, ``spatialkit.common``.
Never names a model family: everything model-specific goes through ``spatialkit.models.vlm.VLM``.
A new intervention goes in ``analysis/interventions/``.
"""
