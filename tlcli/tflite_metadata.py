"""TFLite model metadata for image classifiers, so that MediaPipe Tasks and the TFLite Task Library
load tlcli's .tflite files as they are, with class names.

The metadata follows the public schema (tflite-support / MediaPipe `metadata_schema.fbs`, file
identifier "M001"): a flatbuffer stored as one of the model's buffers, named "TFLITE_METADATA" in
the model's `metadata` list, with the labels appended to the model as a zip archive (the model
file is also a valid zip holding labels.txt), as tflite-support's MetadataPopulator does.
A multi-label model also carries its thresholds: thresholds.json in the same archive, named as
an associated file of the model, so a lone .tflite knows which of its labels an image carries.

tflite-support needs protobuf < 4, which TensorFlow 2.21 excludes, and MediaPipe 1.x's writers
fail to import (their native module is missing from its wheels), so the few tables needed are
written here with `flatbuffers`. Reading needs only `flatbuffers` and `zipfile`, never TensorFlow.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path
from typing import Sequence

import flatbuffers
import numpy as np
from flatbuffers import number_types
from flatbuffers.table import Table

METADATA_NAME = "TFLITE_METADATA"
LABELS_FILE = "labels.txt"
THRESHOLDS_FILE = "thresholds.json"  # a multi-label model's {"labels": [...], "thresholds": [...]}
# Every table and field written below exists since schema 1.0.0; a parser must be at least this.
MIN_PARSER_VERSION = "1.0.0"

# Enum values and union indices of metadata_schema.fbs.
_TENSOR_AXIS_LABELS = 2
_RGB = 1
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2
_NORMALIZATION_OPTIONS = 1
# TensorType values of the TFLite schema.
_FLOAT32, _UINT8 = 0, 3


def add_metadata(model: bytes, labels: Sequence[str], *, name: str, description: str = "",
                 version: str = "", author: str = "", license: str = "",
                 mean: float = 0.0, std: float = 1.0, thresholds: Sequence[float] | None = None) -> bytes:
    """The .tflite `model` with image-classifier metadata and `labels` as its labels file.

    `mean` and `std` say how the model's float input relates to 0..255 RGB pixels: clients feed
    (pixel - mean) / std. tlcli's models take raw pixels, hence 0 and 1. A uint8 input takes the
    pixels as they are (its quantization is in the tensor); the same mean and std are written for
    it, as the schema asks of quantized models. `thresholds` (one per label, 0..1) marks a
    multi-label model: its outputs are independent probabilities and a label applies at or above
    its threshold; they go into THRESHOLDS_FILE. Any metadata and files already in `model` are
    replaced. Raises ValueError when `model` is not a one-image-in, one-vector-out classifier with
    len(labels) classes.
    """
    if bytes(model[4:8]) != b"TFL3":
        raise ValueError("not a TFLite model (no TFL3 file identifier).")
    schema = _tflite_schema()
    root = schema.ModelT.InitFromObj(schema.Model.GetRootAs(bytes(model), 0))
    in_type, out_type = _check_classifier(root, labels, std)
    if thresholds is not None and (len(thresholds) != len(labels) or not all(0.0 <= t <= 1.0 for t in thresholds)):
        raise ValueError(f"thresholds must be {len(labels)} numbers between 0 and 1, one per label.")
    # Stats: the values the tensor holds for pixels 0..255 (float: normalized, as MediaPipe's
    # writer records them) and for the scores (probabilities, or their uint8 quantization).
    input_range = ([0.0], [255.0]) if in_type == _UINT8 else ([(0.0 - mean) / std], [(255.0 - mean) / std])
    output_range = ([0.0], [255.0]) if out_type == _UINT8 else ([0.0], [1.0])
    meta = _metadata_buffer(len(labels), name=name, description=description, version=version,
                            author=author, license=license, mean=mean, std=std,
                            input_range=input_range, output_range=output_range,
                            multi_label=thresholds is not None)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(meta, np.uint8)
    entries = [m for m in (root.metadata or []) if m.name.decode() == METADATA_NAME]
    if entries:
        root.buffers[entries[0].buffer] = buffer
    else:
        root.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = METADATA_NAME, len(root.buffers) - 1
        root.metadata = [*(root.metadata or []), entry]
    root.buffers = [_Aligned(b) for b in root.buffers]
    builder = flatbuffers.Builder(len(model) + len(meta) + 1024)
    builder.Finish(root.Pack(builder), file_identifier=b"TFL3")

    out = io.BytesIO(bytes(builder.Output()))
    out.seek(0, io.SEEK_END)
    # Stored, not deflated: the clients' zip readers expect it, as tflite-support writes it.
    with zipfile.ZipFile(out, "a", zipfile.ZIP_STORED) as archive:
        archive.writestr(LABELS_FILE, "\n".join(labels) + "\n")
        if thresholds is not None:
            archive.writestr(THRESHOLDS_FILE, json.dumps({"labels": list(labels),
                                                          "thresholds": [float(t) for t in thresholds]}))
    return out.getvalue()


def read_metadata(source: bytes | str | Path) -> dict | None:
    """The image-classifier metadata of a .tflite (bytes or path), or None when it has none.

    {"name", "description", "version", "author", "license", "min_parser_version",
     "input": {"name", "color_space", "mean", "std", "min", "max"},
     "output": {"name", "description", "min", "max", "labels_file"}, "files": [model-level associated
     files]}; lists are per channel.
    """
    data = _bytes(source)
    try:
        meta = _metadata_root(data)
        if meta is None:
            return None
        result = {key: meta.string(slot) for slot, key in ((0, "name"), (1, "description"), (2, "version"),
                                                            (4, "author"), (5, "license"), (7, "min_parser_version"))}
        subgraph = (meta.tables(3) or [_Node()])[0]
        for key, slot in (("input", 2), ("output", 3)):
            tensors = subgraph.tables(slot)
            result[key] = _tensor(tensors[0]) if tensors else None
        result["files"] = [f.string(0) for f in meta.tables(6)]  # ModelMetadata.associated_files
        return result
    except (IndexError, struct.error, UnicodeDecodeError):  # too damaged to tell: as good as none
        return None


def has_metadata(source: bytes | str | Path) -> bool:
    """Whether a .tflite (bytes or path) carries TFLite metadata."""
    return read_metadata(source) is not None


def read_labels(source: bytes | str | Path) -> list[str] | None:
    """The class names of a .tflite (bytes or path) from its metadata's labels file, or None."""
    data = _bytes(source)
    meta = read_metadata(data)
    text = _packed_file(data, ((meta or {}).get("output") or {}).get("labels_file"))
    if text is None:
        return None
    # MediaPipe's reading: one label a line, a final newline ends the last one.
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def read_thresholds(source: bytes | str | Path) -> list[float] | None:
    """A multi-label .tflite's threshold per label (bytes or path), or None: a single-label model,
    or one without tlcli's metadata."""
    data = _bytes(source)
    meta = read_metadata(data)
    if THRESHOLDS_FILE not in (meta or {}).get("files", []):
        return None
    try:
        thresholds = json.loads(_packed_file(data, THRESHOLDS_FILE) or "null")["thresholds"]
    except (ValueError, TypeError, KeyError):
        return None
    return thresholds if isinstance(thresholds, list) else None


