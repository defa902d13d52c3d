"""EmbeddingCache: encode_image's outputs by dataset index, each image encoded once."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import sam_jax
from sam_jax.projects.shapes.synthetic import scene
from sam_jax.train.embedding_cache import EmbeddingCache

SIZE = 64


@pytest.fixture(scope="module", params=["sam_tiny_shapes", "sam2_tiny_shapes"])
def bundled(request):
    return sam_jax.load(request.param, image_size=SIZE)


class Images:
    """images_of for synthetic scenes: normalised (N, 64, 64, 3), logging what is asked."""

    def __init__(self):
        self.asked: list[list[int]] = []

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        self.asked.append([int(i) for i in indices])
        return np.stack([(scene(int(i), SIZE)[0] - 128.0) / 64.0 for i in indices]).astype(
            np.float32
        )


def _fresh(model, variables, indices):
    return model.apply(variables, Images()(np.asarray(indices)), method="encode_image")


def _assert_same(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.shape == b.shape
        # float32 rounding: the encoder runs on other batch sizes here
        atol = 1e-5 * max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-5, atol=atol)


def test_cached_equals_fresh_and_each_image_is_encoded_once(bundled):
    model, variables = bundled
    images = Images()
    cache = EmbeddingCache(model, variables, images, batch_size=2)
    first = cache(np.array([3, 1, 3]))
    _assert_same(first, _fresh(model, variables, [3, 1, 3]))
    second = cache(np.array([1, 4, 0, 4]))
    _assert_same(second, _fresh(model, variables, [1, 4, 0, 4]))
    assert images.asked == [[3, 1], [4, 0]] and cache.num_encoded == 4
    cache(np.array([0, 1, 3, 4]))
    assert cache.num_encoded == 4
    odd = cache(np.array([5]))  # a batch padded to batch_size
    assert jax.tree.leaves(odd)[0].shape[0] == 1 and images.asked[-1] == [5]
    empty = cache(np.array([], np.int64))
    assert all(x.shape[0] == 0 for x in jax.tree.leaves(empty))


def test_disk_cache_reloads_without_encoding(bundled, tmp_path):
    model, variables = bundled
    cache = EmbeddingCache(model, variables, Images(), batch_size=2, directory=tmp_path)
    want = cache(np.array([0, 2, 7]))

    def never(indices):
        raise AssertionError(f"encoded again: {indices}")

    again = EmbeddingCache(model, variables, never, directory=tmp_path)
    _assert_same(again(np.array([0, 2, 7])), want)
    assert again.num_encoded == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    shared = ["shared.npz"] if isinstance(want, dict) else []
    assert names == sorted(["0.npz", "2.npz", "7.npz", *shared])  # no temporary files left
    if isinstance(want, dict):  # SAM 2: the image's own outputs, once each
        with np.load(tmp_path / "7.npz") as f:
            stored = sorted(f[k].shape for k in f.files)
        per_image = [want["vision_features"], *want["high_res_features"]]
        assert stored == sorted(x.shape[1:] for x in per_image)


def test_bad_input_is_a_clear_error(tmp_path):
    model, variables = sam_jax.load("sam_tiny_shapes", image_size=SIZE)
    cache = EmbeddingCache(model, variables, Images(), directory=tmp_path)
    with pytest.raises(ValueError, match="1-D array of non-negative integers"):
        cache(np.array([[0]]))
    with pytest.raises(ValueError, match="1-D array of non-negative integers"):
        cache(np.array([0.5]))
    small = EmbeddingCache(model, variables, lambda i: np.zeros((len(i), 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="images_of gave"):
        small(np.array([0]))
    (tmp_path / "9.npz").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="9.npz"):
        cache(np.array([9]))
    np.savez(tmp_path / "8.npz", np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="another model or image size"):
        cache(np.array([8]))
    with pytest.raises(ValueError, match="batch_size"):
        EmbeddingCache(model, variables, Images(), batch_size=0)
