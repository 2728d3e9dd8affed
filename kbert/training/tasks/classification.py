"""The classification/regression task: GLUE-style TSV files, `BertClassifier`."""

import os
import tempfile

from kbert.data import batching, classification
from kbert.models import BertClassifier
from kbert.text import BertTextPreprocessor
from kbert.training import finetuning
from kbert.training.tasks.common import next_version

# Evaluation texts the MediaPipe-format classifier file is checked on in MediaPipe itself
# (MediaPipe runs one text per call: about 66 ms each for all-MiniLM-L6-v2 on 2 cores).
MEDIAPIPE_CHECKED = 200
# Training examples that calibrate the activation ranges of recipes that need data.
CALIBRATION_EXAMPLES = 200


class ClassificationTask:
    """Sentence (pair) classification or regression from GLUE-style TSV files.

    Args:
        train_file, eval_file: str TSV paths with a header row.
        text_columns: list of one or two column names.
        label_column: str.
        tokenizer: `kbert.text.BertTokenizer`.
        sequence_length: int, the longest packed example (longer ones are
            trimmed round-robin; their count is in `num_truncated`).
        global_batch_size: int, examples per training step.
        regression: bool, float labels and one output (GLUE STS-B).
        seed: int, the batch plan's seed.
        eval_batch_size: int, examples per evaluation batch.

    Raises:
        FileNotFoundError, ValueError: from `kbert.data.classification.read_tsv`
            (naming the file, line and value).
    """

    def __init__(self, train_file, eval_file, text_columns, label_column, tokenizer,
                 sequence_length=128, global_batch_size=32, regression=False, seed=0,
                 eval_batch_size=64):
        self.task = "regression" if regression else "classification"
        self.train = classification.read_tsv(
            train_file, text_columns, label_column, regression=regression
        )
        self.eval = classification.read_tsv(
            eval_file, text_columns, label_column, label_list=self.train.label_list,
            regression=regression,
        )
        self.label_list = self.train.label_list
        self.num_classes = 1 if regression else len(self.label_list)
        self.text_columns = list(text_columns)
        self.label_column = label_column
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.preprocessor = BertTextPreprocessor(tokenizer, sequence_length, padding="longest")
        self.pad_id = tokenizer.special_token_ids["pad"]
        self.train_features, self.num_truncated = classification.encode_texts(
            self.train.texts, self.preprocessor
        )
        eval_features, self.num_eval_truncated = classification.encode_texts(
            self.eval.texts, self.preprocessor
        )
        self.steps_per_epoch = batching.batches_per_epoch(len(self.train), global_batch_size)
        eval_dataset = classification.text_dataset(
            eval_features, None, eval_batch_size, pad_id=self.pad_id, shuffle=False
        )
        self.evaluate = finetuning.classification_evaluator(
            eval_dataset, self.eval.labels, self.num_classes
        )
        self.best_metric = finetuning.BEST_METRIC[self.task]

    @property
    def length_note(self):
        """One line on what `sequence_length` did to the training data."""
        return f"{self.num_truncated} trimmed to sequence_length"

    def build_model(self, encoder):
        """`BertClassifier(encoder, num_classes)` (1 output for regression)."""
        return BertClassifier(encoder, self.num_classes)

    def epoch_dataset(self, epoch):
        """Epoch `epoch`'s training batches: `({token_ids, segment_ids, padding_mask}, labels)`."""
        return classification.text_dataset(
            self.train_features, self.train.labels, self.global_batch_size,
            pad_id=self.pad_id, seed=self.seed, epoch=epoch,
        )

    @property
    def num_train_examples(self):
        """Training examples (lines of the TSV file)."""
        return len(self.train)

    @property
    def num_train_sequences(self):
        """Packed training sequences per epoch (one per example)."""
        return len(self.train)

    @property
    def num_eval_examples(self):
        return len(self.eval)

    def settings(self):
        """The settings a resumed run must keep."""
        return {
            "label_list": self.label_list,
            "text_columns": self.text_columns,
            "label_column": self.label_column,
        }

    def export(self, model, tokenizer, export_dir, sequence_length, max_checked=1000,
               tflite_recipes=("float32",)):
        """Writes the SavedModel (next free version) and the TFLite file; checks both.

        Layout: `export_dir/saved_model/classifier/VERSION/` and
        `export_dir/classifier_vVERSION.tflite` (same VERSION, so a rerun
        never replaces an earlier file; float32, inputs `ids`, `mask`,
        `segment_ids` of length `sequence_length`). Both are compared with
        `model` on the first `max_checked` evaluation examples (see
        `kbert.serving.verify_classifier_exports`). For a single-text
        uncased classifier the TFLite file also carries MediaPipe's metadata
        (vocabulary and labels, `kbert.serving.task_library`), so it runs
        unchanged in MediaPipe Tasks' `TextClassifier`; it is checked there
        too, on the first `MEDIAPIPE_CHECKED` examples.

        Each other recipe of `tflite_recipes` (`kbert.serving.TFLITE_RECIPES`)
        writes `export_dir/classifier_vVERSION_RECIPE.tflite`, calibrated on
        the first `CALIBRATION_EXAMPLES` training examples where the recipe
        needs data, and validated in the LiteRT interpreter against `model`
        on the first `max_checked` evaluation texts by its recipe's rules
        (`kbert.serving.validate.TOLERANCES`).

        Returns:
            dict: artifact paths, sizes and the verification report.

        Raises:
            kbert.serving.ExportVerificationError: an artifact disagrees with `model`.
        """
        from kbert import serving
        from kbert.serving import task_library

        base = os.path.join(export_dir, "saved_model", "classifier")
        version = next_version(base)
        tflite = os.path.join(export_dir, f"classifier_v{version}.tflite")
        if os.path.exists(tflite):
            raise FileExistsError(f"{tflite} exists; remove it to export version {version}.")
        saved_model = serving.export_classifier_saved_model(
            model, tokenizer, base, self.label_list, sequence_length,
            num_segments=len(self.text_columns), version=version,
        )
        texts = self.eval.texts
        # Single-text uncased classifiers get MediaPipe's metadata (vocabulary, labels) in the
        # same file, so it runs unchanged in MediaPipe Tasks' TextClassifier; MediaPipe's
        # tokenizer lower-cases and takes one text, so other models get the plain file.
        task_format = (len(texts) == 1 and model.num_classes > 1 and tokenizer.lowercase)
        if task_format:
            with tempfile.TemporaryDirectory() as tmp:
                vocab = os.path.join(tmp, "vocab.txt")
                with open(vocab, "w", encoding="utf-8") as f:
                    f.write("\n".join(tokenizer.vocabulary) + "\n")
                task_library.export_task_classifier(model, vocab, self.label_list, tflite,
                                                    sequence_length, lowercase=True)
        else:
            serving.export_classifier_tflite(model, tflite, sequence_length)
        report = serving.verify_classifier_exports(
            model, tokenizer, texts[0][:max_checked], saved_model, tflite, self.label_list,
            text_pairs=texts[1][:max_checked] if len(texts) == 2 else None,
            sequence_length=sequence_length,
        )
        if task_format:
            checked = task_library.verify_task_classifier(
                tflite, model, tokenizer, texts[0][:MEDIAPIPE_CHECKED], normalize=True)
            report[f"MediaPipe TextClassifier {tflite}"] = {
                k: checked[k] for k in ("max_abs_diff", "label_agreement")}
        result = {"saved_model": saved_model, "tflite": tflite, "checked": report}
        for recipe in tflite_recipes:
            if recipe != "float32":
                path = os.path.join(export_dir, f"classifier_v{version}_{recipe}.tflite")
                report[f"TFLite {path}"] = self._export_recipe(
                    model, tokenizer, path, sequence_length, recipe, max_checked)
                result[f"tflite_{recipe}"] = path
        return result

    def _export_recipe(self, model, tokenizer, path, sequence_length, recipe, max_checked):
        """Writes and validates one quantized TFLite file; returns its numbers."""
        from kbert import serving
        from kbert.serving import tflite_check

        data = None
        if serving.TFLITE_RECIPES[recipe].needs_representative_data:
            texts = [column[:CALIBRATION_EXAMPLES] for column in self.train.texts]
            preprocessor = BertTextPreprocessor(tokenizer, sequence_length)
            data = {k: v.numpy() for k, v in preprocessor(
                tuple(texts) if len(texts) == 2 else texts[0]).items()}
        # Written and checked under a hidden name: a file that fails its check is never
        # published.
        staged = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".unchecked")
        try:
            serving.export_classifier_tflite(model, staged, sequence_length, recipe=recipe,
                                             representative_data=data)
            checked = tflite_check.validate_tflite(staged, model, tokenizer,
                                               self.eval.texts[0][:max_checked])
            if not checked.passed:
                raise serving.ExportVerificationError(
                    f"TFLite file {path} ({recipe}): {'; '.join(checked.problems)}")
            if os.path.exists(path):
                raise FileExistsError(f"{path} appeared while the export was written.")
            os.rename(staged, path)
        finally:
            if os.path.exists(staged):
                os.remove(staged)
        return {"max_abs_diff": checked.max_abs_diff, "label_agreement": checked.label_agreement}
