"""model.json: what an app needs to feed the exported models and read their output without guessing.

One file per export folder: input size, range, colour order and layout, the labels, and per
exported file its tensor types, shapes, ranges and quantization, whether it carries metadata
(TFLite metadata; labels in a .onnx), its size and SHA-256, all read back from the file itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from tlcli import __version__
from tlcli.convert import FORMATS
from tlcli.rundir import ModelRef, write_json
from tlcli.runtime import tflite_interpreter


def write_model_json(out: Path, ref: ModelRef, config: dict, files: dict[str, Path]) -> dict:
    """model.json: what an app needs to feed the models and read their output without guessing.

    Entries for files exported earlier into the same folder are kept while those files exist.
    """
    size = ref.image_size
    entries = {}
    previous = out / "model.json"
    if previous.is_file():
        try:
            old = json.loads(previous.read_text(encoding="utf-8"))
            if old.get("labels") == ref.labels and old.get("input_size") == size:
                entries = {k: v for k, v in old.get("files", {}).items() if (out / k).exists()}
        except (OSError, json.JSONDecodeError, AttributeError):
            pass
    for name, path in files.items():
        entries[path.name] = _file_entry(name, path, size)
    info = {
        "tlcli_version": __version__,
        "backbone": config.get("backbone", "unknown"),
        "input_size": size,
        "input_shape": [1, size, size, 3],
        "input_range": [0, 255],
        "input_color": "RGB",
        "input_layout": "NHWC",
        "preprocessing": "inside the model: feed raw RGB pixels resized to input_size, no scaling",
        "output": "softmax probabilities, one per label, in labels order",
        "labels": list(ref.labels),
        **(_multi_label(ref) if ref.multi_label else {}),
        "source": str(ref.path),
        "files": dict(sorted(entries.items())),
    }
    write_json(previous, info)
    return info


def _multi_label(ref: ModelRef) -> dict:
    """A multi-label model's keys: its outputs are independent, and the threshold of each label."""
    return {"output": "independent (sigmoid) probabilities, one per label, in labels order; an image has every "
                      "label whose probability is at or above that label's threshold",
            "multi_label": True, "thresholds": list(ref.thresholds)}


def _file_entry(name: str, path: Path, size: int) -> dict:
    from tlcli.tflite_metadata import has_metadata

    fmt = FORMATS[name]
    entry = {"format": name, "description": fmt.description}
    if fmt.kind == "savedmodel":
        entry.update({"signature": "serving_default", "input": "image: float32 [batch, height, width, 3], any size",
                      "input_range": [0.0, 255.0], "output": "probabilities", "output_range": [0.0, 1.0],
                      "metadata": False})
    elif fmt.kind == "onnx":
        from tlcli.onnx_format import describe

        entry.update(describe(path))
        entry.update({"input_range": [0.0, 255.0], "output_range": [0.0, 1.0]})
    else:
        interpreter = tflite_interpreter(path, threads=1)
        (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
        # Ranges in the tensor's own values: pixels 0..255 in, probabilities 0..1 out.
        for key, tensor, (low, high) in (("input", inp, (0.0, 255.0)), ("output", outp, (0.0, 1.0))):
            scale, zero_point = tensor["quantization"]
            dtype = np.dtype(tensor["dtype"])
            entry[f"{key}_dtype"] = dtype.name
            entry[f"{key}_shape"] = [int(d) for d in tensor["shape"]]
            entry[f"{key}_range"] = [low, high]
            if scale:
                entry[f"{key}_quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
                info = np.iinfo(dtype)
                entry[f"{key}_range"] = [int(np.clip(round(v / scale + zero_point), info.min, info.max))
                                         for v in (low, high)]
        entry["metadata"] = has_metadata(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    entry["size_bytes"] = sum(p.stat().st_size for p in files)
    if path.is_dir():  # a SavedModel folder: one digest per file
        entry["sha256"] = {p.relative_to(path).as_posix(): _sha256(p) for p in files}
    else:
        entry["sha256"] = _sha256(path)
    return entry


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
