"""Export for serving: SavedModel (TF Serving) and TFLite, each self-verifying."""

from kbert.serving.classifier_export import (
    export_classifier_saved_model,
    export_classifier_tflite,
    run_classifier_tflite,
    verify_classifier_exports,
)
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
from kbert.serving.tflite import export_tflite, run_tflite, verify_tflite

__all__ = [
    "TEXT_SIGNATURE",
    "TOKEN_IDS_INT64_SIGNATURE",
    "TOKEN_IDS_SIGNATURE",
    "WORDPIECES_SIGNATURE",
    "ExportVerificationError",
    "export_classifier_saved_model",
    "export_classifier_tflite",
    "export_saved_model",
    "export_tflite",
    "run_classifier_tflite",
    "run_saved_model_in_fresh_process",
    "run_tflite",
    "verify_classifier_exports",
    "verify_saved_model",
    "verify_tflite",
]

from kbert.serving.embedder_export import (
    export_embedder_saved_model,
    verify_embedder_saved_model,
)

__all__ += ["export_embedder_saved_model", "verify_embedder_saved_model"]

from kbert.serving.encoder_export import export_encoder  # noqa: E402

__all__ += ["export_encoder"]
