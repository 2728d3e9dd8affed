"""Exports any BERT checkpoint's encoder for TF Serving and phones, validated before publishing.

The library side of `export/export_bert.py`: what a user would otherwise
stitch together from `kbert.checkpoints.load`, `load_tokenizer`,
`export_saved_model`, `export_tflite` (one file per recipe),
`export_text_tflite` and `kbert.serving.validate`.
"""

import os
import shutil
import tempfile

DEFAULT_TEXTS = ("The quick brown fox jumps over the lazy dog.", "A function returns a value.")
DEFAULT_FILL_MASK_TEXTS = ("The capital of France is [MASK].",)
# Representative texts a quantized file is also validated on (beside `texts`).
QUANTIZED_CHECK_TEXTS = 64


def tflite_path(output_dir, version, recipe="float32"):
    """Where `export_encoder` writes a TFLite file of `version`.

    `OUTPUT_DIR/bert_vVERSION.tflite` for float32,
    `OUTPUT_DIR/bert_vVERSION_RECIPE.tflite` for another recipe of
    `kbert.serving.TFLITE_RECIPES`, and `OUTPUT_DIR/bert_text_vVERSION.tflite`
    for the string-input file (`recipe="text"`).
    """
    if recipe == "text":
        return os.path.join(output_dir, f"bert_text_v{version}.tflite")
    suffix = "" if recipe == "float32" else f"_{recipe}"
    return os.path.join(output_dir, f"bert_v{version}{suffix}.tflite")


def saved_model_base(output_dir):
    """The TF Serving model base folder under `output_dir`: `OUTPUT_DIR/saved_model/bert`."""
    return os.path.join(output_dir, "saved_model", "bert")


