"""Packs one or two WordPiece segments into BERT's fixed-length inputs."""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

PADDING_MODES = ("max_length", "longest")


def min_sequence_length(num_segments):
    """The shortest packed length that keeps a token of each of `num_segments` segments.

    `[CLS]` and a `[SEP]` per segment, plus one token per segment: 3 for one
    segment, 5 for a pair.
    """
    return 2 * num_segments + 1


@keras.saving.register_keras_serializable(package="kbert")
class BertPacker(keras.layers.Layer):
    """Builds `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]` inputs of a fixed length.

    Segments are first trimmed round-robin (one token at a time from each
    segment that still has tokens, `tensorflow_text.RoundRobinTrimmer`) so
    that they fit `sequence_length` with the special tokens, then combined
    (`tensorflow_text.combine_segments`) and padded with `pad_id`
    (`tensorflow_text.pad_model_inputs`). This matches google-research/bert
    `create_pretraining_data.truncate_seq_pair` and `run_classifier`'s layout.

    Args:
        sequence_length: int, length of every packed row (with
            `padding="max_length"`), or the longest allowed row (with
            `padding="longest"`): at least one token per segment and the
            special tokens, so >= 3 (`[CLS] A [SEP]`), and >= 5 when called
            on two segments (`[CLS] A [SEP] B [SEP]`).
        cls_id, sep_id, pad_id: int ids of `[CLS]`, `[SEP]`, `[PAD]`.
        padding: "max_length" (default) pads every row to `sequence_length`;
            "longest" pads to the longest row of the call's batch (at most
            `sequence_length`), which is what length-bucketed fine-tuning
            batches want.
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: a `tf.RaggedTensor` of ids `(batch_size, None)` or a list/tuple
            of one or two of them (segments A and B).

    Returns:
        dict of int32 `(batch_size, sequence_length)` tensors (or
        `(batch_size, longest)` with `padding="longest"`): `token_ids`,
        `segment_ids` (0 for `[CLS]`, A and its `[SEP]`; 1 for B and its
        `[SEP]`), `padding_mask` (1 real, 0 padding).

    Raises:
        ValueError: `sequence_length` not an int >= 3 (at construction) or
            below 5 for two segments (at call time), both naming the value
            and the minimum (shorter rows would drop all text of a segment);
            more than two segments, segments that are not ragged rank 2, or
            an unknown `padding`.
    """

    def __init__(self, sequence_length, cls_id, sep_id, pad_id=0, padding="max_length", **kwargs):
        kwargs.pop("dtype", None)
        kwargs.setdefault("trainable", False)
        super().__init__(dtype="int32", **kwargs)
        if padding not in PADDING_MODES:
            raise ValueError(f"`padding` must be one of {PADDING_MODES}; received {padding!r}.")
        is_int = isinstance(sequence_length, (int, np.integer)) and not isinstance(
            sequence_length, bool
        )
        if not is_int or sequence_length < min_sequence_length(1):
            raise ValueError(
                f"`sequence_length` must be an int >= {min_sequence_length(1)} ([CLS], at least "
                f"one token and [SEP]); received {sequence_length!r}."
            )
        self.sequence_length = int(sequence_length)
        self.padding = padding
        self.cls_id = cls_id
        self.sep_id = sep_id
        self.pad_id = pad_id
        self.built = True

    def compute_output_spec(self, inputs):
        """Symbolic outputs, so the packer can follow a `BertTokenizer` in a functional model.

        Returns:
            dict of int32 `KerasTensor`s `(batch_size, sequence_length)`
            (`(batch_size, None)` with `padding="longest"`).

        Raises:
            ValueError: more than two segments.
        """
        segments = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if not 1 <= len(segments) <= 2:
            raise ValueError(f"BertPacker takes one or two segments; received {len(segments)}.")
        length = self.sequence_length if self.padding == "max_length" else None
        shape = (segments[0].shape[0], length)
        return {name: keras.KerasTensor(shape, dtype="int32")
                for name in ("token_ids", "segment_ids", "padding_mask")}

    def call(self, inputs):
        segments = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if not 1 <= len(segments) <= 2:
            raise ValueError(f"BertPacker takes one or two segments; received {len(segments)}.")
        minimum = min_sequence_length(len(segments))
        if self.sequence_length < minimum:
            raise ValueError(
                f"sequence_length={self.sequence_length} is too short for {len(segments)} "
                f"segments: it must be >= {minimum} (their {len(segments) + 1} special tokens "
                "and at least one token per segment)."
            )
        for i, segment in enumerate(segments):
            if not isinstance(segment, tf.RaggedTensor) or segment.shape.rank != 2:
                raise ValueError(
                    f"Segment {i} must be a tf.RaggedTensor of shape (batch_size, None); "
                    f"received {type(segment).__name__} of shape {getattr(segment, 'shape', None)}."
                )
        segments = [tf.cast(segment, tf.int32) for segment in segments]
        budget = self.sequence_length - len(segments) - 1
        segments = tf_text.RoundRobinTrimmer(max_seq_length=budget).trim(segments)
        token_ids, segment_ids = tf_text.combine_segments(
            segments, start_of_sequence_id=self.cls_id, end_of_segment_id=self.sep_id
        )
        if self.padding == "longest":
            padding_mask = tf.ones_like(token_ids).to_tensor(0)
            token_ids = token_ids.to_tensor(self.pad_id)
            segment_ids = segment_ids.to_tensor(0)
        else:
            token_ids, padding_mask = tf_text.pad_model_inputs(
                token_ids, max_seq_length=self.sequence_length, pad_value=self.pad_id
            )
            segment_ids, _ = tf_text.pad_model_inputs(
                segment_ids, max_seq_length=self.sequence_length, pad_value=0
            )
        return {
            "token_ids": tf.cast(token_ids, tf.int32),
            "segment_ids": tf.cast(segment_ids, tf.int32),
            "padding_mask": tf.cast(padding_mask, tf.int32),
        }

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config.update(
            {
                "sequence_length": self.sequence_length,
                "cls_id": self.cls_id,
                "sep_id": self.sep_id,
                "pad_id": self.pad_id,
                "padding": self.padding,
            }
        )
        return config
