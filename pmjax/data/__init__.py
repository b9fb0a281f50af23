"""Datasets: tfds builders from canonical raw files (`builders`), the in-memory and
streaming input paths (`pipeline`, `stream`). Importing the package registers every
dataset (the built-in specs of `builders`, `cats_vs_dogs`, `speech_commands`, `cub`)."""

from pmjax.data import builders, cats_vs_dogs, cub, speech_commands

__all__ = ['builders', 'cats_vs_dogs', 'cub', 'speech_commands']