def export_encoder(checkpoint, output_dir, version, sequence_length=128, texts=DEFAULT_TEXTS,
                   atol=None, config=None, vocab_file=None, lowercase=None, log_path=None,
                   top_k=5, fill_mask_texts=DEFAULT_FILL_MASK_TEXTS, tflite_recipes=("float32",),
                   representative_texts=None, text_tflite=True):
    """Exports the encoder of any checkpoint `kbert.checkpoints.load` reads, validated.

    Nothing is written before every input is checked, and every file is
    written and validated in a hidden `OUTPUT_DIR/.export-partial-*` folder
    and moved into place only when all agree with Keras, so a failed check or
    an interrupted export never leaves a version behind.

    Writes `OUTPUT_DIR/saved_model/bert/VERSION/` (signatures of
    `export_saved_model`: text in, ids in, wordpieces, and `serving_fill_mask`
    when the checkpoint has a masked-LM head, see
    `kbert.serving.fill_mask.load_masked_lm`; a TF Serving warmup file with
    `texts`), one id-input TFLite file per recipe of `tflite_recipes`
    (`tflite_path`; int32 ids in, fixed `(1, sequence_length)`) and, with
    `text_tflite`, the string-input file (`kbert.serving.export_text_tflite`).
    Each is checked by `kbert.serving.validate` the way its consumer loads
    it: the SavedModel in one fresh process (warmup requests replayed, the
    encoder on `texts`, fill-mask on `fill_mask_texts`), the TFLite files in
    the LiteRT interpreter, each by its recipe's rules. Everything is
    exported in float32 whatever dtype it was trained in.

    Args:
        checkpoint: str, a HuggingFace folder, Google or Model Garden
            checkpoint, kbert `.keras` file or run folder of `trainers.pretrain`.
        output_dir: str.
        version: int >= 1; neither target may exist yet.
        sequence_length: int, packed length of the text signature and the
            TFLite inputs, at most `max_position_embeddings`.
        texts: sample strings for the checks.
        atol: optional float replacing the largest abs difference from Keras
            the validator allows the SavedModel and float32 files (1e-5 and
            1e-4, `kbert.serving.validate.TOLERANCES`).
        config: optional `bert_config.json` path, for checkpoints without one beside them.
        vocab_file: optional vocabulary (default: the checkpoint's,
            `kbert.checkpoints.tokenizer_files.find_vocabulary`).
        lowercase: optional bool (default: the checkpoint's
            `tokenizer_config.json`, else inferred from the vocabulary).
        log_path: optional file for the TFLite converter's C++ logging.
        top_k: int in `[1, vocab_size]`, predictions per mask of `serving_fill_mask`.
        fill_mask_texts: sample strings with `[MASK]` for the fill-mask check.
        tflite_recipes: names of `kbert.serving.TFLITE_RECIPES`, one id-input
            file each (at least "float32" or another recipe).
        representative_texts: sample strings calibrating recipes that need
            data (`int8_selective`); draw them from the data the model will see.
            Quantized files are also validated on the first
            `QUANTIZED_CHECK_TEXTS` of them.
        text_tflite: bool, also write the string-input TFLite file.

    Returns:
        dict: `saved_model` (path), `saved_model_diff` (float), `saved_model_pooled`
        (float32 `(len(texts), hidden_size)`), `fill_mask` (the SavedModel's
        `serving_fill_mask` outputs on `fill_mask_texts`, a dict of arrays, or
        None without a masked-LM head), `fill_mask_diff` (float or None),
        `tflite` (path of the float32 file, or of the first recipe's),
        `tflite_size` (bytes), `tflite_diff` (float, worst over texts),
        `tflite_pooled` (its pooled outputs on `texts`), `reports` (the
        validator's `ArtifactReport` of every file, at its published path),
        `lowercase` and `lowercase_source` (where the casing came from).

    Raises:
        FileNotFoundError, ValueError: unreadable checkpoint or vocabulary, a
            vocabulary of another size, `sequence_length` above the limit, a
            bad `top_k`, no `fill_mask_texts` for a checkpoint with a head,
            an unknown or repeated recipe, `int8_selective` without
            `representative_texts`.
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
    tflite_recipes = _check_recipes(tflite_recipes, representative_texts)
    kinds = list(tflite_recipes) + (["text"] if text_tflite else [])
    saved_model_path = os.path.join(saved_model_base(output_dir), str(version))
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"output_dir={output_dir} is a file, not a folder.")
    for target in [saved_model_path] + [tflite_path(output_dir, version, k) for k in kinds]:
        if os.path.exists(target):
            raise FileExistsError(f"{target} exists; export another version or remove it.")
    tokenizer = text.BertTokenizer(vocab_path, lowercase=lowercase)

    # Everything is written and checked in a hidden folder of OUTPUT_DIR, then
    # moved into place: a failed check or a kill never leaves a version that
    # TF Serving would pick up.
    os.makedirs(output_dir, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".export-partial-", dir=output_dir)
    try:
        result = _export_and_check(
            pretrainer or encoder, tokenizer, vocab_path, stage, version, sequence_length,
            list(texts), atol, log_path or os.devnull, top_k, list(fill_mask_texts), kinds,
            representative_texts)
        os.makedirs(saved_model_base(output_dir), exist_ok=True)
        moves = [(result["saved_model"], saved_model_path)] + [
            (tflite_path(stage, version, k), tflite_path(output_dir, version, k)) for k in kinds]
        for staged, target in moves:
            if os.path.exists(target):
                raise FileExistsError(f"{target} appeared while the export was written.")
        for staged, target in moves:
            os.rename(staged, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for report in result["reports"]:
        report.path = report.path.replace(stage, output_dir, 1)
        if report.path == os.path.join(output_dir, "saved_model", str(version)):
            report.path = saved_model_path
    result.update({"saved_model": saved_model_path,
                   "tflite": tflite_path(output_dir, version, tflite_recipes[0]),
                   "lowercase": lowercase, "lowercase_source": source})
    return result


def _check_recipes(tflite_recipes, representative_texts):
    """Validates `export_encoder`'s recipes; returns them as a tuple."""
    from kbert.serving.tflite_recipes import TFLITE_RECIPES, check_recipe

    recipes = tuple(tflite_recipes)
    if not recipes or len(set(recipes)) != len(recipes):
        raise ValueError(f"tflite_recipes={list(recipes)} must name each recipe once, at least one.")
    calibrating = sorted(r for r, spec in TFLITE_RECIPES.items() if spec.needs_representative_data)
    for recipe in recipes:  # unknown names, and a calibrating recipe without texts
        if recipe not in TFLITE_RECIPES:
            check_recipe(recipe)  # raises, listing the recipes
        if recipe in calibrating and not representative_texts:
            raise ValueError(f"recipe {recipe!r} calibrates activation ranges on your data: give "
                             "representative_texts (a few hundred texts the model will see).")
    if representative_texts and not set(recipes) & set(calibrating):
        raise ValueError(f"representative_texts calibrate {calibrating} only; tflite_recipes="
                         f"{list(recipes)} names none.")
    return recipes


