"""Local paths and URLs of TensorFlow's file systems, tested on its in-memory `ram://` one.

ram:// lives in this process's memory, so everything here runs in-process (the `cli` fixture)."""

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import make_folder
from tlcli import fs


def copy_to_ram(local: Path, name: str = "data") -> str:
    """A copy of the local folder `local` at a fresh ram:// URL, folders made as `gsutil cp -r`
    makes prefixes (ram:// lists a folder only once it is made)."""
    import tensorflow as tf

    url = f"ram://tlcli-test-{uuid.uuid4().hex[:8]}/{name}"
    for root, dirs, files in os.walk(local):
        target = "/".join([url, *Path(root).relative_to(local).parts])
        tf.io.gfile.makedirs(target)
        for file in files:
            tf.io.gfile.copy(os.path.join(root, file), f"{target}/{file}", overwrite=True)
    return url


def test_urls_stay_strings_and_local_paths_stay_paths():
    assert fs.is_url("gs://bucket/flowers") and fs.is_url("ram://x") and not fs.is_url("flowers/gs:x")
    assert not fs.is_url(Path("ram://x"))  # pathlib has already made it ram:/x
    assert fs.as_path("gs://b/flowers") == "gs://b/flowers" and fs.as_path("a/b") == Path("a/b")
    assert fs.join("gs://b/flowers/", "roses", "1.jpg") == "gs://b/flowers/roses/1.jpg"
    assert fs.join("a", "b") == Path("a/b")
    assert fs.name("gs://b/flowers/") == "flowers" and fs.name(Path("a/b.jpg")) == "b.jpg"


def test_listing_a_url_gives_what_listing_the_local_folder_gives(tmp_path):
    local = tmp_path / "d"
    for name in ("a/x.jpg", "a/deep/y.PNG", "a/notes.txt", "a/.hidden/z.jpg", "top.png"):
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(b"1")
    (local / "empty").mkdir()
    url = copy_to_ram(local)
    assert fs.listdir(url) == fs.listdir(local) == (["a", "empty"], ["top.png"])
    assert fs.listdir(fs.join(url, "a"), (".jpg",)) == fs.listdir(local / "a") == ([".hidden", "deep"],
                                                                                   ["notes.txt", "x.jpg"])
    local_walk = [(Path(r).relative_to(local).as_posix(), d, f) for r, d, f in os.walk(local)]
    url_walk = [(r[len(url) + 1:] or ".", d, f) for r, d, f in fs.walk(url)]
    assert sorted(url_walk) == sorted((r, sorted(d), sorted(f)) for r, d, f in local_walk)
    assert fs.is_dir(url) and not fs.is_dir(fs.join(url, "top.png")) and fs.exists(fs.join(url, "top.png"))
    assert fs.read_bytes(fs.join(url, "a", "x.jpg")) == b"1"
    assert fs.glob(f"{url}/a/*.jpg") == [f"{url}/a/x.jpg"]


def test_a_missing_url_is_python_file_not_found():
    url = f"ram://tlcli-test-{uuid.uuid4().hex[:8]}/missing.jpg"
    assert not fs.is_dir(url) and not fs.exists(url) and fs.glob(url + "*") == []
    for call in (fs.read_bytes, fs.listdir):
        with pytest.raises(FileNotFoundError):
            call(url)


def test_a_store_out_of_reach_is_an_os_error_with_its_message(monkeypatch):
    import tensorflow as tf

    def unavailable(path):
        raise tf.errors.UnavailableError(None, None, "Could not resolve host:\n  storage.googleapis.com")

    monkeypatch.setattr(tf.io.gfile, "isdir", unavailable)
    with pytest.raises(OSError, match="^Could not resolve host: storage.googleapis.com$") as error:
        fs.is_dir("gs://bucket/flowers")
    assert not isinstance(error.value, FileNotFoundError)


def test_local_paths_never_import_tensorflow(image_folder):
    script = textwrap.dedent("""
        import json, sys
        from tlcli.data import expand_path, find_folder, load_folder
        from tlcli.images import load_image
        folder = find_folder(sys.argv[1])
        load_folder(sys.argv[1], 16)
        load_image(folder.train.paths[0], 16)
        expand_path(sys.argv[1] + "/*/*.png")
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))))
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(image_folder)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


@pytest.mark.slow
def test_train_on_a_url_and_predict_its_images(cli, tmp_path):
    from tlcli.images import load_image
    from tlcli.predict import classify
    from tlcli.rundir import resolve_model
    from tlcli.runtime import open_model

    local = make_folder(tmp_path / "local", per_class=6, size=32)
    url = copy_to_ram(local)
    result = cli(["train", url, "--backbone", "tiny", "--weights", "none", "--image-size", 32, "--epochs", 1,
                  "--fine-tune-epochs", 1, "--batch-size", 8, "--project", tmp_path / "runs", "--json", "-q"])
    assert result.exit_code == 0, result.output
    run = Path(json.loads(result.stdout)["run_dir"])
    config = json.loads((run / "config.json").read_text())
    assert config["data_dir"] == url
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_val"] == 18, metrics

    runner = open_model(resolve_model(str(run)))
    names = [f"{c}/{c}_{i}.{'png' if i % 2 else 'jpg'}" for c in ("bright", "dark", "striped") for i in range(6)]
    from_url, errors = classify(runner, [f"{url}/{n}" for n in names], batch_size=8)
    from_disk, _ = classify(runner, [str(local / n) for n in names], batch_size=8)
    assert errors == {}
    np.testing.assert_allclose(from_url, from_disk, atol=1e-6)
    assert (load_image(f"{url}/{names[0]}", 32) == load_image(local / names[0], 32)).all()

    result = cli(["predict", f"{url}/dark", f"{url}/*/*_1.png", "--model", run, "-f", "json", "-q"])
    assert result.exit_code == 0, result.output
    rows = {r["path"]: r for r in json.loads(result.stdout)}
    expected = [f"{url}/dark/dark_{i}.{'png' if i % 2 else 'jpg'}" for i in range(6)]
    expected += [f"{url}/{c}/{c}_1.png" for c in ("bright", "striped")]  # dark_1.png is listed once
    assert sorted(rows) == sorted(expected) and not any(r["error"] for r in rows.values())
    for path, row in rows.items():
        assert row["confidence"] == pytest.approx(float(from_url[names.index(path[len(url) + 1:])].max()), abs=1e-5)
