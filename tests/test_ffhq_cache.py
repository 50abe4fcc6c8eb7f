"""The decoded FFHQ cache: written once, mapped afterwards, keyed by the source's content, rebuilt
when the source changes or the cache file is damaged."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from tiwbench.data import ffhq


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def source(tmp_path, monkeypatch):
    monkeypatch.delenv(ffhq.DECODED_CACHE_ENV, raising=False)
    root = tmp_path / "faces"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        (root / f"{i:05d}.png").write_bytes(_png(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)))
    return root, {f"{i:05d}": i % 2 for i in range(12)}


def test_decoded_once_then_mapped(source, monkeypatch):
    root, wanted = source
    ref = ffhq.read_images(root, wanted, 8)  # the plain decode, as before the cache
    first = ffhq.cached_images(root, wanted, 8)
    cache = ffhq.decoded_cache_dir(root)
    assert cache == root.with_name("faces.decoded") and len(list(cache.glob("*.npy"))) == 1

    def no_decode(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(ffhq, "_decode", no_decode)
    again = ffhq.cached_images(root, wanted, 8)
    assert isinstance(again[0], np.memmap) and not again[0].flags.writeable
    for a, b, c in zip(ref, first, again, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_changed_source_or_resolution_is_a_new_entry(source):
    root, wanted = source
    ffhq.cached_images(root, wanted, 8)
    ffhq.cached_images(root, wanted, 4)
    img = root / "00003.png"
    img.write_bytes(_png(np.zeros((16, 16, 3), dtype=np.uint8)))
    os.utime(img, ns=(1, 1))  # even with an old mtime: the size changed
    new = ffhq.cached_images(root, wanted, 8)
    assert len(list(ffhq.decoded_cache_dir(root).glob("*.npy"))) == 3
    assert not new[0][3].any()  # the new content, not the cached one
    ffhq.cached_images(root, {**wanted, "00000": 1}, 8)  # a relabelled image
    assert len(list(ffhq.decoded_cache_dir(root).glob("*.npy"))) == 4


def test_damaged_cache_is_moved_aside_and_rebuilt(source, capsys):
    root, wanted = source
    ref = ffhq.cached_images(root, wanted, 8)
    (npy,) = ffhq.decoded_cache_dir(root).glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:-100])
    again = ffhq.cached_images(root, wanted, 8)
    np.testing.assert_array_equal(again[0], ref[0])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: damaged decoded image cache {npy}")
    assert len(list(npy.parent.glob("*.corrupt-*"))) == 2  # the array and its sidecar


def test_bit_flip_in_the_cache_is_caught_by_its_content_hash(source, capsys):
    root, wanted = source
    ref = ffhq.cached_images(root, wanted, 8)
    (npy,) = ffhq.decoded_cache_dir(root).glob("*.npy")
    data = bytearray(npy.read_bytes())
    data[-50] ^= 0x10  # one bit of one pixel: shape, size and header unchanged
    npy.write_bytes(bytes(data))
    again = ffhq.cached_images(root, wanted, 8)
    np.testing.assert_array_equal(again[0], ref[0])  # rebuilt from the source, not the flipped copy
    assert "sha256" in capsys.readouterr().err
    assert len(list(npy.parent.glob("*.corrupt-*"))) == 2


def test_cache_files_follow_the_umask(source):
    root, wanted = source
    old = os.umask(0o002)  # a group-shared cache
    try:
        ffhq.cached_images(root, wanted, 8)
    finally:
        os.umask(old)
    files = list(ffhq.decoded_cache_dir(root).iterdir())
    assert len(files) == 2 and all(f.stat().st_mode & 0o777 == 0o664 for f in files), \
        [oct(f.stat().st_mode) for f in files]
    old = os.umask(0o077)  # a private one
    try:
        ffhq.cached_images(root, wanted, 4)
    finally:
        os.umask(old)
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in ffhq.decoded_cache_dir(root).glob("*4px*"))


def test_another_users_cache_file_is_an_error_naming_it_never_damage(source, monkeypatch):
    from tiwbench.integrity import Unreadable

    root, wanted = source
    ffhq.cached_images(root, wanted, 8)
    (npy,) = ffhq.decoded_cache_dir(root).glob("*.npy")

    def denied(path, *a, **k):  # what np.load raises on a 0600 file of another user (root reads anything)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(np, "load", denied)
    with pytest.raises(Unreadable, match=str(npy)):
        ffhq.cached_images(root, wanted, 8)
    assert npy.exists() and not list(npy.parent.glob("*.corrupt-*"))  # the valid file is left alone
