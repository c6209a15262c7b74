"""v2m: video-to-music as a reproducible data-and-model pipeline (the library)."""
