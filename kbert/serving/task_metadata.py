"""The TFLite Model Metadata of a MediaPipe Tasks / TFLite Task Library text classifier file.

Builds the metadata flatbuffer (schema
`mediapipe/tasks/metadata/metadata_schema.fbs`, identifier "M001"), stores it
in the TFLite model as the "TFLITE_METADATA" buffer, appends the associated
files as a stored zip archive, and reads all of it back as MediaPipe does.
The layout and its constraints are described in `kbert.serving.task_library`,
whose `export_task_classifier` writes these files.
"""

import io
import zipfile

import numpy as np

from kbert.serving.tflite import id_table_sizes

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
TFLITE_IDENTIFIER = b"TFL3"
# Input process units and BertTokenizerOptions (metadata schema 1.1.0) are the
# newest members this file uses; see mediapipe/tasks/cc/metadata/metadata_version.cc.
MIN_PARSER_VERSION = "1.1.0"
VOCAB_FILE = "vocab.txt"
LABELS_FILE = "labels.txt"
# Metadata tensor names MediaPipe's BertPreprocessorCalculator requires.
INPUT_NAMES = ("ids", "mask", "segment_ids")
OUTPUT_NAME = "probability"
_INPUT_DESCRIPTIONS = {
    "ids": "Tokenized ids of the input text.",
    "mask": "Mask with 1 for real tokens and 0 for padding tokens.",
    "segment_ids": "0 for the first sequence, 1 for the second sequence if exists.",
}


