"""Graph datasets for the Half-Hop experiments: six heterophilic sets and Cora/CiteSeer.

Every loader returns a :class:`LoadedGraph` ``(data, meta)``:

- ``data``: a ``torch_geometric.data.Data`` with ``x`` [N, F] float32, ``edge_index`` [2, E] int64,
  ``y`` [N] int64 and ``train_mask`` / ``val_mask`` / ``test_mask`` [N, S] bool, one column per split
  (S = 10 for the standard Geom-GCN splits, 1 for the public Planetoid split);
- ``meta``: a :class:`GraphMeta` naming the source files (with their verified sha256), the split
  convention and the edge convention, so that a result can say exactly what it was computed on.

Sources (each file pinned to a commit; see ``../shared/data/*/SOURCE.md`` for the cross-checks):

==========  =======================================================  =================================
dataset     features / labels                                        edges
==========  =======================================================  =================================
texas       Geom-GCN ``new_data/texas`` (equal to the Yandex npz)     Geom-GCN ``out1_graph_edges.txt``
wisconsin   Geom-GCN ``new_data/wisconsin`` (equal to Yandex)         Geom-GCN
film        Geom-GCN ``new_data/film`` (= Yandex ``actor``)           Geom-GCN
chameleon   Yandex ``chameleon.npz`` (Geom-GCN's file is not here)    Geom-GCN (= Yandex ``*_directed``)
squirrel    Yandex ``squirrel.npz`` (Geom-GCN's file is not here)     Geom-GCN (= Yandex ``*_directed``)
cornell     Yandex ``cornell.npz`` (see the Cornell caveat)           Yandex ``cornell.npz``
cora        Planetoid ``ind.cora.*`` (Kipf & Welling ordering)        Planetoid ``graph``
citeseer    Planetoid ``ind.citeseer.*`` (+15 zero rows)              Planetoid ``graph``
==========  =======================================================  =================================

Why these sources:

- The Geom-GCN repository is the origin of the heterophilic benchmarks and of their 10 splits, so it
  is used wherever its files are complete. It is also the only source of the *directed* WebKB/film
  edge lists, which matter for Half-Hop (one slow node per directed edge).
- chameleon/squirrel: their Geom-GCN feature files (> 4 MiB) are not mirrored; the Yandex npz
  (Platonov et al., ICLR 2023) is the only offline source of their features. Its node order is the
  Geom-GCN order (its ``*_directed`` edge lists equal the Geom-GCN ones), so Geom-GCN edges are used.
- **Cornell caveat.** In the Geom-GCN repository, ``new_data/cornell/out1_node_feature_label.txt`` is
  byte-identical to Texas's (same git blob in every commit; PyG's ``WebKB`` downloads it too), so a
  "Geom-GCN Cornell" carries Texas's features and labels on Cornell's edges. The Yandex
  ``cornell.npz`` has distinct features and labels (class counts 38/16/30/82/17), the same masks and
  the same degree multiset, but re-indexed nodes; it is used here, and results name it
  (``meta.source``). Its edges are only available undirected, so ``undirected=False`` is refused.

Split convention: the Geom-GCN files are named ``*_split_0.6_0.2_<k>.npz`` but hold **about 48% train /
32% val / 20% test** (an 80/20 ShuffleSplit, then 60% of the 80% for training; not stratified). In Cora,
the 223 nodes of ``unconnected_nodes/cora_unconnected_nodes.txt`` are in no mask.

Edge convention (``undirected``, recorded in ``meta``):

- ``True`` (default): symmetrised, deduplicated, self-loops dropped. This matches the Yandex files and
  the usual PyG ``ToUndirected`` preprocessing.
- ``False``: the Geom-GCN directed edge list as stored, deduplicated (film has duplicate lines), with its
  self-loops kept (the Geom-GCN loader reads it into a ``networkx.DiGraph``, which keeps them).

Planetoid files are Python-2 pickles. They are read by :class:`_PlanetoidUnpickler`, which resolves only
the six globals those files reference (``csr_matrix``, numpy array reconstruction, ``defaultdict``,
``list``), and only as inert stand-ins, and refuses everything else, so a tampered file cannot run code or
patch a class. Every matrix, array and graph is validated (indices in range, indptr monotone, values finite,
shapes consistent across the files) before the real ``csr_matrix`` is built and densified.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.utils import coalesce, remove_self_loops, to_undirected

from foresight.core.data import (
    NUMPY_ARRAY_GLOBALS,
    DatasetSpec,
    PickledArray,
    PickledInstance,
    RemoteFile,
    RestrictedUnpickler,
    SafeCall,
    decode_array,
    register_dataset,
    resolve,
    sha256_file,
)

GEOM_GCN_COMMIT = "f1fc0d14b3b019c562737240d06ec83b07d16a8f"
YANDEX_COMMIT = "a431395582e929d88271309716bea4fe24ce6318"
PLANETOID_COMMIT = "af6abf468a772cc055bec88c52e4d6f51b7c37e3"

_GEOM_GCN_URL = f"https://raw.githubusercontent.com/graphdml-uiuc-jlu/geom-gcn/{GEOM_GCN_COMMIT}"
_YANDEX_URL = f"https://raw.githubusercontent.com/yandex-research/heterophilous-graphs/{YANDEX_COMMIT}/data"
_PLANETOID_URL = f"https://raw.githubusercontent.com/kimiyoung/planetoid/{PLANETOID_COMMIT}/data"

# sha256 of every file, computed from the byte-for-byte copies in ../shared/data (sha256sum).
_GEOM_GCN_SHA256: dict[str, str] = {
    "new_data/chameleon/out1_graph_edges.txt": "45ac593de9207470090230c8fd76beeb2f60b5371a9be088e8bf31e7f0619a4b",
    "new_data/cornell/out1_graph_edges.txt": "c4522a00cc40873c8a04a3a07c49e24a48a507eb284ac9c9f2d3e0590351bbb7",
    "new_data/cornell/out1_node_feature_label.txt": "cf5a3ca346cdd1210b8342e22517fcbbdae658065b7a3145f59350e50e6236a3",
    "new_data/film/out1_graph_edges.txt": "997cdce67ea9c29257d3ffe796328391931901cf823830affa453178b60e2c3e",
    "new_data/film/out1_node_feature_label.txt": "1d5cdd094f8b91e770f6decfca85b35cf42f75d1efb51055fd6af16e11820ff8",
    "new_data/squirrel/out1_graph_edges.txt": "453d8e96754d68e2ab0a7ebb56f93506b59531d95abaec7a2b46fe1eae7c39cd",
    "new_data/texas/out1_graph_edges.txt": "0fe85183243a78cbee9b85a684f8240963d04d1020d10e9cd2b8cfb25e33b476",
    "new_data/texas/out1_node_feature_label.txt": "cf5a3ca346cdd1210b8342e22517fcbbdae658065b7a3145f59350e50e6236a3",
    "new_data/wisconsin/out1_graph_edges.txt": "ebd213511c88fce1eda450c2f920600c4b8cbb38f02384856bcc47c6ec1807ae",
    "new_data/wisconsin/out1_node_feature_label.txt": "a32b0aa38d42f0d36841e8a8cb646d197f0ff33a182ac75a2b4476aeed3c7e4b",
    "splits/chameleon_split_0.6_0.2_0.npz": "36605525b69be4e7df5b31fe6a1d044288c6ebf9f9f0514ca151f6a36afc5e8b",
    "splits/chameleon_split_0.6_0.2_1.npz": "d0779d5a1bedf1967d394468a52c0175fb00595d361fba897faf73322386c952",
    "splits/chameleon_split_0.6_0.2_2.npz": "86ad0d827bf4301dff830598fc0b70d0dd8689c5b4d72dab1d87a6c1970c4c6e",
    "splits/chameleon_split_0.6_0.2_3.npz": "37b3e994adf3afc55e16b617ed05af4e3ce308800755839084d77eced0528e9d",
    "splits/chameleon_split_0.6_0.2_4.npz": "f6b1d067b2b330132839d8b6120077bdc6cf759f7ce421f881a02e2953ec4596",
    "splits/chameleon_split_0.6_0.2_5.npz": "e7661834275c826692510cea0457b18b2c1ee38771f178d06e701b97541a1f6d",
    "splits/chameleon_split_0.6_0.2_6.npz": "16648d1197c1d3a2dec385346212c382030b0d5a8c997f4255aa2afa68a6b174",
    "splits/chameleon_split_0.6_0.2_7.npz": "61adcc53846becefecd466a5364dda23b983d387d1ac5d58c6e24d080c0fcba7",
    "splits/chameleon_split_0.6_0.2_8.npz": "7076ad5341a8218b1f5b6eccf9cfd15d28286ea11ef5c06eeee77af24ff2bf63",
    "splits/chameleon_split_0.6_0.2_9.npz": "743c4f813bf6130398a6511eb9ff07d2366c73bd6c7fddaf226a3f9e2917e0e7",
    "splits/citeseer_split_0.6_0.2_0.npz": "31d483e4c9cbdd031c35e284fbda3935bfda6901b8618e4ef0381af5b9143582",
    "splits/citeseer_split_0.6_0.2_1.npz": "1e02e3220676a90715b5a868b207dc19f49e5bc13ef1e8a8c8305fb46e028659",
    "splits/citeseer_split_0.6_0.2_2.npz": "910ce9d1a9c12f2ce84486fa7d1953d560c2cf57f9e0c213a4ae362ca56bff77",
    "splits/citeseer_split_0.6_0.2_3.npz": "e8c84d2e0099b3c0d692a68126c03370579f0cd83c0dab42b25a0fb3b94cb2c6",
    "splits/citeseer_split_0.6_0.2_4.npz": "a45c9e6b4abe527499a1a1bf545063cdc910c82ef4676f1ef4e483bb77712c8e",
    "splits/citeseer_split_0.6_0.2_5.npz": "fc0f6091daab2b0f37a3522dbc60052d9bce4209e7c06482f6beb61a4ed442b9",
    "splits/citeseer_split_0.6_0.2_6.npz": "c99f610ff84bf5f5c3fe71b548c3cdf9c9bf02185d0152432b290877df1c4a3b",
    "splits/citeseer_split_0.6_0.2_7.npz": "26bb7e5ea3aed014df5765af845fae70db9cdbb8875c46fc89cc4d6d042fb182",
    "splits/citeseer_split_0.6_0.2_8.npz": "f8efadce7a3732ac39ec6625f591c9ed0b4222d95257f25f2a05ad5518e4a7eb",
    "splits/citeseer_split_0.6_0.2_9.npz": "d9e586dad1886b3e1fdf3999140a192bb0cacea67c7849262ec862b8e7286cdf",
    "splits/cora_split_0.6_0.2_0.npz": "619931e6c3f0248bf9c7b6be24680a0a617bcfaba661cb0d7afaee8e18a74a51",
    "splits/cora_split_0.6_0.2_1.npz": "d24be667034cb15a55bbf512dbae07b39c758eed66a9ba27106fa795422fe11c",
    "splits/cora_split_0.6_0.2_2.npz": "811fb695c4c9ab0a53ab3a665bf4232652a08a6e38faac5b43a7da43a8454b74",
    "splits/cora_split_0.6_0.2_3.npz": "9d9c19d88a689b76a4b97e8694ef8d20cb0f1b192bbd05a0d5649c91f0cb6ef4",
    "splits/cora_split_0.6_0.2_4.npz": "3040b6bc0ddfff3757d55f514becf0b1b6b2e382114bfb0bc900dbcbb58fca17",
    "splits/cora_split_0.6_0.2_5.npz": "52373862971060e366829930332acabaa90cc6f41019c52bf6c92e4c22f8f093",
    "splits/cora_split_0.6_0.2_6.npz": "07847ea94e8b19970cf86731f19869aac0c56310d27f687d0feb9553d7525dd6",
    "splits/cora_split_0.6_0.2_7.npz": "262573079c8b1f4bc043d32edd3d23a6c36f1d7258efe60c11a6197ba0eee560",
    "splits/cora_split_0.6_0.2_8.npz": "d6c6a2163aeadd103ae386e800e473d2388da866f3f464199180d9b0e2f7d6cc",
    "splits/cora_split_0.6_0.2_9.npz": "9d236d0cf723871d88dea567afe92d50c11d0ffba280349a5cc7f5f2ea42202f",
    "splits/cornell_split_0.6_0.2_0.npz": "14022a1e19ec7fc0a07a2c06a785a2f9dc52809dbcd1c14fc318f7800675d73f",
    "splits/cornell_split_0.6_0.2_1.npz": "5568fa27e968a724c92211bf97026a36a08893cf94b218043e49b4c973c35cfb",
    "splits/cornell_split_0.6_0.2_2.npz": "763fc1f423395e4172617fa5b6bc0d7adad2241e5fedd1a4f0a098a67f9dc8e9",
    "splits/cornell_split_0.6_0.2_3.npz": "4334321cd9ec42de9d51107fb9a6dc310512e0921bc1cff0f390301ee37315fa",
    "splits/cornell_split_0.6_0.2_4.npz": "2b6b3ef396f4dc7fcdc276fb16b88bb87409b25879dd672b3a506eca844dd8d7",
    "splits/cornell_split_0.6_0.2_5.npz": "1a40ef8b20aa9e1aa850e1abdaba3efac1f66c98ef2c6a59eadefa21136ece6b",
    "splits/cornell_split_0.6_0.2_6.npz": "bcddf4ab59eae4c7d47b8a6cec9025a54ec0e6d3f3bdcd7678e201f25ace4642",
    "splits/cornell_split_0.6_0.2_7.npz": "2b497e12dfc123d7e7c9bb4fc4a82b5bee18409e109a3e3a04da439cacec964d",
    "splits/cornell_split_0.6_0.2_8.npz": "5c4e110d252d7ad156b2e4cd34b6dbd1cecbcc1755f8d72e932cc2a54f2b643c",
    "splits/cornell_split_0.6_0.2_9.npz": "80f1531807194d301affbf6f879a4ab4f56a19bdccb62d192e3ecd1b5275f052",
    "splits/film_split_0.6_0.2_0.npz": "4505a41d4e90abd94d1ec22571ce528b09ad7cf20d87f764aebd4177590767f5",
    "splits/film_split_0.6_0.2_1.npz": "1871b0d24e3977c41e378fd24acc8025b63f86b77739be77a5b558d1287f207d",
    "splits/film_split_0.6_0.2_2.npz": "d26680e911ef3ecc9fc2a26d90c9d35028c63aadd7a5aea774649d1496c282cb",
    "splits/film_split_0.6_0.2_3.npz": "6755ad5f6a0be8594b344af3d2261eed935b83b73c4d70136e1a7beea7f78cb0",
    "splits/film_split_0.6_0.2_4.npz": "328fdca62b25074f21f2922518e042f24b3b8a1fc378f9dfb2cae36439aed902",
    "splits/film_split_0.6_0.2_5.npz": "5b3161a8dc8de4b2e651ebd56d68e768d1377044895b325566117fe26ab81cb7",
    "splits/film_split_0.6_0.2_6.npz": "e251b38abd4d7931b5e9ae5aba99dcdf87f0be283bdf6e65421274a1c9ef1df6",
    "splits/film_split_0.6_0.2_7.npz": "12164ef9f5620a2f12a387f4f2b8636859d42201101d6d32829ade62d5a98326",
    "splits/film_split_0.6_0.2_8.npz": "405cd1f7f631f678119f8bf2405809e86614d532985beb59566fcf95abd35b3f",
    "splits/film_split_0.6_0.2_9.npz": "505691c5d41bb37b20d085415dcdde2e8e68b5bc4e1feb2c0e361308002012bb",
    "splits/pubmed_split_0.6_0.2_0.npz": "a15825b5bf77ffd2e9179e354f455bb9a6f8c4886cb28796688a38d45d75bdc9",
    "splits/pubmed_split_0.6_0.2_1.npz": "51f2349156410d851859ff4858ecd401d05d024f1a3936250dd8e844a6fd527b",
    "splits/pubmed_split_0.6_0.2_2.npz": "d94a2a3d607f23d7dc88dabb966db7c7da187e0a2af3c848d88ab0c5452c4a2b",
    "splits/pubmed_split_0.6_0.2_3.npz": "62c389ddac567fcd25654db846fc693973c69cddf083f5495d33b592a768515e",
    "splits/pubmed_split_0.6_0.2_4.npz": "3b2bbeb2f4bbee257bb4c626c15c3e3dd0e9da6ed23bf16f6ac520b95e18f84d",
    "splits/pubmed_split_0.6_0.2_5.npz": "23aea01576f71aa165cd70564fb53b3f158d1ff71c1227e062797870fe130551",
    "splits/pubmed_split_0.6_0.2_6.npz": "9122bd4e8e42cab8d33e952693d18d0f49c5f11327b922baefb81228ee903c44",
    "splits/pubmed_split_0.6_0.2_7.npz": "958706e960939c716a5204671c08399864600ce82094755b2e61975137ccfae9",
    "splits/pubmed_split_0.6_0.2_8.npz": "764dd33802022d7ab2595f08f21b424e83007aceeb5f85c9403c74bf791f56f6",
    "splits/pubmed_split_0.6_0.2_9.npz": "b9d4b4362fc02751c168f68f4120ab2fb516f4c84d447571653f1cd692946a66",
    "splits/squirrel_split_0.6_0.2_0.npz": "f112b88d3354e86d164d4d915b6a1f695c10f0e01e3e6b9893fc7b09bb93191d",
    "splits/squirrel_split_0.6_0.2_1.npz": "2486c687c8befb55930a6237f76f1d86ce2ba345782eda6157f4e752d05f304f",
    "splits/squirrel_split_0.6_0.2_2.npz": "d62ff83862ad96022d3400dfc9b7ca405834ca62767319d97c36b3f02db978c0",
    "splits/squirrel_split_0.6_0.2_3.npz": "af3d90e0b2718ac7417e10e8b5b382443667412e846cabc3cc4e4a592f4cedae",
    "splits/squirrel_split_0.6_0.2_4.npz": "fbe848298bb72b88db0704050cf216e2a93c916540d577906f3e644b679a6a2c",
    "splits/squirrel_split_0.6_0.2_5.npz": "cd04fab46a181151ddd97ce93c65fe79558fb79ffa230b62f488ebfaf5fdcd75",
    "splits/squirrel_split_0.6_0.2_6.npz": "b9189f7903ca7556a025c54dd5be6c00ec5952d4299e71630bc9876157676412",
    "splits/squirrel_split_0.6_0.2_7.npz": "ea7fb3ca5d5aa45b917b99fb7d64d4e87322b2b5303a0156c547aa3f1a6c8941",
    "splits/squirrel_split_0.6_0.2_8.npz": "b43faa190ca6dd4885a39dfc2a93d59f56f5174f3567bdbc49b18dd9cd9b7fb4",
    "splits/squirrel_split_0.6_0.2_9.npz": "529ade4b86fd191908a96011f25c454653083674b6d4f090b3fdd27af2d14f62",
    "splits/texas_split_0.6_0.2_0.npz": "7ba77bf7a8856fcc0ab15623a611b8cdce994e820f577da914123fb4f45272b0",
    "splits/texas_split_0.6_0.2_1.npz": "21cc244a96e3c51ad7993afb4dd227f90e467d82b964bb42d7d9fc500a6ef87f",
    "splits/texas_split_0.6_0.2_2.npz": "b9e96a699ccf3a4c31ffbd03e52b25570889833425d20fa44e06c37b327cf61e",
    "splits/texas_split_0.6_0.2_3.npz": "1a7deeb1285009789d5e6045d7e39f7d019c9223d9a75a2b7ce5e26d33b51f63",
    "splits/texas_split_0.6_0.2_4.npz": "b5419ff3fe31adcae66fdb085d4f47d0b188e9436ab59f438632af969aafc674",
    "splits/texas_split_0.6_0.2_5.npz": "68405fd1b9ff6105d99717220ecbd198785e338bf4a73abee722bbc9703d2667",
    "splits/texas_split_0.6_0.2_6.npz": "8ad78b973164e70e5ac0d282e79adcbc6006e373909fbdfd72a13131e09040b8",
    "splits/texas_split_0.6_0.2_7.npz": "a84bcbf997365bddf5fdf72ed49dc7e435e475f8c6210f8cdee7c8581a2bd6df",
    "splits/texas_split_0.6_0.2_8.npz": "65ba65f296f91d40d2d7d3c9369b67415094a7e254c6eee48cd6d6531c586fdf",
    "splits/texas_split_0.6_0.2_9.npz": "4306981d654ad8835c000c1f73fb6c1e60dfe99e26c13a6073f3b0f4cc3ce6ee",
    "splits/wisconsin_split_0.6_0.2_0.npz": "f66f641e191d35d491cd3b63d6c2cd93c4b436da398984b44c19a8d4d7e7b1a5",
    "splits/wisconsin_split_0.6_0.2_1.npz": "534aeb97266bd5a85a8587adf8eebad3f2e001c1240610f24b62c0ad0c2466ee",
    "splits/wisconsin_split_0.6_0.2_2.npz": "047a5b641778ec3a4c76055fd7f18ecb2424c0952f20dfff7e1b17749d8acbdd",
    "splits/wisconsin_split_0.6_0.2_3.npz": "706c27b4c51d046c0316f1e915f093e4a1fff48b3436b3e7c421eab596a99e77",
    "splits/wisconsin_split_0.6_0.2_4.npz": "7ee813605eec086457aaff022cf3837f2f893fcf8bd37e3a8d2ff0c80e4c4f87",
    "splits/wisconsin_split_0.6_0.2_5.npz": "8094ac2bdaf2cbea8f7a48df66a0800c809b2fd5942740e6b0441b660d3a0dd5",
    "splits/wisconsin_split_0.6_0.2_6.npz": "c423a8deea9b18f9ecb6cfd703578e2159df167de01fe7e6195b88995010252d",
    "splits/wisconsin_split_0.6_0.2_7.npz": "57ad808c8d4dd94dc4404124370bbcebb3dcc597c2bea6457bf05f220adf1527",
    "splits/wisconsin_split_0.6_0.2_8.npz": "27d4d62a2a6aea2cdc399302237512ab0d64fb0c84e648112f97c5896274e42f",
    "splits/wisconsin_split_0.6_0.2_9.npz": "3c149cd124a19021031609e0d7743a7be59aae4f88c8d38410138e8f06f5daaf",
    "unconnected_nodes/citeseer_unconnected_nodes.txt": "bd990a74e170fbef0eb18535145d1554df5771bba91fae823309834c19dda501",
    "unconnected_nodes/cora_unconnected_nodes.txt": "915513afa9cb5dee8c08432c2f9a228b8cbc9bdab9886bfc9231f4eb6dc462c4",
}
_YANDEX_SHA256: dict[str, str] = {
    "actor.npz": "c350eef06b2c2a9bf8218be2b57cac6d4003d0922eb597a039e9123f75817816",
    "chameleon.npz": "4c640bd2877fc4f9f101531e2f977bc16445a54e09a5cb01178df608e552f3fd",
    "chameleon_directed.npz": "34aea6b6888063544232100d53d4aa7e87e37953ec8dd3a7092afb25bb2f0328",
    "chameleon_filtered.npz": "bf46f07e1fb5249280447e5fe3100f3e82fc4b93ad1e13ffcfdec924b6ac0bb5",
    "chameleon_filtered_directed.npz": "5a2d40701407188f1661d37a326484b49cc15251e0dedaa7bd380873dac80f21",
    "cornell.npz": "684c54ba3daa13b0ba1f04a3d6dd1b1175c1ae9bdeb982851fd4ff96d3aac298",
    "minesweeper.npz": "e664c8dacf1e8ac466c2c09ed4b237bd2c5541f47a6eae9c6092cb87f16412b3",
    "squirrel.npz": "d436e3b42c0546b105241c0ab0766097074e68e55f67b133eeb9b0162e55cbd9",
    "squirrel_directed.npz": "3f0436486716cf77b651c372e54f6b4c2cc52262e7faeeab584a34b41bae2616",
    "squirrel_filtered.npz": "f06370ffb3116c5de8b7a600005400b2293c025e0ce2f6916d8201a825505ac7",
    "squirrel_filtered_directed.npz": "0526e53252f0b052124f7390829c32e923d432acaf64206191a1144a07b39620",
    "texas.npz": "b164b99e6c3d43e4ab07488ec59bd8c815f90cbc1bd4cf425ce587d2b534d844",
    "texas_4_classes.npz": "2da438ba7f41fd82e0953e2c9f63ef18e5a58da51ae6369cb5f5010bdf0e67bd",
    "tolokers.npz": "dacf3ac94cec53d03cd2adb5255c08b33dee1656c33ca8164a464bd9450a1667",
    "wisconsin.npz": "2543c89838cfc75f737f7c4664cc1d097f8268602c20b2d1bd4f21407df9c074",
}
_PLANETOID_SHA256: dict[str, str] = {
    "ind.citeseer.allx": "2ac30345d95c9ec933a817ee0bdd6a5f077f8c184a20e696910192d534414668",
    "ind.citeseer.ally": "f704b2d986dde6c2669934de1f3ae5696a6cf9455c0f6b2646a2d135ea0a1c95",
    "ind.citeseer.graph": "d79a4ef9d3e7169aee8946145f6b7306e35bc79bffad26346cfb94e10e9912a7",
    "ind.citeseer.test.index": "2af990671580b6b2df5d158d1038f8292e30c9cd821b5453f399659b25b723d4",
    "ind.citeseer.tx": "539a8906a2da97628d212f2fdd668c109a8b3f0d36574b59e5d3fd5b5303da21",
    "ind.citeseer.ty": "55e5bd1ba1e733a04598753ad1a8d57957f4b8f89e74519f41f4f4938767e4ce",
    "ind.citeseer.x": "d20de19150741e555de0ed037195630fc194114ebc7fd72ced62810148aa22f6",
    "ind.citeseer.y": "8ba87e515d8e3ee3cf52f6d2c5b86aa73f11ecad825a808455209ec26cd54924",
    "ind.cora.allx": "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543",
    "ind.cora.ally": "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71",
    "ind.cora.graph": "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
    "ind.cora.test.index": "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
    "ind.cora.tx": "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a",
    "ind.cora.ty": "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad",
    "ind.cora.x": "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab",
    "ind.cora.y": "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1",
    "ind.pubmed.ally": "0c37bbe3b5014ec365e9d393cf4791925e5ed94fb194305d74f064a8d7b50f0e",
    "ind.pubmed.graph": "5b89f0036ca22909471f1e6558eb42fa06e0c730a577bde5b058b40638f81dc9",
    "ind.pubmed.test.index": "b101d421688bbaecbd82e8a18f1e282378d6830f3a37666f28ebc47f844341b5",
    "ind.pubmed.tx": "4eb5f5d0f30f26497eb0ac6ac9719d09c67e284f1ed0385c93f3ef27a671da3d",
    "ind.pubmed.ty": "ee2e0d4819d9fbcc403689c3bf2e49face401b605932f093bc58ab6461130fdd",
    "ind.pubmed.x": "fbe9cb5c47200d1b7769a26e579be3b7130b556831f9d850e77c4c74f2599b33",
    "ind.pubmed.y": "e6c807633307a07ed659249006536a147c7999c797f11a2560752990181b41b3",
}


def _spec(name: str, base_url: str, shas: dict[str, str], source: str, license: str) -> DatasetSpec:
    files = tuple(RemoteFile(path, f"{base_url}/{path}", sha) for path, sha in shas.items())
    return DatasetSpec(name=name, files=files, source=source, license=license)


GEOM_GCN = register_dataset(
    _spec(
        "geom-gcn",
        _GEOM_GCN_URL,
        _GEOM_GCN_SHA256,
        source=f"github.com/graphdml-uiuc-jlu/geom-gcn @ {GEOM_GCN_COMMIT} (new_data/, splits/, unconnected_nodes/)",
        license="no LICENSE file; code headers MIT (c) 2019 Geom-GCN Authors; data from WebKB, Wikipedia, actor network",
    )
)
YANDEX = register_dataset(
    _spec(
        "heterophilous-graphs",
        _YANDEX_URL,
        _YANDEX_SHA256,
        source=f"github.com/yandex-research/heterophilous-graphs @ {YANDEX_COMMIT} (data/*.npz)",
        license="MIT (c) 2023-present Yandex Research; cite Platonov et al., ICLR 2023",
    )
)
PLANETOID = register_dataset(
    _spec(
        "planetoid",
        _PLANETOID_URL,
        _PLANETOID_SHA256,
        source=f"github.com/kimiyoung/planetoid @ {PLANETOID_COMMIT} (data/ind.*)",
        license="MIT (c) 2016 Zhilin Yang; cite Yang, Cohen & Salakhutdinov, ICML 2016",
    )
)

HETEROPHILIC = ("texas", "wisconsin", "cornell", "film", "chameleon", "squirrel")
PLANETOID_NAMES = ("cora", "citeseer")
_ALIASES = {"actor": "film"}
NUM_GEOM_GCN_SPLITS = 10

GEOM_GCN_SPLIT_NOTE = (
    "Geom-GCN splits (files named 0.6_0.2, really ~48/32/20 train/val/test: 80/20 ShuffleSplit then 60% "
    "of the 80% for train; not stratified)"
)


@dataclass(frozen=True)
class GraphMeta:
    """Where a graph came from and how it was preprocessed (goes into results verbatim)."""

    name: str
    source: str  # one line naming the repositories/files used for features, labels, edges, splits
    files: tuple[tuple[str, str, str], ...]  # (dataset folder, relative path, verified sha256)
    split: str  # the split convention
    num_splits: int
    undirected: bool  # True: symmetrised + deduplicated
    self_loops: bool  # whether edge_index contains self-loops
    num_nodes: int
    num_edges: int  # columns of edge_index (an undirected edge counts twice)
    num_features: int
    num_classes: int
    notes: str = ""

    @property
    def checksum(self) -> str:
        """One sha256 over the ``path:sha256`` lines of every file read (identifies the exact inputs)."""
        lines = "".join(f"{a}/{p}:{s}\n" for a, p, s in sorted(self.files))
        return hashlib.sha256(lines.encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        """The record a result carries: everything but the per-file list, plus :attr:`checksum`."""
        d = {k: v for k, v in asdict(self).items() if k != "files"}
        d["checksum"] = self.checksum
        return d

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = [{"dataset": a, "path": p, "sha256": s} for a, p, s in self.files]
        return d


class LoadedGraph(NamedTuple):
    data: Data
    meta: GraphMeta


# -- file access ---------------------------------------------------------------------------------
class _Files:
    """Resolves files of one registered dataset and verifies each one's sha256 before it is read."""

    def __init__(self, spec: DatasetSpec, paths: list[str], data_dir: str | Path | None) -> None:
        self.spec = spec
        self.folder = resolve(spec.name, paths, data_dir=data_dir)
        self.used: list[tuple[str, str, str]] = []

    def path(self, rel: str) -> Path:
        expected = self.spec.file(rel).sha256
        p = self.folder / rel
        got = sha256_file(p)
        if got != expected:
            raise ValueError(
                f"{p} has sha256 {got}, expected {expected} ({self.spec.source}); the file is not the pinned one"
            )
        self.used.append((self.spec.name, rel, got))
        return p


