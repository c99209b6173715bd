"""MABe 2022 format checks, the synthetic stand-in, features, readout and the ridge evaluator."""

import os
import pickle

import numpy as np
import pytest

from foresight.behavior import mabe
from foresight.core.data import ENV_OFFLINE, DataNotFoundError


@pytest.fixture(scope="module")
def clips():
    return mabe.synthetic_mouse_triplets(8, mabe.SyntheticSpec(frames=300), seed=3)


def test_synthetic_clips_have_the_mabe_mouse_format_and_labels(clips):
    mabe.validate_keypoints_file(clips, labelled=True)
    assert clips["vocabulary"] == ["strain", "lights", "chases", "close"]
    seqs = list(clips["sequences"].values())
    assert len(seqs) == 8 and all(s["keypoints"].shape == (300, 3, 12, 2) for s in seqs)
    kp = np.stack([s["keypoints"] for s in seqs])
    assert kp.dtype == np.float32 and 0 < kp.min() and kp.max() < 850  # inside the 850 px arena
    ann = np.stack([s["annotations"] for s in seqs])  # [8, 4, 300]
    # sequence-level factors are constant per clip and balanced; frame-level labels vary within clips
    assert (ann[:, :2] == ann[:, :2, :1]).all()
    assert ann[:, 0, 0].sum() == 4 and ann[:, 1, 0].sum() == 4
    assert 0 < ann[:, 2].mean() < 1 and 0 < ann[:, 3].mean() < 1
    again = mabe.synthetic_mouse_triplets(8, mabe.SyntheticSpec(frames=300), seed=3)
    assert all(np.array_equal(a["keypoints"], b["keypoints"]) for a, b in zip(seqs, again["sequences"].values()))


def test_close_label_matches_the_geometry(clips):
    s = next(iter(clips["sequences"].values()))
    centre = s["keypoints"][:, :, 6]  # centre back ~ the body centre, +- tracking noise
    d = np.linalg.norm(centre[:, :, None] - centre[:, None], axis=-1)
    d[:, range(3), range(3)] = np.inf
    far, near = d.min((1, 2)) > 95, d.min((1, 2)) < 85
    assert (s["annotations"][3][far] == 0).all() and (s["annotations"][3][near] == 1).all()


def test_slow_factors_show_in_long_averages():
    spec = mabe.SyntheticSpec(frames=1800, turn_noise=0.05)
    data = mabe.synthetic_mouse_triplets(8, spec, seed=0)
    for s in data["sequences"].values():
        kp = s["keypoints"].astype(np.float64)
        body = kp[:, :, 0] - kp[:, :, 9]  # nose - tail base
        dtheta = np.angle(np.exp(1j * np.diff(np.arctan2(body[..., 1], body[..., 0]), axis=0)))
        strain = s["annotations"][0, 0]
        # the mean turn over a whole clip has the strain's sign (walls add noise, so allow a margin)
        assert np.sign(np.median(dtheta)) == (1 if strain == 1 else -1)


def test_validators_name_what_is_wrong(clips):
    with pytest.raises(ValueError, match="expected a dict with 'vocabulary' and 'sequences'"):
        mabe.validate_keypoints_file({"sequences": {}})
    bad = {"vocabulary": [], "sequences": {"a": {"keypoints": np.zeros((10, 3, 11, 2))}}}
    with pytest.raises(ValueError, match=r"sequence a: keypoints must be \[T, 3, 12, 2\], got \(10, 3, 11, 2\)"):
        mabe.validate_keypoints_file(bad)
    bad = {
        "vocabulary": ["x"],
        "sequences": {"a": {"keypoints": np.zeros((10, 3, 12, 2)), "annotations": np.zeros((2, 10))}},
    }
    with pytest.raises(ValueError, match=r"sequence a: annotations must be \[1, 10\], got \(2, 10\)"):
        mabe.validate_keypoints_file(bad, labelled=True)
    with pytest.raises(ValueError, match="missing_rate must be in"):
        mabe.SyntheticSpec(missing_rate=1.0)


