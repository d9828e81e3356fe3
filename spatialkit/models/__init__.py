"""The model layer: everything that maps (image, prompt) to answers.

- ``vlm``        the one ``VLM`` interface and its types (the bottom of the model layer)
- ``posenc``     positional encodings (APE, RPE, RoPE, 2D RoPE, M-RoPE)
- ``organism/``  the tiny VLM trained from scratch (config, model, data, training, store, adapter, and
                 answer_row: its WhereBench scoring at one LM row per item, what the notebooks run)
- ``clip``       tiny CLIP / CLOC (contrastive image-text encoders)
- ``hf/``        adapters for real Hugging Face VLMs: the only place that knows a model family
- ``evaluate``   multiple-choice scoring of any ``VLM`` on WhereBench

May import: ``spatialkit.world``, ``spatialkit.common``. Never analysis, present or suite.
A new model family goes in ``hf/`` (or a new adapter beside ``organism/``), implementing ``vlm.VLM``.
"""
