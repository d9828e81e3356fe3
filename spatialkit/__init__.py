"""spatialkit: reproducible experiments for "Where's the Chicken? Unpacking Spatial Awareness in VLMs".

One module per idea:

- ``scenes``        procedural spatial-scene world, WhereBench, WhatsUp import/export
- ``posenc``        positional encodings (APE, RPE, RoPE, 2D RoPE, M-RoPE)
- ``models``        the tiny VLM "model organism" (ViT -> projector -> causal LM)
- ``train`` / ``checkpoints``  seeded trainer and the checksummed checkpoint store
- ``vlm``           the one ``VLM`` interface every intervention targets
- ``hf``            adapters for real Hugging Face VLMs (Qwen2/2.5/3-VL, LLaVA-1.5)
- ``interventions`` shuffle, norm normalization, ScalingVis/AdaptVis, PIN
- ``attention``     last-row attention probe at fused-attention memory cost
- ``contrastive``   tiny CLIP and CLOC
- ``params`` / ``catalog``  notebook parameter declarations and validation
- ``runner`` / ``cli``      papermill execution and the book build
"""

__version__ = "0.1.0"
