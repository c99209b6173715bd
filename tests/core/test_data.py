import hashlib
import os

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


def _flip_one_byte(path, offset=3):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    st = path.stat()
    path.write_bytes(bytes(raw))
    # a later write lands on a later clock tick; force that here so the in-memory hash cache sees the edit
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _pinned_set(tmp_path, name, contents, unpinned=()):
    """A registered dataset whose files are present under tmp_path/dd/<name>/ with their pinned sha256."""
    folder = tmp_path / "dd" / name
    files = []
    for rel, body in contents.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(body)
        sha = "" if rel in unpinned else hashlib.sha256(body).hexdigest()
        files.append(RemoteFile(rel, f"https://example.invalid/{rel}", sha))
    register_dataset(DatasetSpec(name, tuple(files), "test", "none"))
    return folder


def test_status_flags_a_present_file_with_one_flipped_byte_as_corrupt(isolated, tmp_path):
    folder = _pinned_set(
        tmp_path, "toy-sha", {"a.bin": bytes(range(64)), "sub/b.txt": b"kept", "c.txt": b"free"}, unpinned={"c.txt"}
    )
    rows = {r["dataset"]: r for r in data.status(tmp_path / "dd")}
    assert set(rows["toy-sha"]) == {"dataset", "where", "files", "missing", "corrupt"}
    assert rows["toy-sha"]["corrupt"] == [] and rows["toy-sha"]["missing"] == []
    _flip_one_byte(folder / "a.bin")  # same size, same name: only the hash can tell
    _flip_one_byte(folder / "c.txt", offset=0)  # no pinned sha: not flagged
    row = {r["dataset"]: r for r in data.status(tmp_path / "dd")}["toy-sha"]
    assert row["corrupt"] == ["a.bin"] and row["missing"] == [] and row["where"] == str(folder)
    # still reported when the folder is incomplete (status then shows the most complete candidate)
    (folder / "sub" / "b.txt").unlink()
    row = {r["dataset"]: r for r in data.status(tmp_path / "dd")}["toy-sha"]
    assert row["corrupt"] == ["a.bin"] and row["missing"] == ["sub/b.txt"] and row["where"] == str(folder)


def test_status_checks_files_pinned_by_one_manifest_digest(isolated, tmp_path):
    # fsdd's convention: every recording carries the sha256 of "<name> <sha256>\n" lines over all of them
    bodies = {f"rec/{i}.wav": bytes([i]) * 16 for i in range(3)}
    lines = "".join(f"{i}.wav {hashlib.sha256(bytes([i]) * 16).hexdigest()}\n" for i in range(3))
    folder = tmp_path / "dd" / "toy-manifest"
    for rel, body in bodies.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(body)
    digest = hashlib.sha256(lines.encode()).hexdigest()
    register_dataset(DatasetSpec("toy-manifest", tuple(RemoteFile(p, "u", digest) for p in bodies), "test", "none"))
    assert {r["dataset"]: r for r in data.status(tmp_path / "dd")}["toy-manifest"]["corrupt"] == []
    _flip_one_byte(folder / "rec/1.wav")
    row = {r["dataset"]: r for r in data.status(tmp_path / "dd")}["toy-manifest"]
    assert row["corrupt"] == list(bodies)  # a manifest cannot say which file changed: all are suspect
