"""Exports any BERT checkpoint's encoder as a TF Serving SavedModel and a TFLite file, verified.

The library side of `export/export_bert.py`: what a user would otherwise
stitch together from `kbert.checkpoints.load`, `load_tokenizer`,
`export_saved_model`, `export_tflite` and their verifiers.
"""

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

DEFAULT_TEXTS = ("The quick brown fox jumps over the lazy dog.", "A function returns a value.")
DEFAULT_FILL_MASK_TEXTS = ("The capital of France is [MASK].",)


def tflite_path(output_dir, version):
    """Where `export_encoder` writes the TFLite file of `version`: `OUTPUT_DIR/bert_vVERSION.tflite`."""
    return os.path.join(output_dir, f"bert_v{version}.tflite")


def saved_model_base(output_dir):
    """The TF Serving model base folder under `output_dir`: `OUTPUT_DIR/saved_model/bert`."""
    return os.path.join(output_dir, "saved_model", "bert")


def export_encoder(checkpoint, output_dir, version, sequence_length=128, texts=DEFAULT_TEXTS,
                   atol=1e-4, config=None, vocab_file=None, lowercase=None, log_path=None,
                   top_k=5, fill_mask_texts=DEFAULT_FILL_MASK_TEXTS):
    """Exports the encoder of any checkpoint `kbert.checkpoints.load` reads, and checks both files.

    Nothing is written before every input is checked, and both files are
    written and checked in a hidden `OUTPUT_DIR/.export-partial-*` folder and
    moved into place only when both agree with Keras, so a failed check or an
    interrupted export never leaves a version behind.

    Writes `OUTPUT_DIR/saved_model/bert/VERSION/` (signatures of
    `export_saved_model`: text in, ids in, wordpieces, and `serving_fill_mask`
    when the checkpoint has a masked-LM head, see
    `kbert.serving.fill_mask.load_masked_lm`; a TF Serving warmup file with
    `texts`) and `OUTPUT_DIR/bert_vVERSION.tflite` (int32 ids in, fixed
    `(1, sequence_length)`). The SavedModel is checked in one fresh process
    (the encoder on `texts`, fill-mask on `fill_mask_texts`) and the TFLite
    file in the interpreter against the Keras models. Everything is exported
    in float32 whatever dtype it was trained in.

    Args:
        checkpoint: str, a HuggingFace folder, Google or Model Garden
            checkpoint, kbert `.keras` file or run folder of `trainers.pretrain`.
        output_dir: str.
        version: int >= 1; neither target may exist yet.
        sequence_length: int, packed length of the text signature and the
            TFLite inputs, at most `max_position_embeddings`.
        texts: sample strings for the checks.
        atol: float, the largest allowed abs difference from Keras.
        config: optional `bert_config.json` path, for checkpoints without one beside them.
        vocab_file: optional vocabulary (default: the checkpoint's,
            `kbert.checkpoints.tokenizer_files.find_vocabulary`).
        lowercase: optional bool (default: the checkpoint's
            `tokenizer_config.json`, else inferred from the vocabulary).
        log_path: optional file for the TFLite converter's C++ logging.
        top_k: int in `[1, vocab_size]`, predictions per mask of `serving_fill_mask`.
        fill_mask_texts: sample strings with `[MASK]` for the fill-mask check.

    Returns:
        dict: `saved_model` (path), `saved_model_diff` (float), `saved_model_pooled`
        (float32 `(len(texts), hidden_size)`), `fill_mask` (the SavedModel's
        `serving_fill_mask` outputs on `fill_mask_texts`, a dict of arrays, or
        None without a masked-LM head), `fill_mask_diff` (float or None),
        `tflite` (path), `tflite_size` (bytes), `tflite_diff` (float, worst over
        texts), `tflite_pooled`, `lowercase` and `lowercase_source` (where the
        casing came from).

    Raises:
        FileNotFoundError, ValueError: unreadable checkpoint or vocabulary, a
            vocabulary of another size, `sequence_length` above the limit, a
            bad `top_k`, no `fill_mask_texts` for a checkpoint with a head.
        FileExistsError: a target exists (checked before anything is written).
        NotADirectoryError: `output_dir` is a file.
        ExportVerificationError: an export disagrees with Keras beyond `atol`.
    """
    from kbert import text
    from kbert.checkpoints import tokenizer_files
    from kbert.serving import fill_mask

    if not texts:
        raise ValueError("texts must hold at least one sample string for the checks.")
    encoder, pretrainer = fill_mask.load_masked_lm(checkpoint, config=config)
    if pretrainer is not None:
        fill_mask.check_top_k(top_k, encoder.bert_config.vocab_size)
        if not fill_mask_texts:
            raise ValueError("fill_mask_texts must hold at least one sample string.")
    vocab_path = vocab_file or tokenizer_files.find_vocabulary(checkpoint)
    tokenizer_files.check_vocabulary(vocab_path, encoder.bert_config.vocab_size)
    source = "--lowercase" if lowercase is not None else None
    if lowercase is None:
        lowercase, source = tokenizer_files.read_do_lower_case(vocab_path)
    limit = encoder.bert_config.max_position_embeddings
    if not 2 < sequence_length <= limit:
        raise ValueError(
            f"sequence_length={sequence_length} must be in [3, max_position_embeddings={limit}]."
        )
    if version < 1:
        raise ValueError(f"version={version} must be >= 1.")
    saved_model_path = os.path.join(saved_model_base(output_dir), str(version))
    lite_path = tflite_path(output_dir, version)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"output_dir={output_dir} is a file, not a folder.")
    for target in (saved_model_path, lite_path):
        if os.path.exists(target):
            raise FileExistsError(f"{target} exists; export another version or remove it.")
    tokenizer = text.BertTokenizer(vocab_path, lowercase=lowercase)

    # Everything is written and checked in a hidden folder of OUTPUT_DIR, then
    # moved into place: a failed check or a kill never leaves a version that
    # TF Serving would pick up.
    os.makedirs(output_dir, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".export-partial-", dir=output_dir)
    try:
        result = _export_and_check(pretrainer or encoder, tokenizer, vocab_path, stage, version,
                                   sequence_length, list(texts), atol, log_path or os.devnull,
                                   top_k, list(fill_mask_texts))
        os.makedirs(saved_model_base(output_dir), exist_ok=True)
        for staged, target in ((result["saved_model"], saved_model_path),
                               (result["tflite"], lite_path)):
            if os.path.exists(target):
                raise FileExistsError(f"{target} appeared while the export was written.")
            os.rename(staged, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    result.update({"saved_model": saved_model_path, "tflite": lite_path,
                   "lowercase": lowercase, "lowercase_source": source})
    return result


def _export_and_check(model, tokenizer, vocab_path, folder, version, sequence_length, texts,
                      atol, log, top_k, fill_mask_texts):
    """Writes both files under `folder` and checks them; returns `export_encoder`'s dict."""
    from kbert.models import BertPretrainer
    from kbert.serving import fill_mask, saved_model, tflite
    from kbert.training.runs import stderr_to_file  # the converter logs from C++

    pretrainer = model if isinstance(model, BertPretrainer) else None
    encoder = pretrainer.encoder if pretrainer is not None else model
    path = saved_model.export_saved_model(
        model, tokenizer, vocab_path, os.path.join(folder, "saved_model"), sequence_length,
        version, top_k=top_k, warmup_texts=texts)
    # One fresh process (as TF Serving loads the folder) for every check of the SavedModel.
    requests = [(saved_model.TEXT_SIGNATURE, {"text": texts})]
    if pretrainer is not None:
        requests.append((fill_mask.FILL_MASK_SIGNATURE, {"text": fill_mask_texts}))
    served = saved_model.run_requests_in_fresh_process(path, requests)
    packer = saved_model.text_packer(tokenizer, sequence_length)
    features, _ = saved_model.text_to_inputs(tokenizer, packer, tf.constant(texts))
    expected = {k: np.asarray(v, np.float32)
                for k, v in encoder(features, training=False).items()}
    result = {
        "saved_model": path,
        "saved_model_diff": saved_model.compare_outputs(
            served[0], expected, features["padding_mask"], atol, f"SavedModel {path}"),
        "saved_model_pooled": served[0]["pooled_output"],
        "fill_mask": None,
        "fill_mask_diff": None,
    }
    if pretrainer is not None:
        reference = fill_mask.fill_mask(pretrainer, tokenizer, fill_mask_texts, top_k,
                                        sequence_length)
        result["fill_mask_diff"] = fill_mask.compare_fill_mask(
            served[1], reference, atol, f"SavedModel {path} ({fill_mask.FILL_MASK_SIGNATURE})")
        result["fill_mask"] = served[1]
    lite_path = tflite_path(folder, version)
    with stderr_to_file(log):
        tflite.export_tflite(encoder, lite_path, sequence_length, batch_size=1)
    diffs, pooled = [], []
    for sentence in texts:
        features = {k: v.numpy() for k, v in packer(tokenizer(tf.constant([sentence]))).items()}
        with stderr_to_file(log):
            diffs.append(tflite.verify_tflite(lite_path, encoder, features, atol))
            pooled.append(tflite.run_tflite(lite_path, features)["pooled_output"][0])
    result.update({
        "tflite": lite_path,
        "tflite_size": os.path.getsize(lite_path),
        "tflite_diff": max(diffs),
        "tflite_pooled": np.stack(pooled),
    })
    return result