def _canonical(name: str, allowed: tuple[str, ...]) -> str:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in allowed:
        raise ValueError(f"unknown dataset {name!r}; expected one of {list(allowed)} (or 'actor' for 'film')")
    return key


def _split_paths(name: str) -> list[str]:
    return [f"splits/{name}_split_0.6_0.2_{k}.npz" for k in range(NUM_GEOM_GCN_SPLITS)]


def _read_geom_gcn_splits(files: _Files, name: str, num_nodes: int) -> dict[str, torch.Tensor]:
    """The 10 Geom-GCN masks of ``name`` stacked to [N, 10] bool."""
    cols: dict[str, list[np.ndarray]] = {"train_mask": [], "val_mask": [], "test_mask": []}
    for rel in _split_paths(name):
        with np.load(files.path(rel), allow_pickle=False) as z:
            for key in cols:
                m = z[key]
                if m.shape != (num_nodes,):
                    raise ValueError(f"{rel}: {key} has shape {m.shape}, expected ({num_nodes},)")
                cols[key].append(m.astype(bool))
    return {k: torch.from_numpy(np.stack(v, axis=1)) for k, v in cols.items()}


def _read_geom_gcn_edges(path: Path) -> torch.Tensor:
    """``out1_graph_edges.txt``: a header line, then ``src<TAB>dst`` per line -> [2, E] as stored."""
    tokens = path.read_text().split()
    if tokens[:2] != ["node_id", "node_id"]:
        raise ValueError(f"{path}: unexpected header {tokens[:2]}")
    pairs = np.asarray(tokens[2:], dtype=np.int64).reshape(-1, 2)
    return torch.from_numpy(pairs.T.copy())


