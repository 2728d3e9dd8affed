"""`BertConfig`: BERT hyperparameters, one-to-one with Google's `bert_config.json`."""

import dataclasses
import json
import os

_ACTIVATIONS = (
    "gelu",
    "gelu_exact",
    "gelu_approximate",
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "relu",
    "tanh",
    "silu",
    "swish",
)


@dataclasses.dataclass
class BertConfig:
    """BERT hyperparameters (google-research/bert `modeling.BertConfig`).

    Attributes:
        vocab_size: int, WordPiece vocabulary size (rows of the token embedding).
        hidden_size: int, width D of every hidden state.
        num_hidden_layers: int, number of Transformer encoder blocks L.
        num_attention_heads: int, heads per block A; must divide `hidden_size`.
        intermediate_size: int, feed-forward width (BERT: 4 * hidden_size).
        hidden_act: str, feed-forward activation; "gelu" is exact erf GELU,
            "gelu_approximate"/"gelu_new" the tanh form.
        hidden_dropout_prob: float, dropout on embeddings and residual branches.
        attention_probs_dropout_prob: float, dropout on attention probabilities.
        max_position_embeddings: int, longest sequence (position table rows).
        type_vocab_size: int, number of segment ids.
        initializer_range: float, stddev of truncated-normal initializers.
        layer_norm_eps: float, LayerNorm epsilon. Absent from Google's files
            (where it is 1e-12), present in HuggingFace's.

    Raises:
        ValueError (from `validate`, called on construction): a non-positive
            size, `hidden_size % num_attention_heads != 0`, a dropout outside
            [0, 1), or an unknown activation.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Checks every field; raises ValueError naming the bad field and value."""
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive int; got {value!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BertConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}."
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1); got {value!r}.")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"BertConfig.hidden_act={self.hidden_act!r} is not one of {_ACTIVATIONS}."
            )

    def to_dict(self):
        """Returns the fields as a plain dict (the `bert_config.json` keys)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """Builds a config from a dict with `bert_config.json` or HF `config.json` keys.

        Keys this class does not know (HF's `architectures`, `model_type`,
        `pad_token_id`, ...) are ignored; missing keys take BERT's defaults.

        Raises:
            ValueError: invalid values (see class docstring), or a
                `position_embedding_type` other than "absolute".
        """
        position_type = values.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(
                f"position_embedding_type={position_type!r} is not supported; "
                "kbert implements BERT's learned absolute positions."
            )
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    @classmethod
    def from_json_file(cls, path):
        """Reads a Google `bert_config.json` or a HuggingFace `config.json`.

        Raises:
            FileNotFoundError: `path` does not exist.
            ValueError: the file is not a JSON object, or holds invalid values.
        """
        if not os.path.exists(path):
            raise FileNotFoundError(f"BERT config file not found: {path}")
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a JSON object; got {type(values).__name__}.")
        return cls.from_dict(values)

    def to_json_file(self, path):
        """Writes Google's `bert_config.json` layout (plus `layer_norm_eps`)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
