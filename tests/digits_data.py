"""Where the tests find the digit data (sklearn-digits images, FSDD recordings); no download is attempted.

Shared by the multimodal data and experiment tests.
"""

import os
from pathlib import Path

import pytest


def digits_data_root() -> Path:
    """A folder holding fsdd/recordings and sklearn-digits: $FORESIGHT_DATA, else the sibling ../shared/data.

    Skips the calling test when neither holds them.
    """
    sibling = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    for root in (os.environ.get("FORESIGHT_DATA"), sibling):
        if root and (Path(root) / "fsdd" / "recordings").is_dir() and (Path(root) / "sklearn-digits").is_dir():
            return Path(root)
    pytest.skip("fsdd/ and sklearn-digits/ not found under $FORESIGHT_DATA or ../shared/data")
