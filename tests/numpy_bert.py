"""An independent NumPy (float64) BERT forward pass, for parity tests.

Written from google-research/bert `modeling.py` (embedding_postprocessor,
transformer_model, pooler) and the paper, reading weights from plain arrays.
"""

import math

import numpy as np

_erf = np.vectorize(math.erf)


def gelu(x, approximate=False):
    if approximate:
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + _erf(x / np.sqrt(2.0)))


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def encoder_block(x, mask, w, num_heads, eps, approximate=False):
    """x [B, S, D], mask [B, S] (1 real); w: dict of float64 arrays."""
    b, s, d = x.shape
    h = d // num_heads

    def heads(t):
        return t.reshape(b, s, num_heads, h).transpose(0, 2, 1, 3)

    q = heads(x @ w["q_k"] + w["q_b"])
    k = heads(x @ w["k_k"] + w["k_b"])
    v = heads(x @ w["v_k"] + w["v_b"])
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(h)
    scores = scores + (1.0 - mask[:, None, None, :]) * -10000.0
    context = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(b, s, d)
    x = layer_norm(x + context @ w["o_k"] + w["o_b"], w["ln1_g"], w["ln1_b"], eps)
    ffn = gelu(x @ w["i_k"] + w["i_b"], approximate) @ w["out_k"] + w["out_b"]
    return layer_norm(x + ffn, w["ln2_g"], w["ln2_b"], eps)


def bert_forward(token_ids, segment_ids, mask, w, num_heads, eps=1e-12, approximate=False):
    """Returns (sequence_output [B, S, D], pooled_output [B, D]) in float64."""
    s = token_ids.shape[1]
    x = w["tok"][token_ids] + w["seg"][segment_ids] + w["pos"][:s][None]
    x = layer_norm(x, w["emb_ln_g"], w["emb_ln_b"], eps)
    mask = mask.astype(np.float64)
    for block in w["blocks"]:
        x = encoder_block(x, mask, block, num_heads, eps, approximate)
    pooled = np.tanh(x[:, 0] @ w["pool_k"] + w["pool_b"])
    return x, pooled


def weights_from_kbert(encoder):
    """Reads a kbert BertEncoder's variables into the dict `bert_forward` takes."""

    def a(variable):
        return np.asarray(variable.numpy(), np.float64)

    e = encoder.embeddings
    w = {
        "tok": a(e.token_embedding.embeddings),
        "seg": a(e.segment_embedding.embeddings),
        "pos": a(e.position_embedding.embeddings),
        "emb_ln_g": a(e.layer_norm.gamma),
        "emb_ln_b": a(e.layer_norm.beta),
        "pool_k": a(encoder.pooler.kernel),
        "pool_b": a(encoder.pooler.bias),
        "blocks": [],
    }
    for block in encoder.transformer_layers:
        w["blocks"].append(
            {
                "q_k": a(block.query.kernel), "q_b": a(block.query.bias),
                "k_k": a(block.key.kernel), "k_b": a(block.key.bias),
                "v_k": a(block.value.kernel), "v_b": a(block.value.bias),
                "o_k": a(block.attention_output.kernel), "o_b": a(block.attention_output.bias),
                "ln1_g": a(block.attention_layer_norm.gamma),
                "ln1_b": a(block.attention_layer_norm.beta),
                "i_k": a(block.intermediate.kernel), "i_b": a(block.intermediate.bias),
                "out_k": a(block.output_dense.kernel), "out_b": a(block.output_dense.bias),
                "ln2_g": a(block.output_layer_norm.gamma),
                "ln2_b": a(block.output_layer_norm.beta),
            }
        )
    return w


def randomize(model, seed=0, scale=0.5):
    """Gives every variable non-trivial random values (LayerNorm gammas near 1)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        value = rng.normal(0.0, scale, shape)
        if variable.path.endswith("gamma"):
            value = 1.0 + 0.1 * value
        variable.assign(value.astype(variable.dtype))


def tiny_encoder(vocab_size, seed, num_hidden_layers=2, num_attention_heads=4):
    """A randomized `BertEncoder` for export tests: hidden size 32, FFN 64, 64 positions.

    With the uncased BERT vocabulary its embeddings are 3.9 MB, so exports
    stay small while every table has a real vocabulary's size.
    """
    from kbert.models import BertEncoder

    model = BertEncoder(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=num_hidden_layers,
                        num_attention_heads=num_attention_heads, intermediate_size=64,
                        max_position_embeddings=64)
    randomize(model, seed=seed, scale=0.1)
    return model
