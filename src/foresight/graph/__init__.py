"""Graphs: the Half-Hop transform, GNN backbones, BGRL, and the graph datasets.

from foresight.graph import HalfHop, load_geom_gcn, NodeClassifier
"""

from foresight.graph.bgrl import BGRL, bgrl_loss, cosine_loss, ema_decay, linear_probe
from foresight.graph.datasets import HETEROPHILIC, load_dataset, load_geom_gcn, load_planetoid
from foresight.graph.halfhop import HalfHop, HalfHopOutput, half_hop, original_nodes
from foresight.graph.models import GAT, GCN, GNN, GraphSAGE, NodeClassifier, make_backbone
from foresight.graph.train import FitResult, fit_node_classifier

__all__ = [
    "BGRL",
    "GAT",
    "GCN",
    "GNN",
    "HETEROPHILIC",
    "FitResult",
    "GraphSAGE",
    "HalfHop",
    "HalfHopOutput",
    "NodeClassifier",
    "bgrl_loss",
    "cosine_loss",
    "ema_decay",
    "fit_node_classifier",
    "half_hop",
    "linear_probe",
    "load_dataset",
    "load_geom_gcn",
    "load_planetoid",
    "make_backbone",
    "original_nodes",
]
