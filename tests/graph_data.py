"""Where the tests find the graph data (no download is attempted), shared by the graph and experiment tests."""

from pathlib import Path

import pytest

import foresight.graph.datasets  # noqa: F401  (registers the graph datasets)
from foresight.core.data import get_dataset, locate


def data_root() -> Path | None:
    """A folder holding geom-gcn/, heterophilous-graphs/ and planetoid/, or None.

    Searched: ``--data-dir``-less resolution (``$FORESIGHT_DATA``, the user cache), then the repository's
    sibling ``../shared/data``.
    """
    sibling = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    root = None
    for name in ("geom-gcn", "heterophilous-graphs", "planetoid"):
        spec = get_dataset(name)
        found = locate(spec, [f.path for f in spec.files]) or locate(spec, [f.path for f in spec.files], sibling)
        if found is None:
            return None
        root = found.parent
    return root


ROOT = data_root()
needs_data = pytest.mark.skipif(
    ROOT is None,
    reason="graph data files not found: set FORESIGHT_DATA to a folder holding geom-gcn/, "
    "heterophilous-graphs/ and planetoid/ (see `foresight data`)",
)
