"""v2m: video-to-music as a reproducible data-and-model pipeline (the library)."""

from pipeline import threads as _threads

# Before any module of the package imports torch: libgomp reads its wait policy only when it loads.
_threads.prepare_environment()
