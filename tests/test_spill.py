"""DiskArray: a file-backed array that behaves like the numpy array it stands for."""

import numpy as np

from tlcli.spill import DiskArray


def test_a_stacked_array_reads_and_writes_like_numpy(tmp_path):
    reference = np.random.default_rng(0).normal(size=(3, 7, 2, 2)).astype(np.float32)
    disk = DiskArray.stacked(tmp_path / "a.bin", 3, 7, (2, 2), np.float32)
    for v in range(3):
        disk[v][np.arange(7)] = reference[v]
    assert disk.shape == (3, 7, 2, 2) and np.array_equal(np.asarray(disk), reference)
    assert np.array_equal(disk[1][2:5], reference[1, 2:5]) and np.array_equal(disk[2][[6, 0]], reference[2, [6, 0]])
    views, rows = np.array([2, 0, 1, 1]), np.array([0, 3, 4, 6])
    assert np.array_equal(disk[views, rows], reference[views, rows])
    disk[1][[3]] = np.zeros((1, 2, 2))
    reference[1, 3] = 0
    assert np.array_equal(np.asarray(disk[1]), reference[1])


def test_compact_keeps_the_chosen_rows_of_every_view_in_order(tmp_path):
    reference = np.arange(2 * 6 * 3, dtype=np.int32).reshape(2, 6, 3)
    disk = DiskArray.stacked(tmp_path / "a.bin", 2, 6, (3,), np.int32)
    for v in range(2):
        disk[v][np.arange(6)] = reference[v]
    kept = disk.compact([1, 2, 5])
    assert kept.shape == (2, 3, 3) and np.array_equal(np.asarray(kept), reference[:, [1, 2, 5]])
    flat = DiskArray(tmp_path / "b.bin", (4, 3), np.int32)
    flat[np.arange(4)] = reference[0, :4]
    assert np.array_equal(np.asarray(flat.compact([0, 3])), reference[0, [0, 3]])
