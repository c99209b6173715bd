import hashlib

import pytest

from foresight.core import data
from foresight.core.data import DataNotFoundError, DatasetSpec, RemoteFile, register_dataset, resolve


@pytest.fixture
def spec(tmp_path):
    src = tmp_path / "remote" / "a.txt"
    src.parent.mkdir()
    src.write_text("hello")
    sha = hashlib.sha256(b"hello").hexdigest()
    s = DatasetSpec(name="toy-set", files=(RemoteFile("sub/a.txt", src.as_uri(), sha),), source="test", license="none")
    register_dataset(s)
    return s


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FORESIGHT_DATA", raising=False)
    monkeypatch.delenv("FORESIGHT_OFFLINE", raising=False)


def test_order_data_dir_then_env_then_cache(spec, isolated, tmp_path, monkeypatch):
    for root in ("dd", "env"):
        (tmp_path / root / "toy-set" / "sub").mkdir(parents=True)
        (tmp_path / root / "toy-set" / "sub" / "a.txt").write_text("x")
    monkeypatch.setenv("FORESIGHT_DATA", str(tmp_path / "env"))
    assert resolve("toy-set", data_dir=tmp_path / "dd") == tmp_path / "dd" / "toy-set"
    assert resolve("toy-set") == tmp_path / "env" / "toy-set"


def test_download_into_cache_with_sha_check(spec, isolated, tmp_path):
    folder = resolve("toy-set")
    assert folder == tmp_path / "cache" / "foresight" / "toy-set"
    assert (folder / "sub" / "a.txt").read_text() == "hello"


def test_sha_mismatch_and_offline_errors_say_what_to_put_where(isolated, tmp_path, monkeypatch):
    src = tmp_path / "b.txt"
    src.write_text("tampered")
    register_dataset(DatasetSpec("toy-bad", (RemoteFile("b.txt", src.as_uri(), "0" * 64),), "test", "none"))
    with pytest.raises(DataNotFoundError, match="sha256 mismatch"):
        resolve("toy-bad")
    assert not (tmp_path / "cache" / "foresight" / "toy-bad" / "b.txt").exists()
    monkeypatch.setenv("FORESIGHT_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match=r"(?s)toy-bad.*FORESIGHT_OFFLINE.*Put these files.*b.txt"):
        resolve("toy-bad")


def test_unknown_dataset_and_status(spec, isolated):
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        resolve("nope")
    rows = {r["dataset"]: r for r in data.status()}
    assert rows["toy-set"]["missing"] == ["sub/a.txt"]
