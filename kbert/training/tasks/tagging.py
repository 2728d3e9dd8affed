"""The tagging task: CoNLL-U / CoNLL-2003 files, `BertTokenClassifier`."""

import os

import numpy as np

from kbert.data import batching
from kbert.training import finetuning
from kbert.training.tasks.common import is_entity_scheme, next_version, ragged


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
        self.num_train_sequences = len(self.train)  # a split sentence counts once per part
        self.num_eval_examples = len(eval_sentences)
        # Split, not trimmed: report the sentences that needed more than one example.
        self.num_truncated = int(len(self.train) - len(train_sentences))
        self.train_features = {
            "token_ids": ragged(self.train.token_ids),
            "segment_ids": ragged(self.train.segment_ids),
        }
        self.train_labels = ragged(self.train.labels)
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
        if is_entity_scheme(self.label_list):
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
