"""Fine-tuning tasks: each turns files into batches, a model and an evaluation.

A task object is what `trainers/finetune.py` drives: it reads the training
and evaluation files once, tokenizes them once, and then gives

  * `build_model(encoder)`: the task model on a (pretrained) encoder;
  * `epoch_dataset(epoch)`: that epoch's length-bucketed batches, the same in
    every run (so a resumed run continues at the same batch);
  * `steps_per_epoch`;
  * `evaluate(model)`: the task's standard metrics on the evaluation file;
  * `settings()`: what a resumed run must not change (label list, columns).
"""

import os

import numpy as np

from kbert.data import batching, classification
from kbert.models import BertClassifier
from kbert.text import BertTextPreprocessor
from kbert.training import finetuning


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

    def export(self, model, tokenizer, export_dir, sequence_length, max_checked=1000):
        """Writes the SavedModel (next free version) and the TFLite file; checks both.

        Layout: `export_dir/saved_model/classifier/VERSION/` and
        `export_dir/classifier.tflite` (float32, inputs `ids`, `mask`,
        `segment_ids` of length `sequence_length`). Both are compared with
        `model` on the first `max_checked` evaluation examples (see
        `kbert.serving.verify_classifier_exports`).

        Returns:
            dict: artifact paths, sizes and the verification report.

        Raises:
            kbert.serving.ExportVerificationError: an artifact disagrees with `model`.
        """
        from kbert import serving

        base = os.path.join(export_dir, "saved_model", "classifier")
        saved_model = serving.export_classifier_saved_model(
            model, tokenizer, base, self.label_list, sequence_length,
            num_segments=len(self.text_columns), version=next_version(base),
        )
        tflite = os.path.join(export_dir, "classifier.tflite")
        serving.export_classifier_tflite(model, tflite, sequence_length)
        texts = self.eval.texts
        report = serving.verify_classifier_exports(
            model, tokenizer, texts[0][:max_checked], saved_model, tflite, self.label_list,
            text_pairs=texts[1][:max_checked] if len(texts) == 2 else None,
            sequence_length=sequence_length,
        )
        return {"saved_model": saved_model, "tflite": tflite, "checked": report}


def next_version(base):
    """The TF Serving version to write under `base`: one past the highest existing, or 1."""
    if not os.path.isdir(base):
        return 1
    versions = [int(name) for name in os.listdir(base) if name.isdigit()]
    return max(versions, default=0) + 1


def _ragged(arrays):
    """A list of 1-D arrays as an int32 `tf.RaggedTensor` `(len(arrays), None)`."""
    import tensorflow as tf

    return tf.RaggedTensor.from_row_lengths(
        np.concatenate(arrays).astype(np.int32), np.array([len(a) for a in arrays], np.int64)
    )


def _is_entity_scheme(label_list):
    """True when every tag is `O` or `B-`/`I-`/`E-`/`S-` prefixed (NER-style spans)."""
    return all(t == "O" or t[:2] in ("B-", "I-", "E-", "S-") for t in label_list)


