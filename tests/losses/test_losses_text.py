"""Class-name text embeddings from the packaged all-MiniLM-L6-v2 (offline) and their cache."""

import numpy as np
import pytest

from dml_study.losses import text


def test_clean_class_name():
    assert text.clean_class_name("001.Black_footed_Albatross") == "Black footed Albatross"
    assert text.clean_class_name("AM General Hummer SUV 2000") == "AM General Hummer SUV 2000"
    assert text.clean_class_name("bicycle_final") == "bicycle final"


@pytest.fixture(scope="module")
def names_and_embeddings(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    names = ["001.House_Sparrow", "002.Song_Sparrow", "003.Sports_car", "004.Pickup_truck"]
    return names, cache, text.class_name_embeddings(names, cache_dir=cache)


def test_embeddings_shape_norm_and_semantics(names_and_embeddings):
    _, _, emb = names_and_embeddings
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3]  # sparrows closer than a car
    assert sim[2, 3] > sim[2, 0]  # car closer to truck than to a sparrow


def test_cache_hit_does_not_reencode(names_and_embeddings, monkeypatch):
    names, cache, emb = names_and_embeddings
    files = list((cache / "text_embeddings").glob("*.npy"))
    assert len(files) == 1

    def fail(*args, **kwargs):
        raise AssertionError("encoder called despite a cache file")

    monkeypatch.setattr(text, "encode_texts", fail)
    np.testing.assert_array_equal(text.class_name_embeddings(names, cache_dir=cache), emb)
    with pytest.raises(AssertionError, match="encoder called"):
        text.class_name_embeddings([*names, "005.Tram"], cache_dir=cache)


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DML_STUDY_CACHE", str(tmp_path))
    monkeypatch.setattr(text, "encode_texts", lambda texts, **kw: np.ones((len(texts), 4)))
    text.class_name_embeddings(["001.Ant"])
    assert len(list((tmp_path / "text_embeddings").glob("*.npy"))) == 1


def test_load_user_npy(tmp_path):
    path = tmp_path / "emb.npy"
    np.save(path, np.ones((3, 5), dtype=np.float64))
    out = text.load_text_embeddings(path, num_classes=3)
    assert out.shape == (3, 5) and out.dtype == np.float32
    with pytest.raises(ValueError, match="has 3 rows but num_classes=4"):
        text.load_text_embeddings(path, num_classes=4)
    with pytest.raises(FileNotFoundError, match=r"missing\.npy"):
        text.load_text_embeddings(tmp_path / "missing.npy")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="class_names is empty"):
        text.class_name_embeddings([], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="template must contain"):
        text.class_name_embeddings(["a"], cache_dir=tmp_path, template="a photo")


def test_cache_dir_defaults_and_expansion(monkeypatch, tmp_path):
    from dml_study import paths

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DML_STUDY_CACHE", "")
    assert paths.cache_root() == tmp_path / ".cache" / "dml_study"
    monkeypatch.setenv("DML_STUDY_CACHE", "~/c")
    assert paths.cache_root() == tmp_path / "c"
    assert paths.cache_root("~/given") == tmp_path / "given"


def test_failed_cache_write_leaves_no_file(monkeypatch, tmp_path):
    """The cache file appears whole or not at all, and no temp file is left behind."""

    def broken_save(fh, array):
        fh.write(b"\x93NUMPY half")
        raise OSError("disk full")

    monkeypatch.setattr(text, "encode_texts", lambda texts, **kw: np.ones((len(texts), 4)))
    monkeypatch.setattr(text.np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        text.class_name_embeddings(["001.Ant"], cache_dir=tmp_path)
    assert list((tmp_path / "text_embeddings").iterdir()) == []
