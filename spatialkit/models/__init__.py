"""The model layer: everything that maps (image, prompt) to answers.

- ``vlm``        the one ``VLM`` interface and its types (the bottom of the model layer)
- ``posenc``     positional encodings (APE, RPE, RoPE, 2D RoPE, M-RoPE)
- ``organism/``  the tiny VLM trained from scratch (config, model, data, training, store, adapter)
- ``clip``       tiny CLIP / CLOC (contrastive image-text encoders)
- ``hf/``        adapters for real Hugging Face VLMs: the only place that knows a model family
- ``evaluate``   multiple-choice scoring of any ``VLM`` on WhereBench
- ``answer_row`` the same scoring with an organism's one-word options read at one LM row per item (3-4x less
                 CPU; what the notebooks run; the trainer's validation runs ``evaluate``)

May import: ``spatialkit.world``, ``spatialkit.common``. Never analysis, present or suite.
A new model family goes in ``hf/`` (or a new adapter beside ``organism/``), implementing ``vlm.VLM``.
"""