def _packed_file(data: bytes, name: str | None) -> str | None:
    """The text of file `name` in the zip archive a .tflite carries, or None."""
    if not name:
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return archive.read(name).decode("utf-8")
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError):
        return None


# ---------------------------------------------------------------- writing


def _tflite_schema():
    """The TFLite schema's generated Python module: LiteRT's, else TensorFlow's."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        from tensorflow.lite.python import schema_py_generated
    return schema_py_generated


def _check_classifier(root, labels: Sequence[str], std: float) -> tuple[int, int]:
    """The input and output tensor types, once the model and labels are known to fit."""
    if std == 0:
        raise ValueError("std must not be 0.")
    if not labels or any(not label or "\n" in label or "\r" in label for label in labels):
        raise ValueError("labels must be non-empty names without line breaks.")
    if len(root.subgraphs or []) != 1:
        raise ValueError(f"expected one subgraph, found {len(root.subgraphs or [])}.")
    graph = root.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError(f"expected one input and one output, found {len(graph.inputs)} and {len(graph.outputs)}.")
    image, scores = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    if image.type not in (_FLOAT32, _UINT8) or len(image.shape) != 4 or image.shape[-1] != 3:
        raise ValueError("the input must be a float32 or uint8 tensor of shape (1, height, width, 3).")
    if scores.shape[-1] != len(labels):
        raise ValueError(f"the model has {scores.shape[-1]} classes, but {len(labels)} labels were given.")
    # Models over 2 GB keep weights after the flatbuffer, at `offset` (valid only above 1).
    if any(b.offset > 1 for b in root.buffers):
        raise ValueError("models with buffers outside the flatbuffer are not supported.")
    return image.type, scores.type


class _Aligned:
    """Packs a BufferT with its data 16-byte aligned, as the TFLite schema asks (force_align: 16)
    and the converter writes it; the generated Python code aligns to 1 byte only."""

    def __init__(self, buffer):
        self.buffer = buffer

    def Pack(self, builder):  # noqa: N802 (the generated code's name)
        if self.buffer.data is not None and len(self.buffer.data):
            builder.Prep(16, len(self.buffer.data))
        return self.buffer.Pack(builder)


def _metadata_buffer(classes: int, *, name, description, version, author, license, mean, std,
                     input_range, output_range, multi_label: bool = False) -> bytes:
    """The ModelMetadata flatbuffer; slot numbers are field positions in metadata_schema.fbs
    (a union takes two: its type, then its value)."""
    b = flatbuffers.Builder(1024)

    def table(fields):  # fields: (slot, kind, value); unset values are left out
        offsets = [(s, k, v) for s, k, v in fields if v is not None]
        b.StartObject(max((s for s, _, _ in fields), default=-1) + 1)
        for slot, kind, value in offsets:
            if kind == "u8":
                b.PrependUint8Slot(slot, value, 0)
            else:
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
        return b.EndObject()

    def vector(items, kind="offset"):
        b.StartVector(4, len(items), 4)
        for item in reversed(items):
            b.PrependFloat32(item) if kind == "float" else b.PrependUOffsetTRelative(item)
        return b.EndVector()

    def string(text):
        return b.CreateString(text) if text else None

    def stats(low, high):  # Stats {max, min}
        return table([(0, "o", vector(high, "float")), (1, "o", vector(low, "float"))])

    # Input: ImageProperties (RGB), NormalizationOptions, Stats.
    image_properties = table([(0, "u8", _RGB)])
    image_content = table([(0, "u8", _IMAGE_PROPERTIES), (1, "o", image_properties)])
    normalization = table([(0, "o", vector([float(mean)], "float")), (1, "o", vector([float(std)], "float"))])
    process_unit = table([(0, "u8", _NORMALIZATION_OPTIONS), (1, "o", normalization)])
    image = table([(0, "o", string("image")), (1, "o", string("Input image to be classified.")),
                   (3, "o", image_content), (4, "o", vector([process_unit])),
                   (5, "o", stats(*input_range))])
    # Output: FeatureProperties, Stats, the labels file.
    labels_file = table([(0, "o", string(LABELS_FILE)),
                         (1, "o", string("Labels for categories that the model can recognize.")),
                         (2, "u8", _TENSOR_AXIS_LABELS)])
    feature_content = table([(0, "u8", _FEATURE_PROPERTIES), (1, "o", table([]))])
    meaning = (f"Independent probabilities of the {classes} labels respectively; a label applies when its "
               f"probability reaches its threshold, listed in {THRESHOLDS_FILE}." if multi_label else
               f"Probabilities of the {classes} labels respectively.")
    scores = table([(0, "o", string("probability")), (1, "o", string(meaning)),
                    (3, "o", feature_content), (5, "o", stats(*output_range)),
                    (6, "o", vector([labels_file]))])
    subgraph = table([(2, "o", vector([image])), (3, "o", vector([scores]))])
    # Model-level, where MediaPipe's classifier does not look for labels or score calibration.
    files = vector([table([(0, "o", string(THRESHOLDS_FILE)),
                           (1, "o", string("Multi-label: the threshold of each label, in label order."))])]) \
        if multi_label else None
    root = table([(0, "o", string(name)), (1, "o", string(description)), (2, "o", string(version)),
                  (3, "o", vector([subgraph])), (4, "o", string(author)), (5, "o", string(license)),
                  (6, "o", files), (7, "o", string(MIN_PARSER_VERSION))])
    b.Finish(root, file_identifier=b"M001")
    return bytes(b.Output())


# ---------------------------------------------------------------- reading (no TensorFlow)


def _bytes(source: bytes | str | Path) -> bytes:
    return bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).read_bytes()


class _Node:
    """A flatbuffer table read by field slot, as in `_metadata_buffer`. A missing table reads
    as empty, so optional fields need no checks."""

    def __init__(self, table: Table | None = None):
        self.t = table

    def _o(self, slot: int) -> int:
        return self.t.Offset(4 + 2 * slot) if self.t is not None else 0

    def u8(self, slot: int) -> int:
        o = self._o(slot)
        return self.t.Bytes[self.t.Pos + o] if o else 0

    def u32(self, slot: int) -> int:
        o = self._o(slot)
        return self.t.Get(number_types.Uint32Flags, self.t.Pos + o) if o else 0

    def string(self, slot: int) -> str | None:
        o = self._o(slot)
        return self.t.String(self.t.Pos + o).decode("utf-8") if o else None

    def table(self, slot: int) -> _Node:
        o = self._o(slot)
        return _Node(Table(self.t.Bytes, self.t.Indirect(self.t.Pos + o)) if o else None)

    def tables(self, slot: int) -> list[_Node]:
        o = self._o(slot)
        start, n = (self.t.Vector(o), self.t.VectorLen(o)) if o else (0, 0)
        return [_Node(Table(self.t.Bytes, self.t.Indirect(start + 4 * i))) for i in range(n)]

    def floats(self, slot: int) -> list[float] | None:
        o = self._o(slot)
        return list(struct.unpack_from(f"<{self.t.VectorLen(o)}f", self.t.Bytes, self.t.Vector(o))) if o else None

    def bytes(self, slot: int) -> bytes:
        o = self._o(slot)
        start = self.t.Vector(o) if o else 0
        return bytes(self.t.Bytes[start:start + self.t.VectorLen(o)]) if o else b""


def _root(data: bytes, identifier: bytes) -> _Node | None:
    if len(data) < 8 or data[4:8] != identifier:
        return None
    return _Node(Table(data, int.from_bytes(data[:4], "little")))


def _metadata_root(data: bytes) -> _Node | None:
    """The ModelMetadata table of a .tflite, or None."""
    model = _root(data, b"TFL3")
    # Model {version, operator_codes, subgraphs, description, buffers, metadata_buffer, metadata}
    buffers = model.tables(4) if model else []
    for entry in model.tables(6) if model else []:  # Metadata {name, buffer}
        if entry.string(0) == METADATA_NAME and entry.u32(1) < len(buffers):
            return _root(buffers[entry.u32(1)].bytes(0), b"M001")  # Buffer {data, ...}
    return None


def _tensor(t: _Node) -> dict:
    """A TensorMetadata as a dict."""
    normalization = next((unit.table(1) for unit in t.tables(4)  # ProcessUnit {options_type, options}
                          if unit.u8(0) == _NORMALIZATION_OPTIONS), _Node())
    content, stats = t.table(3), t.table(5)
    image = content.table(1) if content.u8(0) == _IMAGE_PROPERTIES else None
    labels = [f.string(0) for f in t.tables(6) if f.u8(2) == _TENSOR_AXIS_LABELS]
    return {"name": t.string(0), "description": t.string(1),
            "color_space": {0: "UNKNOWN", 1: "RGB", 2: "GRAYSCALE"}.get(image.u8(0)) if image else None,
            "mean": normalization.floats(0), "std": normalization.floats(1),
            "min": stats.floats(1), "max": stats.floats(0), "labels_file": labels[0] if labels else None}
