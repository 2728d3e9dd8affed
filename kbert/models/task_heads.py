"""What the three fine-tuning models share: input handling, config and head checks."""

import keras

from kbert.models.bert_encoder import BertEncoder
from kbert.models.input_checks import INPUT_NAMES, BertInputsModel


class BertTaskModel(BertInputsModel):
    """Base of the task models: a functional model over a `BertEncoder`.

    Subclasses build their head in `__init__`; this class gives them the
    input checks of every entry point (`__call__`, `fit`, `evaluate`,
    `predict`, `*_on_batch`; see `BertInputsModel`), `get_config`/`from_config`
    that serialise the encoder, and the shared argument validation.
    """

    def _check_encoder(self, encoder):
        if not isinstance(encoder, BertEncoder):
            raise ValueError(  # noqa: TRY004 (the documented error of a wrong argument)
                f"`encoder` must be a kbert BertEncoder; received {type(encoder).__name__}."
            )

    @staticmethod
    def _check_dropout(dropout):
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); received {dropout!r}.")
        return float(dropout)

    @staticmethod
    def _dropout_and_dense(encoder, units, dropout, name):
        """The head's dropout (in the encoder's policy) and float32 dense layer."""
        initializer = keras.initializers.TruncatedNormal(
            stddev=encoder.bert_config.initializer_range
        )
        dropout_layer = keras.layers.Dropout(dropout, dtype=encoder.dtype_policy, name="dropout")
        dense = keras.layers.Dense(
            units, kernel_initializer=initializer, dtype="float32", name=name
        )
        return dropout_layer, dense

    @staticmethod
    def _encoder_inputs():
        return {name: keras.Input(shape=(None,), dtype="int32", name=name) for name in INPUT_NAMES}

    def _input_config(self):
        return self.encoder.bert_config

    def _head_config(self):
        raise NotImplementedError

    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
        }
        config.update(self._head_config())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)


def inference_copy(model, dtype="float32"):
    """An uncompiled copy of a task model (or encoder) with the same weights, in `dtype`.

    What to save and export after training: it carries no optimizer (so a
    `.keras` file loads with `import kbert` alone) and computes in `dtype`
    whatever policy training used (variables are float32 under the mixed
    policies, so the weights copy exactly).

    Args:
        model: a `BertEncoder` or a task model (`BertClassifier`,
            `BertTokenClassifier`, `BertSpanLabeler`).
        dtype: Keras dtype policy name of the copy.
    """
    from kbert.models.bert_encoder import BertEncoder

    if isinstance(model, BertEncoder):
        copy = BertEncoder(**model.bert_config.to_dict(), dtype=dtype, name=model.name)
    else:
        encoder = inference_copy(model.encoder, dtype)
        copy = type(model)(encoder, **model._head_config(), name=model.name)
    copy.set_weights(model.get_weights())
    return copy
