"""Export for serving: SavedModel (TF Serving), TFLite and MediaPipe files, each self-verifying.

`validate_export` (the `export.validate` program) runs any of them the way its
consumer does and compares it with the Keras model.
"""

from kbert.serving.classifier_export import (
    export_classifier_saved_model,
    export_classifier_tflite,
    run_classifier_tflite,
    verify_classifier_exports,
)
from kbert.serving.embedder_export import (
    export_embedder_saved_model,
    verify_embedder_saved_model,
)
from kbert.serving.encoder_export import export_encoder
from kbert.serving.saved_model import (
    TEXT_SIGNATURE,
    TOKEN_IDS_INT64_SIGNATURE,
    TOKEN_IDS_SIGNATURE,
    WORDPIECES_SIGNATURE,
    ExportVerificationError,
    export_saved_model,
    run_saved_model_in_fresh_process,
    verify_saved_model,
)
from kbert.serving.task_library import (  # MediaPipe is imported inside its functions
    export_task_classifier,
    normalize_texts,
    read_task_metadata,
    run_task_classifier,
    verify_task_classifier,
)
from kbert.serving.tflite import export_tflite, run_tflite, verify_tflite
from kbert.serving.tflite_recipes import TFLITE_RECIPES, TfliteRecipe, recipe_of
from kbert.serving.tflite_text import (
    export_text_tflite,
    run_text_tflite,
    verify_text_tflite,
)
from kbert.serving.validate import ArtifactReport, format_report, validate_export

__all__ = [
    "TEXT_SIGNATURE",
    "TFLITE_RECIPES",
    "TOKEN_IDS_INT64_SIGNATURE",
    "TOKEN_IDS_SIGNATURE",
    "WORDPIECES_SIGNATURE",
    "ArtifactReport",
    "ExportVerificationError",
    "TfliteRecipe",
    "export_classifier_saved_model",
    "export_classifier_tflite",
    "export_embedder_saved_model",
    "export_encoder",
    "export_saved_model",
    "export_task_classifier",
    "export_text_tflite",
    "export_tflite",
    "format_report",
    "normalize_texts",
    "read_task_metadata",
    "recipe_of",
    "run_classifier_tflite",
    "run_saved_model_in_fresh_process",
    "run_task_classifier",
    "run_text_tflite",
    "run_tflite",
    "validate_export",
    "verify_classifier_exports",
    "verify_embedder_saved_model",
    "verify_saved_model",
    "verify_task_classifier",
    "verify_text_tflite",
    "verify_tflite",
]
