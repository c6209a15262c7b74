"""Evaluation metrics with the published definitions (shared docs/metrics.md): chroma cosine
similarity, FAD on VGGish embeddings, KL divergence on PaSST class probabilities.

Nothing here imports the model package: the metrics judge audio files, whoever made them.
Arrays follow :mod:`pipeline.media`: audio is float ``[C, S]`` (channels first) or ``[S]`` mono;
downmixing and resampling are :func:`pipeline.audio.mono_resampled`'s.
"""
