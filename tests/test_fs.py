"""Local paths and URLs of TensorFlow's file systems, tested on its in-memory `ram://` one."""

import os
import uuid
from pathlib import Path

import pytest

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