def _export_and_check(model, tokenizer, vocab_path, folder, version, sequence_length, texts,
                      atol, log, top_k, fill_mask_texts, kinds, representative_texts):
    """Writes every file under `folder` and validates it; returns `export_encoder`'s dict."""
    from kbert.models import BertPretrainer
    from kbert.serving import (
        fill_mask,
        saved_model,
        saved_model_check,
        tflite,
        tflite_check,
        tflite_text,
        validate,
    )
    from kbert.training.runs import stderr_to_file  # the converter logs from C++

    pretrainer = model if isinstance(model, BertPretrainer) else None
    encoder = pretrainer.encoder if pretrainer is not None else model
    path = saved_model.export_saved_model(
        model, tokenizer, vocab_path, os.path.join(folder, "saved_model"), sequence_length,
        version, top_k=top_k, warmup_texts=texts)
    # One fresh process (as TF Serving loads the folder) for every check of the SavedModel.
    extra = [] if pretrainer is None else [
        ("fill_mask", fill_mask.FILL_MASK_SIGNATURE, {"text": fill_mask_texts})]
    reports = [saved_model_check.validate_saved_model(path, encoder, tokenizer, texts, extra_calls=extra,
                                             max_abs_diff=atol)]
    _raise_unless_passed(reports[-1])
    served = reports[-1].outputs
    result = {
        "saved_model": path,
        "saved_model_diff": reports[-1].max_abs_diff,
        "saved_model_pooled": served["text"]["pooled_output"],
        "fill_mask": served.get("fill_mask"),
        "fill_mask_diff": None,
    }
    if pretrainer is not None:
        reference = fill_mask.fill_mask(pretrainer, tokenizer, fill_mask_texts, top_k,
                                        sequence_length)
        result["fill_mask_diff"] = fill_mask.compare_fill_mask(
            served["fill_mask"], reference, atol or 1e-4,
            f"SavedModel {path} ({fill_mask.FILL_MASK_SIGNATURE})")
    data = None
    if representative_texts:
        data = validate.pack_texts(tokenizer, list(representative_texts), sequence_length)
    for kind in kinds:
        lite_path = tflite_path(folder, version, kind)
        with stderr_to_file(log):
            if kind == "text":
                tflite_text.export_text_tflite(encoder, tokenizer, lite_path, sequence_length)
                reports.append(tflite_check.validate_text_tflite(lite_path, encoder, tokenizer, texts))
            else:
                tflite.export_tflite(
                    encoder, lite_path, sequence_length, batch_size=1, recipe=kind,
                    representative_data=data if kind == "int8_selective" else None)
                # A quantized file is judged on statistics (cosine, labels): also on up to
                # QUANTIZED_CHECK_TEXTS of the user's own texts when there are some.
                extra = list(representative_texts or [])[:QUANTIZED_CHECK_TEXTS]
                reports.append(tflite_check.validate_tflite(
                    lite_path, encoder, tokenizer, texts + (extra if kind != "float32" else []),
                    max_abs_diff=atol))
        _raise_unless_passed(reports[-1])
    first = reports[1] if len(reports) > 1 and kinds[0] != "text" else None
    result.update({
        "reports": reports,
        "tflite_size": os.path.getsize(tflite_path(folder, version, kinds[0])),
        "tflite_diff": first.max_abs_diff if first else None,
        "tflite_pooled": first.outputs["pooled_output"][:len(texts)] if first else None,
    })
    return result


def _raise_unless_passed(report):
    from kbert.serving.saved_model import ExportVerificationError

    if not report.passed:
        raise ExportVerificationError(
            f"{report.kind} {report.path} failed validation: {'; '.join(report.problems)}.")
