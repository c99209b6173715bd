"""Behaviour representation learning: BAMS (multi-timescale TCNs, HoA head, bootstrap losses) and MABe 2022."""

from foresight.behavior.bams import (
    BAMS,
    TCN,
    BAMSConfig,
    BAMSLosses,
    BAMSOutput,
    TCNConfig,
    bams_losses,
    bootstrap_loss,
    earth_movers_distance,
    future_histograms,
    hoa_bin_edges,
    hoa_loss,
    quantize,
    receptive_field,
)

__all__ = [
    "BAMS",
    "BAMSConfig",
    "BAMSLosses",
    "BAMSOutput",
    "TCN",
    "TCNConfig",
    "bams_losses",
    "bootstrap_loss",
    "earth_movers_distance",
    "future_histograms",
    "hoa_bin_edges",
    "hoa_loss",
    "quantize",
    "receptive_field",
]