def _read_geom_gcn_features(path: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``out1_node_feature_label.txt`` -> (x [N, F] float32, y [N] int64), rows placed by node id.

    WebKB files hold a dense comma-separated 0/1 vector; film holds the indices of its active
    features (indices up to 931, so 932 dimensions, as in the Geom-GCN loader) and is not sorted.
    """
    lines = path.read_text().splitlines()
    header, rows = lines[0], [ln.split("\t") for ln in lines[1:] if ln.strip()]
    ids = np.array([int(r[0]) for r in rows])
    labels = np.array([int(r[2]) for r in rows])
    n = len(rows)
    if sorted(ids.tolist()) != list(range(n)):
        raise ValueError(f"{path}: node ids are not a permutation of 0..{n - 1}")
    if name == "film":
        if "feature_amount:931" not in header:
            raise ValueError(f"{path}: unexpected header {header!r}")
        x = np.zeros((n, 932), dtype=np.float32)
        for i, r in zip(ids, rows):
            x[i, np.asarray(r[1].split(","), dtype=np.int64)] = 1.0
    else:
        dense = np.array([np.asarray(r[1].split(","), dtype=np.float32) for r in rows])
        x = np.empty_like(dense)
        x[ids] = dense
    y = np.empty(n, dtype=np.int64)
    y[ids] = labels
    return torch.from_numpy(x), torch.from_numpy(y)


def _finish_edges(edge_index: torch.Tensor, num_nodes: int, undirected: bool) -> torch.Tensor:
    """Apply the edge convention of the module docstring."""
    if undirected:
        edge_index, _ = remove_self_loops(edge_index)
        return to_undirected(edge_index, num_nodes=num_nodes)  # symmetrise + coalesce (dedupe, sort)
    return coalesce(edge_index, num_nodes=num_nodes)  # dedupe only; direction and self-loops kept


def _meta(name: str, data: Data, source: str, used: list, split: str, undirected: bool, notes: str = "") -> GraphMeta:
    ei = data.edge_index
    return GraphMeta(
        name=name,
        source=source,
        files=tuple(used),
        split=split,
        num_splits=int(data.train_mask.size(1)),
        undirected=undirected,
        self_loops=bool((ei[0] == ei[1]).any()),
        num_nodes=int(data.num_nodes),
        num_edges=int(ei.size(1)),
        num_features=int(data.x.size(1)),
        num_classes=int(data.y.max()) + 1,
        notes=notes,
    )


# -- heterophilic sets ----------------------------------------------------------------------------
def load_geom_gcn(name: str, data_dir: str | Path | None = None, *, undirected: bool = True) -> LoadedGraph:
    """Load texas, wisconsin, cornell, film (= actor), chameleon or squirrel with the 10 Geom-GCN splits.

    Args:
        name: dataset name (case-insensitive; ``actor`` is an alias of ``film``).
        data_dir: a folder holding ``geom-gcn/`` and ``heterophilous-graphs/`` (searched before
            ``$FORESIGHT_DATA``, the user cache and a pinned download; see ``foresight.core.data``).
        undirected: the edge convention (module docstring). Cornell only exists undirected.

    Returns:
        ``(data, meta)``; masks are [N, 10] bool.
    """
    name = _canonical(name, HETEROPHILIC)
    if name == "cornell":
        if not undirected:
            raise ValueError(
                "cornell is loaded from the Yandex cornell.npz (Geom-GCN's cornell features are a copy of "
                "Texas's), whose edges exist only undirected; use undirected=True"
            )
        return _load_yandex_cornell(data_dir)

    geom_paths = [f"new_data/{name}/out1_graph_edges.txt", *_split_paths(name)]
    if name in ("chameleon", "squirrel"):
        yandex = _Files(YANDEX, [f"{name}.npz"], data_dir)
        with np.load(yandex.path(f"{name}.npz"), allow_pickle=False) as z:
            x = torch.from_numpy(z["node_features"].astype(np.float32))
            y = torch.from_numpy(z["node_labels"].astype(np.int64))
        source = (
            f"features/labels: yandex-research/heterophilous-graphs@{YANDEX_COMMIT[:7]} {name}.npz; "
            f"edges and splits: graphdml-uiuc-jlu/geom-gcn@{GEOM_GCN_COMMIT[:7]}"
        )
        used_first = yandex.used
    else:
        geom_paths.append(f"new_data/{name}/out1_node_feature_label.txt")
        used_first = []
        source = f"graphdml-uiuc-jlu/geom-gcn@{GEOM_GCN_COMMIT[:7]} new_data/{name} + splits"
    geom = _Files(GEOM_GCN, geom_paths, data_dir)
    if name not in ("chameleon", "squirrel"):
        x, y = _read_geom_gcn_features(geom.path(f"new_data/{name}/out1_node_feature_label.txt"), name)
    n = x.size(0)
    edge_index = _read_geom_gcn_edges(geom.path(f"new_data/{name}/out1_graph_edges.txt"))
    if int(edge_index.max()) >= n:
        raise ValueError(f"{name}: edge list refers to node {int(edge_index.max())} but there are {n} nodes")
    data = Data(x=x, edge_index=_finish_edges(edge_index, n, undirected), y=y, **_read_geom_gcn_splits(geom, name, n))
    return LoadedGraph(data, _meta(name, data, source, used_first + geom.used, GEOM_GCN_SPLIT_NOTE, undirected))


def _load_yandex_cornell(data_dir: str | Path | None) -> LoadedGraph:
    files = _Files(YANDEX, ["cornell.npz"], data_dir)
    with np.load(files.path("cornell.npz"), allow_pickle=False) as z:
        x = torch.from_numpy(z["node_features"].astype(np.float32))
        y = torch.from_numpy(z["node_labels"].astype(np.int64))
        edges = torch.from_numpy(z["edges"].T.astype(np.int64).copy())  # [2, E], u < v, no self-loops
        masks = {f"{k}_mask": torch.from_numpy(z[f"{k}_masks"].T.copy()) for k in ("train", "val", "test")}
    data = Data(x=x, edge_index=_finish_edges(edges, x.size(0), True), y=y, **masks)
    source = (
        f"yandex-research/heterophilous-graphs@{YANDEX_COMMIT[:7]} cornell.npz (NOT the Geom-GCN cornell "
        "features, which are a byte copy of Texas's)"
    )
    notes = "nodes re-indexed relative to Geom-GCN; masks equal the Geom-GCN cornell split files"
    return LoadedGraph(data, _meta("cornell", data, source, files.used, GEOM_GCN_SPLIT_NOTE, True, notes))


# -- Planetoid ------------------------------------------------------------------------------------
class _PickledCsr(PickledInstance):
    """A ``scipy.sparse.csr_matrix`` pickle (NEWOBJ + BUILD of its ``__dict__``); see :func:`_csr_from_state`."""

    __slots__ = ()


def _defaultdict_of_list(factory: Any = None) -> collections.defaultdict:
    # the graph files pickle defaultdict(list); any other factory would be a callable the file chose
    if factory is not list:
        raise pickle.UnpicklingError(f"defaultdict factory must be list, got {factory!r}")
    return collections.defaultdict(list)


class _PlanetoidUnpickler(RestrictedUnpickler):
    """Unpickler for the Planetoid ``ind.*`` files: the six globals those files use, as inert stand-ins.

    The files (Python 2, protocol 2) reference exactly: ``scipy.sparse.csr.csr_matrix``,
    ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``,
    ``collections.defaultdict`` and ``__builtin__.list``. Any other global - ``os.system``,
    ``builtins.eval``, ... - raises ``pickle.UnpicklingError`` before it can be called. The allowed ones do
    not resolve to scipy / numpy either (see ``foresight.core.data.RestrictedUnpickler``): a matrix or an
    array comes out as a placeholder of its pickled state, a BUILD on anything but such a placeholder (a
    class object, say) is refused, and :func:`read_planetoid_pickle` validates the state before it builds
    the real ``csr_matrix`` / array with their public constructors.
    """

    ALLOWED: dict[tuple[str, str], Any] = {
        ("scipy.sparse.csr", "csr_matrix"): _PickledCsr,
        ("numpy.core.multiarray", "_reconstruct"): NUMPY_ARRAY_GLOBALS[("numpy.core.multiarray", "_reconstruct")],
        ("numpy", "ndarray"): NUMPY_ARRAY_GLOBALS[("numpy", "ndarray")],
        ("numpy", "dtype"): NUMPY_ARRAY_GLOBALS[("numpy", "dtype")],
        ("collections", "defaultdict"): SafeCall("collections.defaultdict", _defaultdict_of_list),
        ("__builtin__", "list"): list,  # only ever an argument (the defaultdict factory), never called
    }

    def __init__(self, file: Any, what: str) -> None:
        super().__init__(file, self.ALLOWED, what=what, encoding="latin1")


def _numeric(a: np.ndarray, path: str, what: str) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{path}: {what} must be numeric, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{path}: {what} holds NaN or Inf")
    return a


def _csr_from_state(state: Any, path: str) -> Any:
    """Validate a pickled csr_matrix's arrays, THEN build it: a bad index would crash ``toarray`` (no check)."""
    import scipy.sparse

    if type(state) is not dict:
        raise ValueError(f"{path}: csr_matrix state must be a dict, got {type(state).__name__}")
    if state.get("format", "csr") != "csr":
        raise ValueError(f"{path}: csr_matrix state has format {state.get('format')!r}, expected 'csr'")
    shape = state.get("_shape", state.get("shape"))
    if type(shape) is not tuple or len(shape) != 2 or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"{path}: csr_matrix shape must be two non-negative ints, got {shape!r:.80}")
    rows, cols = shape
    try:
        arrays = {k: decode_array(state[k]) for k in ("data", "indices", "indptr")}
    except KeyError as e:
        raise ValueError(f"{path}: csr_matrix state has no {e.args[0]!r} array") from None
    except ValueError as e:
        raise ValueError(f"{path}: csr_matrix: {e}") from None
    data, indices, indptr = (_numeric(arrays[k], path, f"csr_matrix {k}") for k in ("data", "indices", "indptr"))
    if data.ndim != 1 or indices.ndim != 1 or indptr.ndim != 1:
        raise ValueError(f"{path}: csr_matrix data/indices/indptr must be 1-D, got {data.shape}/{indices.shape}")
    if indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
        raise ValueError(f"{path}: csr_matrix indices/indptr must be integers, got {indices.dtype}/{indptr.dtype}")
    if len(indptr) != rows + 1 or indptr[0] != 0 or (np.diff(indptr.astype(np.int64)) < 0).any():
        raise ValueError(f"{path}: csr_matrix indptr must rise from 0 in {rows + 1} entries, got {len(indptr)}")
    if not int(indptr[-1]) == len(indices) == len(data):
        raise ValueError(
            f"{path}: csr_matrix indptr ends at {int(indptr[-1])}, with {len(indices)} indices, {len(data)} values"
        )
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= cols):
        raise ValueError(
            f"{path}: csr_matrix column index out of range [0, {cols}): {int(indices.min())}..{int(indices.max())}"
        )
    m = scipy.sparse.csr_matrix((data, indices, indptr), shape=(rows, cols))
    m.check_format(full_check=True)  # scipy's own verdict, after ours
    if type(m) is not scipy.sparse.csr_matrix:  # pragma: no cover - the constructor above
        raise ValueError(f"{path}: expected a csr_matrix, got {type(m).__name__}")
    return m


