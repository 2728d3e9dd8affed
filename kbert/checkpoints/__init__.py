"""Checkpoint interop: HuggingFace, Google TF1, Model Garden TF2 and keras-hub.

`load(path)` detects the format and returns a kbert model; `save(model, path,
format=...)` writes the HuggingFace or Google layout. All converters go
through one canonical layout (Google's TF1 names, see `canonical`).
"""

from kbert.checkpoints import canonical, google, huggingface, keras_hub_bert
from kbert.checkpoints.api import (
    FORMATS,
    detect_format,
    load,
    load_tokenizer,
    read_canonical,
    save,
    to_keras_hub,
)
from kbert.checkpoints.canonical import CheckpointMismatchError, assign_model, read_model

__all__ = [
    "FORMATS",
    "canonical",
    "google",
    "huggingface",
    "keras_hub_bert",
    "CheckpointMismatchError",
    "assign_model",
    "detect_format",
    "load",
    "load_tokenizer",
    "read_canonical",
    "read_model",
    "save",
    "to_keras_hub",
]
