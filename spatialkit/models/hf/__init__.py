"""Real Hugging Face VLMs (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-1.5) behind the one ``VLM`` interface.

The only package that names a model family: everything family-specific (processors, position ids, where
the visual tokens and the LM layers live) is answered here, so interventions never branch on a family.
"""

from spatialkit.models.hf.adapter import *  # noqa: F401,F403
from spatialkit.models.hf.adapter import _spatialkit_attention, _to_pil  # noqa: F401
from spatialkit.models.hf.memory import (  # noqa: F401
    MemoryEstimate, check_against, estimate_memory, estimate_pin_cost, estimate_where_probe, free_memory, image_tokens,
    largest_batch,
    parameter_count,
    published_config, PUBLISHED_MODELS,
)