def _graph_from(obj: Any, path: str) -> collections.defaultdict:
    """Adjacency lists: int node -> list of int nodes, all non-negative (the node count is checked later)."""
    if type(obj) not in (dict, collections.defaultdict):
        raise ValueError(f"{path}: expected a dict of adjacency lists, got {type(obj).__name__}")
    for u, nbrs in obj.items():
        if type(u) is not int or u < 0 or type(nbrs) is not list or not all(type(v) is int and v >= 0 for v in nbrs):
            raise ValueError(f"{path}: adjacency entry {u!r:.20} must be a non-negative int -> list of such ints")
    return obj


def read_planetoid_pickle(path: str | Path) -> Any:
    """Read one Planetoid ``ind.*`` pickle with :class:`_PlanetoidUnpickler` (``latin1`` for Python 2).

    Returns a validated ``csr_matrix`` (x, tx, allx), a numeric ``np.ndarray`` (y, ty, ally) or the
    ``defaultdict`` graph. Raises ``pickle.UnpicklingError`` for a pickle that tries anything else and a
    one-line ValueError naming the file for a malformed matrix, array or graph.
    """
    data = Path(path).read_bytes()
    obj = _PlanetoidUnpickler(io.BytesIO(data), what=str(path)).load()
    if type(obj) is _PickledCsr:
        return _csr_from_state(obj.state, str(path))
    if type(obj) is PickledArray:
        try:
            return _numeric(decode_array(obj), str(path), "array")
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    if type(obj) in (dict, collections.defaultdict):
        return _graph_from(obj, str(path))
    raise ValueError(f"{path}: expected a csr_matrix, an array or a graph dict, got {type(obj).__name__}")


