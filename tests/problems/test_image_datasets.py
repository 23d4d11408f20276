"""Fashion-MNIST and MNIST loaders: where they look, what they load, how they fail."""

import jax
import numpy as np
import pytest

from optimorph.problems import DatasetNotFound, datasets, problem
from optimorph.problems.datasets import DEBIAN_DIR, IDX_FILES
from optimorph.problems.idx import write_idx

N_TRAIN, N_TEST, SIDE = 20, 10, 6


def fake_idx_dir(directory, seed=0, gz=True):
    """Write four tiny IDX files (6x6 images) and return the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (N_TRAIN, SIDE, SIDE), dtype=np.uint8),
        "train_labels": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (N_TEST, SIDE, SIDE), dtype=np.uint8),
        "test_labels": (np.arange(N_TEST) % 10).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        write_idx(directory / (stem + (".gz" if gz else "")), arrays[key])
    return arrays


@pytest.fixture
def no_data_env(monkeypatch):
    monkeypatch.delenv("OPTIMORPH_DATA", raising=False)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_fake_directory_given_by_path(tmp_path, no_data_env, gz):
    arrays = fake_idx_dir(tmp_path / "fm", gz=gz)
    p = problem("fashion-mnist", path=str(tmp_path / "fm"))
    x, y = p.train
    assert x.shape == (N_TRAIN, SIDE * SIDE) and x.dtype == np.float32
    np.testing.assert_array_equal(x, arrays["train_images"].reshape(N_TRAIN, -1) / np.float32(255))
    np.testing.assert_array_equal(y, arrays["train_labels"])
    assert y.dtype == np.int32
    assert p.evals["test"][0].shape == (N_TEST, SIDE * SIDE)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert p.info["source"] == str(tmp_path / "fm")
    assert p.info["n_params"] == (SIDE * SIDE + 1) * 256 + 257 * 256 + 257 * 10


@pytest.mark.parametrize("subdir", ["fashion-mnist", ""])
def test_reads_from_optimorph_data(tmp_path, monkeypatch, subdir):
    arrays = fake_idx_dir(tmp_path / subdir)
    monkeypatch.setenv("OPTIMORPH_DATA", str(tmp_path))
    p = problem("fashion-mnist(model=linear)")
    np.testing.assert_array_equal(p.evals["test"][1], arrays["test_labels"])
    assert p.info["source"] == str(tmp_path / subdir).rstrip("/")


def test_cnn_layout_subset_and_standardize(tmp_path, no_data_env):
    fake_idx_dir(tmp_path)
    p = problem(f"fashion-mnist(path={str(tmp_path)!r}, model=cnn, n_train=8, standardize=true)")
    x = p.train[0]
    assert x.shape == (8, SIDE, SIDE, 1) and p.train[1].shape == (8,)
    assert abs(float(x.mean())) < 1e-6 and abs(float(x.std()) - 1) < 1e-6
    assert p.apply(p.init(jax.random.key(0)), x).shape == (8, 10)


def test_missing_dataset_lists_every_place_and_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIMORPH_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr(datasets, "DEBIAN_DIR", tmp_path / "debian")
    with pytest.raises(DatasetNotFound) as err:
        problem("fashion-mnist")
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    places = [tmp_path / "nowhere" / "fashion-mnist", tmp_path / "nowhere", tmp_path / "debian"]
    for place in places:
        assert f"{place}: no such directory" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "OPTIMORPH_DATA" in message and "path=" in message


def test_missing_path_names_it(tmp_path):
    with pytest.raises(DatasetNotFound, match=f"{tmp_path / 'absent'}: no such directory"):
        problem("fashion-mnist", path=str(tmp_path / "absent"))


def test_incomplete_directory_is_an_error_not_skipped(tmp_path, monkeypatch):
    fake_idx_dir(tmp_path / "fashion-mnist")
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("OPTIMORPH_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFound, match="incomplete, missing t10k-labels-idx1-ubyte"):
        problem("fashion-mnist")


def test_mnist_looks_only_in_its_own_directory(tmp_path, monkeypatch):
    # Fashion-MNIST files directly in $OPTIMORPH_DATA must not be mistaken for MNIST.
    fake_idx_dir(tmp_path)
    monkeypatch.setenv("OPTIMORPH_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFound, match="No Debian package ships MNIST"):
        problem("mnist")
    arrays = fake_idx_dir(tmp_path / "mnist", seed=1)
    p = problem("mnist")
    np.testing.assert_array_equal(
        p.train[0], arrays["train_images"].reshape(N_TRAIN, -1) / np.float32(255)
    )


@pytest.mark.skipif(
    not DEBIAN_DIR.is_dir(),
    reason=f"{DEBIAN_DIR} absent (install with `apt-get install dataset-fashion-mnist`)",
)
def test_debian_fashion_mnist(no_data_env):
    p = problem("fashion-mnist(model=cnn)")
    (x, y), (x_test, y_test) = p.train, p.evals["test"]
    assert x.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert p.info["source"] == str(DEBIAN_DIR)
    np.testing.assert_array_equal(np.bincount(y), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [1000] * 10)
    assert x.min() == 0.0 and x.max() == 1.0


@pytest.mark.parametrize("channels", [[8, 16], [16, 32]])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cnn_evaluates_in_chunks_to_the_same_bits(tmp_path, channels, dtype):
    """The CNN's metrics run 128 test images at a time (2-4x faster: the im2col patches stay
    in cache); vmapped over lanes and compiled, as the engine runs them, they are the bits of
    one pass over the whole set, remainder chunk included (300 = 2 x 128 + 44)."""
    import jax.numpy as jnp

    from optimorph.problems.supervised import accuracy, cross_entropy

    rng = np.random.default_rng(1)
    directory = tmp_path / "fm28"
    directory.mkdir()
    sizes = {"train": 8, "test": 300}
    for key, stem in IDX_FILES.items():
        n = sizes[key.split("_")[0]]
        data = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) if key.endswith("images")
                else (np.arange(n) % 10).astype(np.uint8))  # fmt: skip
        write_idx(directory / stem, data)
    p = problem(f"fashion-mnist(path={str(directory)!r}, model=cnn, channels={channels})")
    assert datasets.EVAL_CHUNK == 128
    x, y = (jnp.asarray(a) for a in p.evals["test"])
    x = x.astype(dtype)
    cast = lambda tree: jax.tree.map(lambda a: a.astype(dtype), tree)  # noqa: E731
    lanes = jax.vmap(lambda k: cast(p.init(k)))(jax.random.split(jax.random.key(0), 3))

    def whole(params):
        logits = p.apply(params, x)
        return {"loss": cross_entropy(logits, y), "accuracy": accuracy(logits, y)}

    one = jax.tree.map(lambda a: a[0], lanes)
    assert "scan" in str(jax.make_jaxpr(p.metrics)(one, (x, y)))  # it does run in chunks
    ours = jax.jit(jax.vmap(lambda q: p.metrics(q, (x, y))))(lanes)
    ref = jax.jit(jax.vmap(whole))(lanes)
    for key in ref:
        np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(ref[key]))
