"""Classify images with MediaPipe Tasks' ImageClassifier, the client phone apps use, and print JSON.

    python tests/mediapipe_client.py IMAGES.npy MODEL.tflite [MODEL.tflite ...]
    python tests/mediapipe_client.py IMAGES.txt MODEL.tflite [MODEL.tflite ...]

IMAGES.npy holds uint8 RGB images (n, h, w, 3); IMAGES.txt lists image files, one a line, that
MediaPipe decodes and resizes itself, as an app hands it a photo. Prints one JSON list, one entry
per model: {"scores": [[per class, in the model's output order] per image], "names": [category name per
class]} or {"error": "why MediaPipe refused the model"}, and "metadata": the model's metadata as
MediaPipe's own generated schema code reads it (enums by name), or null. Run in its own process:
MediaPipe brings its own TFLite runtime, which is best kept away from TensorFlow's.
"""

import json
import sys

# MediaPipe imports TensorFlow, when it is installed, only for documentation decorators (4 s).
# A phone has no TensorFlow: block it, so the model is used as an app would use it.
sys.modules["tensorflow"] = None

import mediapipe as mp  # noqa: E402
import numpy as np  # noqa: E402
from mediapipe.tasks.metadata import metadata_schema_py_generated as meta_fb  # noqa: E402
from mediapipe.tasks.metadata import schema_py_generated as tflite_fb  # noqa: E402
from mediapipe.tasks.python import BaseOptions, vision  # noqa: E402

# Object-API field -> the schema enum whose value it holds.
ENUMS = {"contentPropertiesType": meta_fb.ContentProperties, "colorSpace": meta_fb.ColorSpaceType,
         "optionsType": meta_fb.ProcessUnitOptions, "type": meta_fb.AssociatedFileType}


def classify(model: str, images) -> dict:
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=model), max_results=-1)
    try:
        classifier = vision.ImageClassifier.create_from_options(options)
    except Exception as error:  # MediaPipe raises RuntimeError/ValueError with its status message
        return {"error": str(error)}
    scores, names = [], {}
    with classifier:
        for image in images:
            if isinstance(image, str):
                image = mp.Image.create_from_file(image)
            else:
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
            result = classifier.classify(image)
            categories = result.classifications[0].categories
            row = [0.0] * len(categories)
            for category in categories:
                row[category.index] = category.score
                names[category.index] = category.category_name
            scores.append(row)
    return {"scores": scores, "names": [names[i] for i in sorted(names)]}


def metadata(model: str):
    """The TFLITE_METADATA of `model` as plain JSON, parsed by the schema's generated code."""
    data = open(model, "rb").read()
    root = tflite_fb.Model.GetRootAs(data, 0)
    for i in range(root.MetadataLength()):
        if root.Metadata(i).Name() == b"TFLITE_METADATA":
            buffer = root.Buffers(root.Metadata(i).Buffer()).DataAsNumpy().tobytes()
            if not meta_fb.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0):
                return {"identifier": buffer[4:8].decode("latin-1")}
            return plain(meta_fb.ModelMetadataT.InitFromObj(meta_fb.ModelMetadata.GetRootAs(buffer, 0)))
    return None


def plain(value, field=None):
    if field in ENUMS and isinstance(value, int):
        return next(k for k, v in vars(ENUMS[field]).items() if v == value and not k.startswith("_"))
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [plain(item) for item in value]
    if hasattr(value, "__dict__"):
        return {k: plain(v, k) for k, v in vars(value).items() if v is not None}
    return value


if __name__ == "__main__":
    if sys.argv[1].endswith(".txt"):
        pixels = [line for line in open(sys.argv[1], encoding="utf-8").read().splitlines() if line]
    else:
        pixels = np.load(sys.argv[1])
    print(json.dumps([{**classify(path, pixels), "metadata": metadata(path)} for path in sys.argv[2:]]))
