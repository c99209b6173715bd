from dataclasses import FrozenInstanceError, dataclass
from typing import ClassVar

import pytest

from foresight.core.config import Config, check_scale, with_overrides


@dataclass(frozen=True)
class ToyConfig(Config):
    lr: float = 1e-3
    epochs: int = 10
    backbone: str = "gcn"
    datasets: tuple[str, ...] = ("texas", "cornell")
    use_hh: bool = True
    limit: int | None = None

    choices: ClassVar[dict[str, tuple]] = {"backbone": ("gcn", "sage", "gat")}

    @classmethod
    def preset(cls, scale: str) -> "ToyConfig":
        return {"tiny": cls(epochs=1), "quick": cls(epochs=5), "full": cls()}[check_scale(scale)]

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def test_overrides_parse_by_field_type():
    cfg = with_overrides(ToyConfig(), ["lr=3e-4", "epochs=1e2", "datasets=a,b,c", "use_hh=false", "limit=7"])
    assert cfg == ToyConfig(lr=3e-4, epochs=100, datasets=("a", "b", "c"), use_hh=False, limit=7)
    assert with_overrides(cfg, ["limit=none"]).limit is None


def test_presets_and_frozen():
    assert ToyConfig.preset("tiny").epochs == 1
    with pytest.raises(ValueError, match="unknown scale 'huge'.*tiny, quick, full"):
        ToyConfig.preset("huge")
    with pytest.raises(FrozenInstanceError):
        ToyConfig().lr = 1.0  # type: ignore[misc]


def test_unknown_key_names_key_and_accepted_keys():
    with pytest.raises(ValueError, match="unknown config key 'lrr'.*accepted keys: backbone, datasets, epochs"):
        with_overrides(ToyConfig(), ["lrr=1"])


def test_wrong_type_names_key():
    with pytest.raises(ValueError, match="cannot parse epochs='many' as int"):
        with_overrides(ToyConfig(), ["epochs=many"])
    with pytest.raises(ValueError, match="cannot parse use_hh='maybe' as bool"):
        with_overrides(ToyConfig(), ["use_hh=maybe"])
    with pytest.raises(ValueError, match="not of the form key=value"):
        with_overrides(ToyConfig(), ["epochs"])


def test_validation_runs_after_override():
    with pytest.raises(ValueError, match="lr must be > 0, got -1.0"):
        with_overrides(ToyConfig(), ["lr=-1"])
    with pytest.raises(ValueError, match=r"backbone='mlp' is not allowed; expected one of \['gcn', 'sage', 'gat'\]"):
        with_overrides(ToyConfig(), ["backbone=mlp"])


def test_json_round_trip_restores_tuples():
    cfg = ToyConfig(datasets=("x",), limit=3)
    assert ToyConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown keys \['bogus'\] for ToyConfig"):
        ToyConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_from_dict_is_as_strict_as_set():
    good = ToyConfig(datasets=("x", "y"), limit=3).to_dict()
    for bad, message in [
        ({k: v for k, v in good.items() if k != "lr"}, r"missing keys \['lr'\]"),
        ({**good, "epochs": 2.5}, r"epochs=2.5 is not a valid int"),
        ({**good, "epochs": True}, r"epochs=True is not a valid int"),
        ({**good, "use_hh": 1}, r"use_hh=1 is not a valid bool"),
        ({**good, "datasets": "x"}, r"datasets='x' is not a valid tuple"),
        ({**good, "datasets": [1]}, r"datasets\[0\]=1 is not a valid str"),
        ({**good, "backbone": "mlp"}, r"backbone='mlp' is not allowed"),
        ([good], r"config must be a JSON object"),
    ]:
        with pytest.raises(ValueError, match=message):
            ToyConfig.from_dict(bad)
    assert ToyConfig.from_dict({**good, "lr": 1}).lr == 1.0  # an int is a valid float
