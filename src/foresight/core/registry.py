"""The experiment registry: each paper claim is a function registered with its paper and claim.

    @experiment(
        name="halfhop-heterophily", system="Half-Hop", paper="Azabou et al., ICML 2023",
        claim="Half-Hop improves ... on heterophilic graphs", config=HeterophilyConfig,
    )
    def run(cfg: HeterophilyConfig, run: Run) -> Result: ...

The function wires data and models (no maths of its own), logs through ``run`` and returns a
:class:`Result` whose verdict comes from a rule stated in code, never hard-coded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from foresight.core.config import Config

VERDICTS = ("reproduced", "partial", "not reproduced")


@dataclass
class Result:
    """What an experiment measured, and its verdict on the paper's claim."""

    verdict: str  # one of VERDICTS
    rule: str  # the verdict rule in words, e.g. "HH - base > 0 on >= 4 of 6 datasets"
    metrics: dict[str, Any] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)  # rows for the report (same keys per row)
    # more tables, each under its title (an experiment with several sub-claims, e.g. one per paper table)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)  # file names under the run's figures/
    protocol: str = ""  # what was run, in a few sentences (data, splits, seeds, budget)
    notes: str = ""  # deviations from the paper, surprises

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")


@dataclass(frozen=True)
class Experiment:
    name: str
    system: str
    paper: str
    claim: str
    config: type[Config]
    fn: Callable[..., Result]
    threads: int | None = None  # default torch threads (``--threads`` wins); None: torch's default

    def make_config(self, scale: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
        from foresight.core.config import with_overrides

        return with_overrides(self.config.preset(scale), overrides)


_REGISTRY: dict[str, Experiment] = {}


def experiment(
    *, name: str, system: str, paper: str, claim: str, config: type[Config], threads: int | None = None
) -> Callable:
    """Register ``fn(cfg, run) -> Result``. ``threads``: the torch thread count it runs best with on a CPU
    (small models: 1; the CLI's ``--threads`` overrides it). Keep the keyword values literals: ``foresight
    list`` reads them from the source without importing the module."""

    def register(fn: Callable[..., Result]) -> Callable[..., Result]:
        if name in _REGISTRY and _REGISTRY[name].fn.__module__ != fn.__module__:
            raise ValueError(f"experiment {name!r} registered twice")
        _REGISTRY[name] = Experiment(name, system, paper, claim, config, fn, threads)
        return fn

    return register


def experiments() -> dict[str, Experiment]:
    """Every registered experiment (the CLI imports ``foresight.experiments`` modules to register them)."""
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> Experiment:
    if name not in _REGISTRY:
        raise KeyError(f"unknown experiment {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