def _schemas():
    """MediaPipe's generated TFLite and metadata flatbuffer schemas (imported lazily)."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as metadata_fb
    from mediapipe.tasks.metadata import schema_py_generated as tflite_fb

    return tflite_fb, metadata_fb


def _signature_io(model_fb):
    """(subgraph input index -> signature name, output tensor index) of a classifier file."""
    if model_fb.SubgraphsLength() != 1 or model_fb.SignatureDefsLength() != 1:
        raise ValueError(
            f"Expected one subgraph and one signature; the file has {model_fb.SubgraphsLength()} "
            f"and {model_fb.SignatureDefsLength()} (MediaPipe's text tasks need one subgraph)."
        )
    signature = model_fb.SignatureDefs(0)
    inputs = {signature.Inputs(i).TensorIndex(): signature.Inputs(i).Name().decode()
              for i in range(signature.InputsLength())}
    subgraph = model_fb.Subgraphs(0)
    order = [subgraph.Inputs(i) for i in range(subgraph.InputsLength())]
    names = [inputs.get(index) for index in order]
    if sorted(n or "" for n in names) != sorted(INPUT_NAMES) or subgraph.OutputsLength() != 1:
        raise ValueError(
            f"Expected inputs {list(INPUT_NAMES)} and one output; the file has inputs {names} "
            f"and {subgraph.OutputsLength()} outputs."
        )
    return names


def _metadata_buffer(flatbuffer, num_labels, sequence_length):
    """The TFLite Model Metadata flatbuffer (bytes) of a classifier file."""
    import flatbuffers

    tflite_fb, metadata_fb = _schemas()
    names = _signature_io(tflite_fb.Model.GetRootAs(flatbuffer, 0))

    def tensor(name, description, files=None):
        metadata = metadata_fb.TensorMetadataT()
        metadata.name = name
        metadata.description = description
        metadata.content = metadata_fb.ContentT()
        metadata.content.contentPropertiesType = metadata_fb.ContentProperties.FeatureProperties
        metadata.content.contentProperties = metadata_fb.FeaturePropertiesT()
        metadata.stats = metadata_fb.StatsT()
        metadata.associatedFiles = files
        return metadata

    def associated_file(name, description, kind):
        file = metadata_fb.AssociatedFileT()
        file.name, file.description, file.type = name, description, kind
        return file

    labels = associated_file(LABELS_FILE, "Labels for categories that the model can recognize.",
                             metadata_fb.AssociatedFileType.TENSOR_AXIS_LABELS)
    output = tensor(OUTPUT_NAME, "Probabilities of the labels respectively.", [labels])
    output.stats.min, output.stats.max = [0.0], [1.0]
    tokenizer = metadata_fb.ProcessUnitT()
    tokenizer.optionsType = metadata_fb.ProcessUnitOptions.BertTokenizerOptions
    tokenizer.options = metadata_fb.BertTokenizerOptionsT()
    tokenizer.options.vocabFile = [associated_file(
        VOCAB_FILE, "WordPiece vocabulary (one token a line, id = line).",
        metadata_fb.AssociatedFileType.VOCABULARY)]
    subgraph = metadata_fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [tensor(n, _INPUT_DESCRIPTIONS[n]) for n in names]
    subgraph.outputTensorMetadata = [output]
    subgraph.inputProcessUnits = [tokenizer]
    model = metadata_fb.ModelMetadataT()
    model.name = "kbert BertClassifier"
    model.description = (
        f"Classifies text into {num_labels} categories; BERT WordPiece tokenizer "
        f"(uncased), {sequence_length} pieces including [CLS] and [SEP]."
    )
    model.author = "kbert"
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), METADATA_IDENTIFIER)
    return bytes(builder.Output())


def _with_metadata(flatbuffer, metadata):
    """`flatbuffer` with `metadata` stored as the "TFLITE_METADATA" buffer (replacing one)."""
    import flatbuffers

    tflite_fb, _ = _schemas()
    model = tflite_fb.ModelT.InitFromObj(tflite_fb.Model.GetRootAs(flatbuffer, 0))
    buffer = tflite_fb.BufferT(data=np.frombuffer(metadata, np.uint8))
    model.metadata = model.metadata or []
    model.buffers = model.buffers or []
    entry = next((m for m in model.metadata if m.name.decode() == METADATA_NAME), None)
    if entry is None:
        entry = tflite_fb.MetadataT()
        entry.name = METADATA_NAME
        model.metadata.append(entry)
        model.buffers.append(buffer)
        entry.buffer = len(model.buffers) - 1
    else:
        model.buffers[entry.buffer] = buffer
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def _with_associated_files(flatbuffer, files):
    """`flatbuffer` (bytes) with `files` (name -> bytes) appended as a stored zip archive."""
    content = io.BytesIO(flatbuffer)
    content.seek(0, io.SEEK_END)
    # Python's zipfile appends an archive to data that is not one, with
    # offsets that minizip (MediaPipe's reader) resolves from the end.
    with zipfile.ZipFile(content, "a", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return content.getbuffer()


def _lines(data, skip_empty):
    """Lines of an associated file as MediaPipe reads them ("\\n"-separated, "\\r" dropped)."""
    lines = [line.removesuffix("\r") for line in data.decode("utf-8").split("\n")]
    if skip_empty:  # vocabularies (mediapipe/tasks/cc/text/utils/vocab_utils.cc)
        return [line for line in lines if line]
    return lines[:-1] if lines and not lines[-1] else lines  # labels (label_map_util.cc)


def read_task_metadata(path):
    """Reads back and checks the metadata and associated files of a task-library classifier.

    Parses the file the way MediaPipe's `ModelMetadataExtractor`,
    `BertPreprocessorCalculator` and classification post-processing do, and
    checks what they require.

    Args:
        path: str, a `.tflite` file (e.g. from `export_task_classifier`).

    Returns:
        dict with `name`, `description`, `min_parser_version` (str);
        `inputs`: list of (metadata name, tensor name, shape tuple, TFLite
        type name) in subgraph input order; `sequence_length` (int);
        `output`: (metadata name, tensor name, shape, type name);
        `tokenizer`: the process unit's options type name (e.g.
        "BertTokenizerOptions"); `vocabulary` and `labels`: lists of str as
        MediaPipe reads them; `files`: dict associated file name -> bytes.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: not a TFLite flatbuffer; no "TFLITE_METADATA" buffer or
            one without the metadata identifier; inputs that are not int32
            `ids`, `mask`, `segment_ids` of one shape `(1, length)`; an output
            that is not float32; no BERT tokenizer process unit; an
            associated file missing from the zip archive, or stored
            compressed; a label count that is not the output's width, or a
            vocabulary size that is not the rows of the `ids` embedding table
            (each naming the file and the values).
    """
    tflite_fb, metadata_fb = _schemas()
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or not tflite_fb.Model.ModelBufferHasIdentifier(data, 0):
        raise ValueError(f"{path} is not a TFLite file (no 'TFL3' identifier).")
    model = tflite_fb.Model.GetRootAs(data, 0)
    entries = {model.Metadata(i).Name().decode(): model.Metadata(i).Buffer()
               for i in range(model.MetadataLength())}
    if METADATA_NAME not in entries:
        raise ValueError(
            f"{path} has no {METADATA_NAME} (it holds metadata {sorted(entries)}); MediaPipe's "
            "TextClassifier needs the tokenizer and labels there: use export_task_classifier."
        )
    buffer = model.Buffers(entries[METADATA_NAME])
    metadata_bytes = buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
    if len(metadata_bytes) < 8 or \
            not metadata_fb.ModelMetadata.ModelMetadataBufferHasIdentifier(metadata_bytes, 0):
        raise ValueError(f"{path}: the {METADATA_NAME} buffer is not TFLite Model Metadata.")
    metadata = metadata_fb.ModelMetadataT.InitFromObj(
        metadata_fb.ModelMetadata.GetRootAs(metadata_bytes, 0))
    sub = (metadata.subgraphMetadata or [None])[0]
    if sub is None or not sub.inputTensorMetadata or not sub.outputTensorMetadata:
        raise ValueError(f"{path}: the metadata describes no input and output tensors.")
    names = _signature_io(model)
    subgraph = model.Subgraphs(0)
    if len(sub.inputTensorMetadata) != subgraph.InputsLength() \
            or any(not m.name for m in sub.inputTensorMetadata + sub.outputTensorMetadata):
        raise ValueError(f"{path}: the metadata must name each of the "
                         f"{subgraph.InputsLength()} inputs and the output.")
    types = {v: k for k, v in vars(tflite_fb.TensorType).items() if not k.startswith("_")}

    def describe(tensor_metadata, index):
        tensor = subgraph.Tensors(index)
        return (tensor_metadata.name.decode(), tensor.Name().decode(),
                tuple(int(d) for d in tensor.ShapeAsNumpy()), types[tensor.Type()])

    inputs = [describe(m, subgraph.Inputs(i)) for i, m in enumerate(sub.inputTensorMetadata)]
    output = describe(sub.outputTensorMetadata[0], subgraph.Outputs(0))
    shapes = {shape for _, _, shape, _ in inputs}
    if sorted(n for n, *_ in inputs) != sorted(INPUT_NAMES) \
            or [n for n, *_ in inputs] != names or len(shapes) != 1 \
            or any(t != "INT32" for *_, t in inputs) or len(next(iter(shapes))) != 2 \
            or next(iter(shapes))[0] != 1:
        raise ValueError(
            f"{path}: MediaPipe's BERT classifier needs int32 inputs {list(INPUT_NAMES)} of one "
            f"shape (1, length) named by their signature; the file has {inputs}."
        )
    if output[3] != "FLOAT32":
        raise ValueError(f"{path}: the output {output} must be FLOAT32 probabilities.")
    units = sub.inputProcessUnits or []
    kinds = {v: k for k, v in vars(metadata_fb.ProcessUnitOptions).items() if not k.startswith("_")}
    if len(units) != 1 or units[0].optionsType != metadata_fb.ProcessUnitOptions.BertTokenizerOptions:
        raise ValueError(
            f"{path}: expected one BertTokenizerOptions input process unit; the file has "
            f"{[kinds[u.optionsType] for u in units]}."
        )
    vocab_files = units[0].options.vocabFile or []
    if not vocab_files or not vocab_files[0].name:
        raise ValueError(f"{path}: the BertTokenizerOptions name no vocabulary file.")
    vocab_name = vocab_files[0].name.decode()
    label_files = [f.name.decode() for f in sub.outputTensorMetadata[0].associatedFiles or []
                   if f.type == metadata_fb.AssociatedFileType.TENSOR_AXIS_LABELS]
    files = _associated_files(path, data)
    for name in [vocab_name] + label_files[:1]:
        if name not in files:
            raise ValueError(f"{path}: the metadata names {name}, which the file does not hold "
                             f"(it holds {sorted(files)}).")
    labels = _lines(files[label_files[0]], skip_empty=False) if label_files else []
    if labels and len(labels) != output[2][-1]:
        raise ValueError(f"{path}: {len(labels)} labels for an output of {output[2][-1]} classes.")
    vocabulary = _lines(files[vocab_name], skip_empty=True)
    rows = id_table_sizes(path).get(subgraph.Inputs(names.index("ids")))
    if rows is not None and rows != len(vocabulary):
        raise ValueError(f"{path}: {vocab_name} holds {len(vocabulary)} tokens but the `ids` "
                         f"embedding table has {rows} rows.")
    return {
        "name": metadata.name.decode() if metadata.name else None,
        "description": metadata.description.decode() if metadata.description else None,
        "min_parser_version": (metadata.minParserVersion.decode()
                               if metadata.minParserVersion else None),
        "inputs": inputs,
        "sequence_length": next(iter(shapes))[1],
        "output": output,
        "tokenizer": kinds[units[0].optionsType],
        "vocabulary": vocabulary,
        "labels": labels,
        "files": files,
    }


def _associated_files(path, data):
    """name -> bytes of the zip archive appended to a TFLite file (empty if none)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return {}
    with archive:
        compressed = [i.filename for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED]
        if compressed:
            raise ValueError(f"{path}: associated files {compressed} are compressed; MediaPipe "
                             "reads only stored (uncompressed) entries.")
        return {i.filename: archive.read(i) for i in archive.infolist()}
