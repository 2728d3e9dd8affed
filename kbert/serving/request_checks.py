"""Checks of serving requests, in the exported graph, at the signature boundary.

TensorFlow does not check the shapes of a SavedModel signature's inputs, and
TF Serving passes any tensor a client sends. So kbert declares text and id
inputs with *unknown* rank and checks rank, shape, length and id range here,
in the graph, with messages that name the input and what was expected. A bad
request then fails with that message instead of crashing the server (a
scalar string into the tokenizer) or silently dropping data (a matrix of
strings). Used by every export in `kbert.serving`.
"""

import tensorflow as tf

from kbert.models.input_checks import INPUT_NAMES

# The raw-text signature of text SavedModels (TF Serving's default key).
TEXT_SIGNATURE = "serving_default"
TOKEN_IDS_SIGNATURE = "serving_token_ids"
# The same signature for int64 ids (what NumPy and many gRPC clients produce).
TOKEN_IDS_INT64_SIGNATURE = "serving_token_ids_int64"


def token_ids_input_specs(dtype=tf.int32):
    """Input specs of token-id signatures: `INPUT_NAMES` of `dtype` and *unknown* rank.

    As for text (`text_input_specs`): TensorFlow does not check the shapes of
    signature inputs, so the rank is left open and checked in the graph by
    `check_token_ids_batch`, whose error names the input.
    """
    return [tf.TensorSpec(None, dtype, name=name) for name in INPUT_NAMES]


def check_token_ids_batch(config, token_ids, segment_ids, padding_mask):
    """Checks a token-id request in the graph; returns the int32 features.

    Args:
        config: the encoder's `BertConfig`.
        token_ids, segment_ids, padding_mask: int32 or int64 tensors of
            unknown rank (see `token_ids_input_specs`), each expected to be
            `(batch_size, sequence_length)`.

    Returns:
        dict of `INPUT_NAMES` -> int32 `(batch_size, sequence_length)`.

    Raises:
        tf.errors.InvalidArgumentError (at run time), naming the input and
            what was expected: an input not of rank 2, `segment_ids` or
            `padding_mask` of another shape than `token_ids`, a sequence
            of length 0 or longer than `max_position_embeddings`; for int64 requests also
            ids outside `[0, vocab_size)` / `[0, type_vocab_size)` (checked
            before the cast to int32, which would wrap them; int32 ids are
            range-checked by `BertEmbeddings`).
    """
    features = {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}
    checked = {
        name: _with_rank(name, value, 2, "ids of shape (batch_size, sequence_length)")
        for name, value in features.items()
    }
    shape = tf.shape(checked["token_ids"])
    checks = [
        tf.debugging.Assert(
            tf.reduce_all(tf.equal(tf.shape(checked[name]), shape)),
            [f"`{name}` must have the shape of `token_ids`", shape, "received shape",
             tf.shape(checked[name])],
        )
        for name in ("segment_ids", "padding_mask")
    ]
    limit = config.max_position_embeddings
    too_long = f"`token_ids` must have sequence length <= max_position_embeddings={limit}; received shape"
    checks.append(tf.debugging.Assert(shape[1] <= limit, [too_long, shape]))
    empty = ("`token_ids` must be ids of shape (batch_size, sequence_length) with "
             "sequence_length >= 1; received shape")
    checks.append(tf.debugging.Assert(shape[1] >= 1, [empty, shape]))
    if checked["token_ids"].dtype != tf.int32:
        for name, size, field in (("token_ids", config.vocab_size, "vocab_size"),
                                  ("segment_ids", config.type_vocab_size, "type_vocab_size")):
            ids = checked[name]
            checks.append(tf.debugging.Assert(
                tf.reduce_all((ids >= 0) & (ids < size)),
                [f"`{name}` must hold ids in [0, {size}) ({field}); received min and max",
                 tf.reduce_min(ids), tf.reduce_max(ids)],
            ))
        checked["padding_mask"] = tf.not_equal(checked["padding_mask"], 0)
    with tf.control_dependencies(checks):
        return {name: tf.cast(value, tf.int32) for name, value in checked.items()}


def add_token_ids_endpoints(archive, serve, config):
    """Adds `serving_token_ids` (int32) and `serving_token_ids_int64` to `archive`.

    Both take `token_ids`, `segment_ids`, `padding_mask` of shape
    `(batch_size, length)`, length <= `max_position_embeddings`, checked in
    the graph by `check_token_ids_batch`; int64 ids are range-checked and
    cast to int32. (A NumPy int64 array sent to the int32 signature from
    Python is converted by TensorFlow; an int64 *tensor* is refused by
    TensorFlow itself, hence the second signature.)

    Args:
        archive: a `keras.export.ExportArchive`.
        serve: callable of the int32 features dict -> dict of outputs.
        config: the encoder's `BertConfig`.
    """
    for name, dtype in ((TOKEN_IDS_SIGNATURE, tf.int32), (TOKEN_IDS_INT64_SIGNATURE, tf.int64)):
        def endpoint(token_ids, segment_ids, padding_mask):
            return serve(check_token_ids_batch(config, token_ids, segment_ids, padding_mask))

        archive.add_endpoint(name, endpoint, input_signature=token_ids_input_specs(dtype))


def _with_rank(name, value, rank, expected):
    """`value` after an in-graph check of its rank, with that static rank.

    Raises:
        tf.errors.InvalidArgumentError (at run time): "`name` must be
            `expected`; received shape" and the shape, for another rank.
    """
    ok = tf.debugging.Assert(
        tf.equal(tf.rank(value), rank),
        [f"`{name}` must be {expected}; received shape", tf.shape(value)],
    )
    with tf.control_dependencies([ok]):
        # Reshaped after the check, so a bad request fails with the message
        # above (`tf.ensure_shape` would fail first, its own way, once the
        # function is specialised to the request's shape).
        padded = tf.concat([tf.shape(value), tf.ones([rank], tf.int32)], axis=0)
        return tf.reshape(value, tf.slice(padded, [0], [rank]))


def text_input_specs(*names):
    """Input specs of text signatures: tf.string of *unknown* rank, checked at run time.

    A signature declared as `(None,)` does not stop a client from sending a
    scalar or a matrix (TensorFlow does not check shapes of signature
    inputs), and the tokenizer kernels then crash the process or read only
    part of the batch. Declaring the rank unknown keeps the check in the
    graph (`check_text_batch`), where it cannot be folded away.
    """
    return [tf.TensorSpec(None, tf.string, name=name) for name in names]


def check_text_batch(**texts):
    """Checks that each input is a 1-D batch of strings of one common size; returns them.

    Args:
        **texts: input name -> tf.string tensor of unknown rank (see `text_input_specs`).

    Returns:
        list of the tensors, with static shape `(batch_size,)`.

    Raises:
        tf.errors.InvalidArgumentError (at run time): an input that is not
            1-D (its name, the expected shape and its shape in the message),
            or inputs of different sizes.
    """
    checked = [
        _with_rank(name, text, 1, "a batch of strings of shape (batch_size,)")
        for name, text in texts.items()
    ]
    if len(checked) == 2:
        names = list(texts)
        same = tf.debugging.assert_equal(
            tf.size(checked[0]), tf.size(checked[1]),
            message=f"`{names[0]}` and `{names[1]}` must hold the same number of strings",
        )
        with tf.control_dependencies([same]):
            checked = [tf.identity(t) for t in checked]
    return checked