class TaggingTask:
    """Word tagging (UPOS, NER) from CoNLL-U or CoNLL-2003-style files.

    Words are labelled on their first word piece (Devlin et al. 2019, section
    5.3); a sentence longer than `sequence_length` is split into several
    examples of whole words, so every word is trained on and predicted.

    Args:
        train_file, eval_file: str; `.conllu` files are read as CoNLL-U (UPOS
            by default), anything else as CoNLL-2003 columns (word first, tag
            last).
        tokenizer: `kbert.text.BertTokenizer`.
        sequence_length: int, the longest example in word pieces.
        global_batch_size: int.
        tag_field: "upos" or "xpos" for CoNLL-U files.
        seed: int, the batch plan's seed.
        eval_batch_size: int.

    Raises:
        FileNotFoundError, ValueError: from the readers, naming file, line
            and value (e.g. an evaluation tag the training file does not have).
    """

    task = "tagging"

    def __init__(self, train_file, eval_file, tokenizer, sequence_length=128,
                 global_batch_size=32, tag_field="upos", seed=0, eval_batch_size=64):
        from kbert.data import tagging

        def read(path, label_list=None):
            if path.endswith(".conllu"):
                return tagging.read_conllu(path, tag_field=tag_field, label_list=label_list)
            return tagging.read_conll(path, label_list=label_list)

        train_sentences = read(train_file)
        self.label_list = tagging.build_label_list(train_sentences)
        eval_sentences = read(eval_file, self.label_list)
        self.num_classes = len(self.label_list)
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.tag_field = tag_field
        self.pad_id = tokenizer.special_token_ids["pad"]
        self.train = tagging.encode_tagged_sentences(
            train_sentences, tokenizer, self.label_list, sequence_length, long_sentences="split"
        )
        self.eval = tagging.encode_tagged_sentences(
            eval_sentences, tokenizer, self.label_list, sequence_length, long_sentences="split"
        )
        self.num_train_examples = len(train_sentences)
        self.num_eval_examples = len(eval_sentences)
        # Split, not trimmed: report the sentences that needed more than one example.
        self.num_truncated = int(len(self.train) - len(train_sentences))
        self.train_features = {
            "token_ids": _ragged(self.train.token_ids),
            "segment_ids": _ragged(self.train.segment_ids),
        }
        self.train_labels = _ragged(self.train.labels)
        self.steps_per_epoch = batching.batches_per_epoch(len(self.train), global_batch_size)
        self.eval_true_tags = [s.tags for s in eval_sentences]
        # Words with inner whitespace cannot travel through the text signature.
        self.eval_words = [
            s.words for s in eval_sentences if not any(len(w.split()) != 1 for w in s.words)
        ]
        self.eval_dataset = tagging.tagging_dataset(self.eval, eval_batch_size)
        self.best_metric = finetuning.BEST_METRIC[self.task]

    @property
    def length_note(self):
        """One line on what `sequence_length` did to the training data."""
        return f"{self.num_truncated} extra examples from splitting long sentences"

    def build_model(self, encoder):
        """`BertTokenClassifier(encoder, num_classes)`."""
        from kbert.models import BertTokenClassifier

        return BertTokenClassifier(encoder, self.num_classes)

    def epoch_dataset(self, epoch):
        """Epoch `epoch`'s batches: `({token_ids, segment_ids, padding_mask}, labels)`."""
        lengths = np.array([len(t) for t in self.train.token_ids])
        batches = batching.plan_batches(lengths, self.global_batch_size, self.seed, epoch)
        return batching.padded_batches_dataset(
            self.train_features, batches,
            pad_values={"token_ids": self.pad_id, "labels": self.train.ignore_label},
            labels=self.train_labels,
        )

    def predict_tags(self, model, examples=None, dataset=None):
        """Per-sentence predicted tags (lists of str) for the evaluation file."""
        from kbert.data import tagging

        examples = examples or self.eval
        dataset = dataset or self.eval_dataset
        rows = [row for batch in finetuning.predict_batches(model, dataset) for row in batch]
        ids = tagging.word_predictions(
            rows, examples.word_ids, examples.num_words, examples.sentence_index
        )
        return tagging.ids_to_tags(ids, self.label_list)

    def evaluate(self, model):
        """Word accuracy (and entity precision/recall/F1 for BIO-style tags)."""
        from kbert.metrics import tagging as tagging_metrics

        predicted = self.predict_tags(model)
        result = {"accuracy": tagging_metrics.token_accuracy(self.eval_true_tags, predicted)}
        if _is_entity_scheme(self.label_list):
            entities = tagging_metrics.entity_f1(self.eval_true_tags, predicted)
            result.update({k: entities[k] for k in ("precision", "recall", "f1")})
        return result

    def settings(self):
        """The settings a resumed run must keep."""
        return {"label_list": self.label_list, "tag_field": self.tag_field}

    def export(self, model, tokenizer, export_dir, sequence_length, max_checked=300):
        """Writes the tagger SavedModel (next free version) and checks it on evaluation sentences.

        Layout: `export_dir/saved_model/tagger/VERSION/` (see
        `kbert.serving.export_tagger_saved_model`).

        Returns:
            dict: the path and the verification report.

        Raises:
            kbert.serving.ExportVerificationError: a tag differs from `model`'s.
        """
        from kbert.serving import tagger_export

        base = os.path.join(export_dir, "saved_model", "tagger")
        path = tagger_export.export_tagger_saved_model(
            model, tokenizer, base, self.label_list, sequence_length, version=next_version(base)
        )
        sentences = [w for w in self.eval_words[:max_checked] if w]
        report = tagger_export.verify_tagger_saved_model(
            path, model, tokenizer, self.label_list, sentences, sequence_length
        )
        return {"saved_model": path, "checked": {f"SavedModel {path}": report}}


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
        self.num_eval_examples = len(self.eval_examples)
        # Questions whose context needed more than one window.
        self.num_truncated = len(self.train) - len(train_examples)
        self.train_features = {
            "token_ids": _ragged([w.token_ids for w in self.train]),
            "segment_ids": _ragged([w.segment_ids for w in self.train]),
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
