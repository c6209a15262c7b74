"""The video-to-music model (paper section 3): encoders, fusion, MusicGen decoder, sampling.

- :mod:`pipeline.model.encoders`: VisualEncoder, MotionEncoder, CrossAttentionFusion.
- :mod:`pipeline.model.v2m`: V2MConfig, V2MModel (conditioning, loss, files), load_pretrained_decoder.
- :mod:`pipeline.model.patterns`: MusicGen's codebook delay pattern.
- :mod:`pipeline.model.builder`: ModelParams -> V2MModel (the preset table is pipeline.config.MODEL_PRESETS).
- :mod:`pipeline.model.sampling`: KV-cached sampling with classifier-free guidance.
"""

from pipeline.model.builder import build_model, model_config, preset_config, tiny_config
from pipeline.model.encoders import CrossAttentionFusion, MotionEncoder, VisualEncoder
from pipeline.model.sampling import generate, generate_codes, sample_top_k
from pipeline.model.patterns import apply_delay, delay_valid_mask, undo_delay
from pipeline.model.v2m import (PARTS, V2MConfig, V2MModel, V2MOutput, codebook_cross_entropy,
                                load_pretrained_decoder)

__all__ = [
    "PARTS", "CrossAttentionFusion", "MotionEncoder", "V2MConfig", "V2MModel", "V2MOutput",
    "VisualEncoder", "apply_delay", "build_model", "codebook_cross_entropy", "delay_valid_mask", "generate",
    "generate_codes", "load_pretrained_decoder", "model_config", "preset_config", "sample_top_k", "tiny_config",
    "undo_delay",
]