def _dense(m: Any, path: str) -> np.ndarray:
    import scipy.sparse

    if type(m) is scipy.sparse.csr_matrix:  # built by _csr_from_state, after validation
        return np.asarray(m.toarray(), dtype=np.float32)
    if isinstance(m, np.ndarray) and m.ndim == 2:
        return m.astype(np.float32)
    raise ValueError(f"{path}: expected a [nodes, features] matrix, got {type(m).__name__} {getattr(m, 'shape', '')}")


def _labels(a: Any, path: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.ndim != 2:
        raise ValueError(
            f"{path}: expected one-hot labels [nodes, classes], got {type(a).__name__} {getattr(a, 'shape', '')}"
        )
    return a.astype(np.float32)


def _check_planetoid_shapes(
    name: str, obj: dict[str, Any], allx: np.ndarray, tx: np.ndarray, ally: np.ndarray, ty: np.ndarray, test: np.ndarray
) -> None:
    """The files must agree before they are combined: a mismatch would index out of range or misalign rows."""
    x, y = _dense(obj["x"], f"ind.{name}.x"), _labels(obj["y"], f"ind.{name}.y")
    pairs = {"x/y": (x.shape[0], y.shape[0]), "allx/ally": (allx.shape[0], ally.shape[0])}
    pairs["tx/ty/test.index"] = (tx.shape[0], ty.shape[0], len(test))
    for what, counts in pairs.items():
        if len(set(counts)) != 1:
            raise ValueError(f"ind.{name}.{what}: row counts differ, {counts}")
    if not x.shape[1] == allx.shape[1] == tx.shape[1] or not y.shape[1] == ally.shape[1] == ty.shape[1]:
        raise ValueError(
            f"ind.{name}: feature widths {x.shape[1]}/{allx.shape[1]}/{tx.shape[1]} (x/allx/tx) or class counts "
            f"{y.shape[1]}/{ally.shape[1]}/{ty.shape[1]} (y/ally/ty) differ"
        )
    if len(test) == 0 or len(np.unique(test)) != len(test) or int(test.min()) != allx.shape[0]:
        raise ValueError(
            f"ind.{name}.test.index: ids must be distinct and start right after the {allx.shape[0]} allx rows, "
            f"got {len(test)} ids from {int(test.min()) if len(test) else None}"
        )


def load_planetoid(name: str, data_dir: str | Path | None = None, split: str = "geom-gcn") -> LoadedGraph:
    """Load Cora or CiteSeer (Kipf & Welling node order), always undirected without self-loops.

    Args:
        name: ``cora`` or ``citeseer``.
        data_dir: a folder holding ``planetoid/`` (and ``geom-gcn/`` for the Geom-GCN splits).
        split: ``"geom-gcn"``: the 10 Geom-GCN splits (~48/32/20, masks [N, 10]); ``"public"``: the
            Planetoid split (20 labels per class, the next 500 nodes for validation, the 1000 test ids;
            masks [N, 1]).

    Node order: ``vstack(allx, tx)`` with the ``tx`` rows moved to their ``test.index`` positions. For
    CiteSeer, 15 ids in the test range have no ``tx`` row (isolated nodes); they get zero features and a
    zero label row, whose argmax is class 0, exactly as in Kipf's and Geom-GCN's loaders (3327 nodes).
    """
    name = _canonical(name, PLANETOID_NAMES)
    if split not in ("geom-gcn", "public"):
        raise ValueError(f"split must be 'geom-gcn' or 'public', got {split!r}")
    keys = ("x", "y", "tx", "ty", "allx", "ally", "graph")
    files = _Files(PLANETOID, [f"ind.{name}.{k}" for k in (*keys, "test.index")], data_dir)
    obj = {k: read_planetoid_pickle(files.path(f"ind.{name}.{k}")) for k in keys}
    test_index = np.asarray(files.path(f"ind.{name}.test.index").read_text().split(), dtype=np.int64)

    allx, tx = _dense(obj["allx"], f"ind.{name}.allx"), _dense(obj["tx"], f"ind.{name}.tx")
    ally, ty = _labels(obj["ally"], f"ind.{name}.ally"), _labels(obj["ty"], f"ind.{name}.ty")
    _check_planetoid_shapes(name, obj, allx, tx, ally, ty, test_index)
    test_sorted = np.sort(test_index)
    # CiteSeer: the test range holds ids with no tx row; pad so that every id in it has a row
    n_test_range = int(test_sorted[-1]) - int(test_sorted[0]) + 1
    tx_full = np.zeros((n_test_range, tx.shape[1]), dtype=np.float32)
    ty_full = np.zeros((n_test_range, ty.shape[1]), dtype=np.float32)
    tx_full[test_sorted - test_sorted[0]] = tx
    ty_full[test_sorted - test_sorted[0]] = ty
    features = np.vstack([allx, tx_full])
    labels = np.vstack([ally, ty_full])
    # the i-th tx row belongs to node test_index[i]; Kipf's loader reorders test_sorted -> test_index
    features[test_index] = features[test_sorted]
    labels[test_index] = labels[test_sorted]
    num_nodes = features.shape[0]

    graph = obj["graph"]
    if not isinstance(graph, dict):
        raise ValueError(f"ind.{name}.graph: expected a dict of adjacency lists, got {type(graph).__name__}")
    src = [u for u, nbrs in graph.items() for _ in nbrs]
    dst = [v for nbrs in graph.values() for v in nbrs]
    # read_planetoid_pickle checked the types and signs; the node range needs the features' row count
    if len(graph) != num_nodes or max(max(src, default=0), max(dst, default=0)) >= num_nodes:
        raise ValueError(
            f"ind.{name}.graph has {len(graph)} nodes and ids up to {max(src + dst, default=0)}, "
            f"features have {num_nodes} nodes"
        )
    edge_index = torch.tensor([src, dst], dtype=torch.long)

    x = torch.from_numpy(features)
    y = torch.from_numpy(labels.argmax(axis=1).astype(np.int64))
    data = Data(x=x, edge_index=_finish_edges(edge_index, num_nodes, True), y=y)
    source = f"kimiyoung/planetoid@{PLANETOID_COMMIT[:7]} ind.{name}.*"
    notes = f"{n_test_range - len(test_index)} isolated test-range ids padded with zero rows (label 0)"
    if split == "public":
        n_train = np.asarray(obj["y"]).shape[0]
        masks = {k: torch.zeros(num_nodes, 1, dtype=torch.bool) for k in ("train_mask", "val_mask", "test_mask")}
        masks["train_mask"][:n_train, 0] = True
        masks["val_mask"][n_train : n_train + 500, 0] = True
        masks["test_mask"][torch.from_numpy(test_index), 0] = True
        split_note = "public Planetoid split (20 per class train, next 500 val, 1000 test ids)"
    else:
        geom = _Files(GEOM_GCN, _split_paths(name), data_dir)
        masks = _read_geom_gcn_splits(geom, name, num_nodes)
        files.used += geom.used
        split_note = GEOM_GCN_SPLIT_NOTE
        source += f"; splits: graphdml-uiuc-jlu/geom-gcn@{GEOM_GCN_COMMIT[:7]}"
        if name == "cora":
            notes += "; 223 unconnected Cora nodes are in no Geom-GCN mask"
    for k, v in masks.items():
        data[k] = v
    return LoadedGraph(data, _meta(name, data, source, files.used, split_note, True, notes))


def load_dataset(name: str, data_dir: str | Path | None = None, *, undirected: bool = True) -> LoadedGraph:
    """Any of the eight sets above with its Geom-GCN splits (Planetoid sets are always undirected)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key in PLANETOID_NAMES:
        if not undirected:
            raise ValueError(f"{name} is only provided undirected (undirected=True)")
        return load_planetoid(key, data_dir, split="geom-gcn")
    return load_geom_gcn(key, data_dir, undirected=undirected)
