"""External benchmark data: file formats, scoring rules and evaluation protocols (WhatsUp / AdaptVis).

May import: ``spatialkit.world`` and ``spatialkit.common``. No model code: running a model on these items
lives in ``spatialkit.analysis.whatsup_eval``.
"""
