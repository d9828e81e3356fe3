from spatialkit.analysis.interventions.shuffle import (  # noqa: F401
    shuffle_visual_tokens, slot_permutation, permute_visual_tokens, blank_visual_tokens, permutation_test, psi_summary,
    slot_position_code,
    psi_difference,
)
from spatialkit.analysis.interventions.norms import (  # noqa: F401
    normalize_visual_norms, rms_clip, rescale_to_norm, token_norms, loudness_ratio, position_content_norms, loudness_profile,
    text_embedding_norm,
)
from spatialkit.analysis.interventions.adaptvis import scaling_vis, adapt_vis, AdaptVis, AdaptVisGeneration, check_alpha, check_beta, gate  # noqa: F401
from spatialkit.analysis.interventions.pin import (  # noqa: F401
    PinConfig, PositionalInsert, Pin, train_pin, load_or_train_pin, location_set, predict_boxes, what_scores,
)