def _same(a, b):
    assert list(a) == list(b) and list(a["sequences"]) == list(b["sequences"])
    for key in a:
        if key != "sequences":
            assert a[key] == b[key], key
    for seq_id, seq in a["sequences"].items():
        assert list(seq) == list(b["sequences"][seq_id])
        for field, value in seq.items():
            np.testing.assert_array_equal(value, b["sequences"][seq_id][field])
            assert value.dtype == b["sequences"][seq_id][field].dtype


def test_round_trip_through_an_npz_file(clips, tmp_path):
    path = mabe.save_keypoints_file(clips, tmp_path / "mouse_triplet_train.npz")
    back = mabe.load_keypoints_file(path, labelled=True)
    _same(clips, back)
    with np.load(path, allow_pickle=False) as z:  # every entry is a plain array: nothing needs pickle
        assert str(z["format"]) == mabe.KEYPOINTS_FORMAT and all(z[k].dtype != object for k in z.files)


def _legacy_npy(path, obj, numpy1: bool):
    """np.save of an object array, the challenge format; ``numpy1``: as numpy 1.x wrote it (protocol 3, numpy.core)."""
    arr = np.array(obj, dtype=object)
    if not numpy1:
        np.save(path, arr, allow_pickle=True)
        return
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(arr))
        f.write(pickle.dumps(arr, protocol=3).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


@pytest.mark.parametrize("numpy1", [False, True])
def test_the_challenge_pickled_npy_is_refused_and_converts_once_to_an_equal_npz(clips, tmp_path, numpy1):
    legacy = tmp_path / "mouse_triplet_train.npy"
    _legacy_npy(legacy, clips, numpy1)
    with pytest.raises(mabe.PickledKeypointsFileError, match=r"pickled \.npy .*convert_pickled_keypoints_file"):
        mabe.load_keypoints_file(legacy, labelled=True)
    out = mabe.convert_pickled_keypoints_file(legacy, tmp_path / "converted.npz")
    _same(clips, mabe.load_keypoints_file(out, labelled=True))


class _Touch:
    """Pickles as os.system("touch <marker>"): unpickling it is running it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_npy_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    top = tmp_path / "evil_top.npy"
    _legacy_npy(top, _Touch(marker), numpy1=False)
    nested = tmp_path / "evil_nested.npy"  # the payload where a keypoints array should be
    evil = {"vocabulary": [], "sequences": {"a": {"keypoints": _Touch(marker)}}}
    _legacy_npy(nested, evil, numpy1=True)
    for path in (top, nested):
        with pytest.raises(mabe.PickledKeypointsFileError, match="which foresight does not unpickle"):
            mabe.load_keypoints_file(path)
        # the converter decodes the pickle, but with the restricted unpickler: os.system is refused
        with pytest.raises(pickle.UnpicklingError, match="refusing to load global (posix|os|nt).system"):
            mabe.convert_pickled_keypoints_file(path, tmp_path / "out.npz")
    raw = tmp_path / "evil_raw.npy"  # a bare pickle with a .npy name
    raw.write_bytes(pickle.dumps(_Touch(marker)))
    with pytest.raises(ValueError, match="neither an .npz nor an .npy file"):
        mabe.load_keypoints_file(raw)
    assert not marker.exists() and not (tmp_path / "out.npz").exists()


def test_an_npz_smuggling_an_object_array_is_refused_and_runs_nothing(clips, tmp_path):
    marker = tmp_path / "marker"
    good = mabe.save_keypoints_file(clips, tmp_path / "good.npz")
    with np.load(good, allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    entries["sequences/0/keypoints"] = np.array([_Touch(marker)], dtype=object)  # np.savez pickles it
    evil = tmp_path / "evil.npz"
    np.savez(evil, **entries)
    with pytest.raises(ValueError, match="entry 'sequences/0/keypoints' cannot be read without pickle"):
        mabe.load_keypoints_file(evil)
    assert not marker.exists()


def test_save_refuses_what_it_could_not_read_back_without_pickle(clips, tmp_path):
    bad = {**clips, "extra": {"nested": 1}}
    with pytest.raises(ValueError, match="top-level 'extra' must be a list of strings or a numeric array, got dict"):
        mabe.save_keypoints_file(bad, tmp_path / "x.npz")
    seq_id = next(iter(clips["sequences"]))
    bad = {**clips, "sequences": {seq_id: {"keypoints": np.array([object()])}}}
    with pytest.raises(ValueError, match=f"sequence {seq_id}: field 'keypoints' must be an identifier -> numeric"):
        mabe.save_keypoints_file(bad, tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def test_submission_validation_and_frame_map():
    fmap = mabe.frame_number_map({"a": 3, "b": 2})
    assert fmap == {"a": (0, 3), "b": (3, 5)}
    good = {"frame_number_map": dict(fmap), "embeddings": np.zeros((5, 128), np.float32)}
    mabe.validate_submission(good, fmap)
    with pytest.raises(ValueError, match=r"embeddings must be \[5, <= 128\], got \[5, 129\]"):
        mabe.validate_submission({**good, "embeddings": np.zeros((5, 129), np.float32)}, fmap)
    with pytest.raises(ValueError, match="frame_number_map differs"):
        mabe.validate_submission({**good, "frame_number_map": {"b": (0, 2), "a": (2, 5)}}, fmap)
    nan = np.zeros((5, 4), np.float32)
    nan[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        mabe.validate_submission({**good, "embeddings": nan}, fmap)
    with pytest.raises(ValueError, match="float32"):
        mabe.validate_submission({**good, "embeddings": np.zeros((5, 4))}, fmap)


def test_evaluator_metadata_gives_the_split_proportions(tmp_path, monkeypatch):
    data_dir = os.environ.get("FORESIGHT_DATA", "")
    if not data_dir or not os.path.isdir(os.path.join(data_dir, "mabe2022-evaluator-metadata")):
        pytest.skip("FORESIGHT_DATA does not hold the MABe 2022 evaluator metadata")
    meta = mabe.load_task_metadata()
    assert meta["split_sizes"] == {"UserTrain": 1600, "SubmissionTrain": 2668, "publicTest": 533, "privateTest": 535}
    assert {"strain", "lights", "chases", "close"} <= set(meta["task_id_list"])
    frac = mabe.split_fractions()
    assert frac["SubmissionTrain"] == pytest.approx(2668 / 3736)
    splits = mabe.assign_splits([f"s{i}" for i in range(40)], seed=0)
    assert [list(splits.values()).count(k) for k in mabe.SPLITS] == [28, 6, 6]
    with pytest.raises(ValueError, match="need at least 4 clips to split, got 3"):
        mabe.assign_splits(["a", "b", "c"], seed=0)
    # offline without the metadata: the published counts give the same proportions
    monkeypatch.delenv("FORESIGHT_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(ENV_OFFLINE, "1")
    with pytest.raises(DataNotFoundError, match="mabe2022-evaluator-metadata"):
        mabe.load_task_metadata(data_dir=tmp_path / "empty")
    assert mabe.split_fractions(data_dir=tmp_path / "empty") == pytest.approx(frac)


def test_features_missing_frames_and_pooling():
    kp = np.arange(1, 2 * 4 * 2 * 1 * 2 + 1, dtype=np.float32).reshape(2, 4, 2, 1, 2)  # [S, T, M, K, 2]
    kp[0, 2, 1, 0, 0] = 0.0  # clip 0, frame 2, mouse 1 missing (x == 0)
    x, action, valid = mabe.keypoint_features(kp)
    assert x.shape == (4, 4, 4) and action.shape == (4, 4, 2)
    assert np.array_equal(x[0, :, :2], kp[0, :, 0, 0])  # row s * M + a is clip s, animal a
    assert np.allclose(action[0, 1:], np.diff(kp[0, :, 0, 0], axis=0)) and np.allclose(action[0, 0], action[0, 1])
    # the missing frame and the step after it are invalid, their values zero
    assert valid[1].tolist() == [True, True, False, False] and (x[1, 2, :2] == 0).all() and (action[1, 2:] == 0).all()
    emb = np.random.default_rng(0).normal(size=(6, 5, 3))  # 2 clips x 3 mice
    pooled = mabe.pool_animals(emb, 3)
    assert pooled.shape == (2, 5, 6)
    assert np.allclose(pooled[1, :, :3], emb[3:].mean(0)) and np.allclose(pooled[1, :, 3:], np.ptp(emb[3:], 0))
    with pytest.raises(ValueError, match=r"keypoints must be \[clips, T, animals, keypoints, 2\]"):
        mabe.keypoint_features(kp[0])


def test_ridge_matches_the_closed_form_and_recovers_a_linear_rule():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 3.0 + 0.01 * rng.normal(size=200)
    w, b = mabe.ridge_fit(X, y, alpha=1.0)
    Xc, yc = X - X.mean(0), y - y.mean()
    assert np.allclose(w, np.linalg.solve(Xc.T @ Xc + np.eye(3), Xc.T @ yc))
    assert b == pytest.approx(y.mean() - X.mean(0) @ w)
    assert mabe.balanced_weights(np.array([0, 0, 0, 1])).tolist() == [2 / 3, 2 / 3, 2 / 3, 2.0]
    assert mabe.f1_binary(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"expected X \[N, D\] and y \[N\]"):
        mabe.ridge_fit(X, y[:10])


def test_linear_probe_decodes_separable_labels_and_not_noise():
    rng = np.random.default_rng(1)
    S, T = 30, 20
    seq = np.repeat(rng.integers(0, 2, S)[:, None], T, 1).astype(float)  # [S, T]
    frame = rng.integers(0, 2, (S, T)).astype(float)
    noise = rng.integers(0, 2, (S, T)).astype(float)
    emb = np.stack(
        [seq + 0.1 * rng.normal(size=(S, T)), frame + 0.1 * rng.normal(size=(S, T)), rng.normal(size=(S, T))], -1
    )  # [S, T, 3]; no channel knows "noise"
    labels = np.stack([seq, frame, noise], 1)  # [S, 3, T]
    labels[0, 1, :5] = np.nan  # unlabelled frames are dropped
    splits = list(mabe.assign_splits([str(i) for i in range(S)], seed=0).values())
    scores = mabe.linear_probe(emb, labels, splits, ("seq", "frame", "noise"), ("seq",))
    by = {s.task: s for s in scores}
    assert by["seq"].f1 == 1.0 and by["seq"].pooled_f1 == 1.0 and by["frame"].f1 == 1.0
    assert by["noise"].f1 < 0.8 and np.isnan(by["frame"].pooled_f1)
    with pytest.raises(ValueError, match=r"labels must be \[30, 2, 20\]"):
        mabe.linear_probe(emb, labels, splits, ("seq", "frame"), ())


def test_oracle_slow_features_are_causal_moving_averages():
    T = 6
    kp = np.zeros((1, T, 3, 12, 2))
    kp[..., 0, 0] = 1.0  # nose ahead of the tail base along +x: heading 0, no turning
    kp[..., 6, 0] = 2.0 * np.arange(T)[None, :, None]  # centre back moves 2 px per frame
    feats = mabe.oracle_slow_features(kp, window=3)  # [1, T, 2]
    assert feats.shape == (1, T, 2) and np.allclose(feats[..., 0], 0.0)
    # speeds 0, 2, 2, 2, 2, 2 (no step before frame 0); averages over the last <= 3 frames
    assert np.allclose(feats[0, :, 1], [0.0, 1.0, 4 / 3, 2.0, 2.0, 2.0])
