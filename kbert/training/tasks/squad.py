"""The extractive question-answering task: SQuAD JSON files, `BertSpanLabeler`."""

import os

import numpy as np

from kbert.data import batching
from kbert.training import finetuning
from kbert.training.tasks.common import next_version, ragged


class SquadTask:
    """Extractive question answering from SQuAD v1.1/v2.0 JSON files.

    Windows of `[CLS] question [SEP] context [SEP]` with `doc_stride`
    (google-research/bert `run_squad.py`); evaluation post-processes the
    start/end logits of every window into answer text from the original
    context and scores it with the official exact match and F1.

    Args:
        train_file, eval_file: str SQuAD JSON paths.
        tokenizer: `kbert.text.BertTokenizer`.
        sequence_length: int, the window length in word pieces (BERT: 384).
        doc_stride: int, offset between window starts in context pieces (BERT: 128).
        max_query_length: int, question pieces kept (BERT: 64).
        global_batch_size: int.
        version_2_with_negative: bool, SQuAD 2.0 (unanswerable questions).
        seed: int, the batch plan's seed.
        eval_batch_size: int.

    Raises:
        FileNotFoundError, ValueError: from `kbert.data.read_squad_examples`
            and `create_squad_features` (naming file, question id and value).
    """

    task = "squad"

    def __init__(self, train_file, eval_file, tokenizer, sequence_length=384, doc_stride=128,
                 max_query_length=64, global_batch_size=32, version_2_with_negative=False,
                 seed=0, eval_batch_size=64):
        from kbert.data import squad

        self.version_2_with_negative = version_2_with_negative
        self.doc_stride = doc_stride
        self.max_query_length = max_query_length
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.pad_id = tokenizer.special_token_ids["pad"]
        train_examples = squad.read_squad_examples(train_file, version_2_with_negative)
        self.eval_examples = squad.read_squad_examples(eval_file, version_2_with_negative)
        self.train = squad.create_squad_features(
            train_examples, tokenizer, sequence_length, doc_stride, max_query_length,
            is_training=True,
        )
        self.eval = squad.create_squad_features(
            self.eval_examples, tokenizer, sequence_length, doc_stride, max_query_length,
            is_training=False,
        )
        self.num_train_examples = len(train_examples)
        self.num_train_sequences = len(self.train)  # windows
        self.num_eval_examples = len(self.eval_examples)
        # Questions whose context needed more than one window.
        self.num_truncated = len(self.train) - len(train_examples)
        self.train_features = {
            "token_ids": ragged([w.token_ids for w in self.train]),
            "segment_ids": ragged([w.segment_ids for w in self.train]),
        }
        self.train_labels = {
            "start_logits": np.array([w.start_positions for w in self.train], np.int32),
            "end_logits": np.array([w.end_positions for w in self.train], np.int32),
        }
        self.steps_per_epoch = batching.batches_per_epoch(len(self.train), global_batch_size)
        self.eval_dataset = self.eval.to_dataset(eval_batch_size)
        self.best_metric = finetuning.BEST_METRIC[self.task]

    @property
    def length_note(self):
        """One line on what `sequence_length` did to the training data."""
        return f"{len(self.train)} windows, {self.num_truncated} beyond one per question"

    def build_model(self, encoder):
        """`BertSpanLabeler(encoder)`."""
        from kbert.models import BertSpanLabeler

        return BertSpanLabeler(encoder)

    def epoch_dataset(self, epoch):
        """Epoch `epoch`'s batches: `(features, {"start_logits", "end_logits"} gold positions)`."""
        import tensorflow as tf

        lengths = np.array([len(w.token_ids) for w in self.train])
        batches = batching.plan_batches(lengths, self.global_batch_size, self.seed, epoch)
        return batching.padded_batches_dataset(
            self.train_features, batches, pad_values={"token_ids": self.pad_id},
            labels={k: tf.constant(v) for k, v in self.train_labels.items()},
        )

    def predict(self, model, n_best_size=20, max_answer_length=30):
        """Answers for the evaluation questions: dict qas_id -> {text, start_char, end_char, score}."""
        from kbert.data import squad

        outputs = finetuning.predict_batches(model, self.eval_dataset)
        start = [row for batch in outputs for row in batch["start_logits"]]
        end = [row for batch in outputs for row in batch["end_logits"]]
        return squad.postprocess_squad(
            self.eval_examples, self.eval, start, end, n_best_size=n_best_size,
            max_answer_length=max_answer_length,
            version_2_with_negative=self.version_2_with_negative,
        )

    def evaluate(self, model):
        """Official SQuAD exact match and F1 (0-100, max over reference answers)."""
        from kbert.metrics import squad_evaluate

        result = squad_evaluate(self.eval_examples, self.predict(model))
        return {"exact_match": result["exact_match"], "f1": result["f1"]}

    def export(self, model, tokenizer, export_dir, sequence_length, max_checked=200):
        """Writes the question-answering SavedModel and checks it on evaluation questions.

        Layout: `export_dir/saved_model/question_answering/VERSION/` (see
        `kbert.serving.export_question_answering_saved_model`; one window of
        `sequence_length` per question).

        Returns:
            dict: the path and the verification report.

        Raises:
            kbert.serving.ExportVerificationError: an answer differs from `model`'s.
        """
        from kbert.serving import question_answering_export as qa

        base = os.path.join(export_dir, "saved_model", "question_answering")
        path = qa.export_question_answering_saved_model(
            model, tokenizer, base, sequence_length, self.max_query_length,
            version=next_version(base),
        )
        examples = self.eval_examples[:max_checked]
        report = qa.verify_question_answering_saved_model(
            path, model, tokenizer, [e.question_text for e in examples],
            [e.context_text for e in examples], sequence_length, self.max_query_length,
        )
        return {"saved_model": path, "checked": {f"SavedModel {path}": report}}

    def settings(self):
        """The settings a resumed run must keep."""
        return {
            "doc_stride": self.doc_stride,
            "max_query_length": self.max_query_length,
            "version_2_with_negative": self.version_2_with_negative,
        }
