"""model.json: what an app needs to feed the exported models and read their output without guessing.

One file per export folder: input size, range, colour order and layout, the labels, and per
exported file its tensor types, shapes and quantization (read back from the file itself).
"""

from __future__ import annotations

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
        "source": str(ref.path),
        "files": dict(sorted(entries.items())),
    }
    write_json(previous, info)
    return info


def _file_entry(name: str, path: Path, size: int) -> dict:
    fmt = FORMATS[name]
    entry = {"format": name, "description": fmt.description}
    if fmt.kind == "savedmodel":
        entry.update({"signature": "serving_default", "input": "image: float32 [batch, height, width, 3], any size",
                      "output": "probabilities"})
        return entry
    interpreter = tflite_interpreter(path)
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    for key, tensor in (("input", inp), ("output", outp)):
        scale, zero_point = tensor["quantization"]
        entry[f"{key}_dtype"] = np.dtype(tensor["dtype"]).name
        entry[f"{key}_shape"] = [int(d) for d in tensor["shape"]]
        if scale:
            entry[f"{key}_quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return entry
