"""Topology files: shipped graphs, native RBM masks, embeddings and their cache, bad files."""

import json

import networkx as nx
import pytest
import torch

import topologies
from topologies import TopologyError
from topologies.embedding import cache_path

# (name, n_left, n_right, couplers used) — sizes counted independently of this code (from dwave.graphs by hand)
NATIVE = [
    ("chimera_c4", 64, 64, 352),
    ("chimera_c16", 1024, 1024, 6016),
    ("pegasus_p16", 2820, 2820, 32400),
    ("zephyr_z12", 2400, 2400, 36864),
]


@pytest.mark.parametrize("name,n_l,n_r,edges", NATIVE)
def test_native_sizes_match_ocean_tables(name, n_l, n_r, edges):
    topo = topologies.load(name)
    left, right, mask = topo.native_rbm()
    assert (len(left), len(right), int(mask.sum())) == (n_l, n_r, edges)


@pytest.mark.parametrize("name", ["chimera_c4", "pegasus_p4", "zephyr_z2"])
def test_native_mask_is_exactly_the_bipartite_couplers(name):
    topo = topologies.load(name)
    g = topo.graph()
    left, right, mask = topo.native_rbm()
    assert not set(left) & set(right) and len(left) + len(right) == g.number_of_nodes()
    # every mask entry is a hardware coupler ...
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert all(g.has_edge(left[i], right[j]) for i, j in zip(rows.tolist(), cols.tolist()))
    # ... and the masked graph is bipartite with the two sides as colour classes
    sub = nx.Graph((left[i], right[j]) for i, j in zip(rows.tolist(), cols.tolist()))
    assert nx.is_bipartite(sub) and nx.is_connected(sub)
    if topo.family == "chimera":  # Chimera is bipartite as a whole: all couplers are used
        assert int(mask.sum()) == g.number_of_edges()


@pytest.mark.parametrize("name", ["chimera_c4", "pegasus_p4", "zephyr_z2"])
def test_limited_region_is_connected_and_exact_size(name):
    topo = topologies.load(name)
    left, right, mask = topo.native_rbm(10, 12)
    assert (len(left), len(right), tuple(mask.shape)) == (10, 12, (10, 12))
    g = topo.graph()
    for i in range(10):
        for j in range(12):
            assert bool(mask[i, j]) == (g.has_edge(left[i], right[j]) and
                                        _crosses(topo, left[i], right[j]))
    sub = nx.Graph()
    sub.add_nodes_from(left + right)
    sub.add_edges_from((left[i], right[j]) for i, j in torch.nonzero(mask).tolist())
    assert nx.is_connected(sub)
    assert torch.equal(topo.coupling_mask(10, 12), mask)


def _crosses(topo, u, v):
    all_left, _ = topo.bipartite_sides()
    return (u in all_left) != (v in all_left)


def test_dense_and_embedded_have_no_mask():
    assert topologies.load("dense").coupling_mask(5, 7) is None
    assert topologies.load("zephyr_z2_embedded").coupling_mask(8, 8) is None


def test_shipped_files_declare_qpu_defaults():
    for name in topologies.known():
        topo = topologies.load(name)
        if topo.mode != "dense":
            assert topo.qpu["beta_eff"] > 0 and topo.qpu["num_reads"] >= 1


def _embedded_file(tmp_path, name="z2emb", shape="[2, 4]"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"family: zephyr\nshape: {shape}\nmode: embedded\n")
    return path


def test_embedding_is_valid_cached_and_checked(tmp_path):
    topo = topologies.load(_embedded_file(tmp_path))
    emb = topo.embedding(12, 12, cache_dir=tmp_path)
    g = topo.graph()
    # independent validity check: disjoint connected chains, every logical edge has a coupler
    chains = [set(emb[k]) for k in range(24)]
    assert sum(map(len, chains)) == len(set().union(*chains))
    assert all(nx.is_connected(g.subgraph(c)) for c in chains)
    assert all(any(g.has_edge(p, q) for p in emb[i] for q in emb[j])
               for i in range(12) for j in range(12, 24))
    path = cache_path(topo, 12, 12, tmp_path)
    assert path.is_file()
    assert topo.embedding(12, 12, cache_dir=tmp_path) == emb  # read back from the cache
    stored = json.loads(path.read_text())
    stored["embedding"]["0"], stored["embedding"]["12"] = stored["embedding"]["12"], [10**6]
    path.write_text(json.dumps(stored))
    with pytest.raises(TopologyError, match="does not match") as err:
        topo.embedding(12, 12, cache_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_embedding_cache_defaults_to_env_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DVAEQ_CACHE_DIR", str(tmp_path / "c"))
    topo = topologies.load(_embedded_file(tmp_path))
    topo.embedding(4, 4)
    assert cache_path(topo, 4, 4).parent == tmp_path / "c" / "embeddings"
    assert cache_path(topo, 4, 4).is_file()


@pytest.mark.parametrize("text,match", [
    ("family: hexagon\nshape: [4]\nmode: native\n", "unknown family"),
    ("family: pegasus\nshape: [1]\nmode: native\n", "impossible"),
    ("family: chimera\nshape: [4, 4, 4, 4]\nmode: native\n", "impossible"),
    ("family: zephyr\nshape: [0]\nmode: native\n", "impossible"),
    ("family: zephyr\nshape: [2]\nmode: quantum\n", "mode"),
    ("family: zephyr\nshape: [2]\nmode: native\ncolour: red\n", "unknown key 'colour'"),
    ("family: zephyr\nshape: [2]\nmode: native\nqpu: [1, 2]\n", "'qpu' must be a mapping"),
    ("mode: dense\nfamily: zephyr\n", "dense takes no family"),
    ("family: zephyr\nshape: [2\n", "not valid YAML"),
])
def test_bad_files_are_one_line_errors(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TopologyError, match=match) as err:
        topologies.load(path)
    assert "\n" not in str(err.value)


def test_rbm_larger_than_hardware_is_an_error(tmp_path):
    with pytest.raises(TopologyError, match="larger than the hardware"):
        topologies.load("chimera_c4").native_rbm(65, 10)
    with pytest.raises(TopologyError, match="larger than the biclique"):
        topologies.load(_embedded_file(tmp_path)).embedding(60, 60, cache_dir=tmp_path)
    with pytest.raises(TopologyError, match="unknown topology 'nowhere'"):
        topologies.load("nowhere")


def test_broken_qubits_and_couplers_are_avoided(tmp_path):
    full = topologies.load("chimera_c4")
    left, right, _ = full.native_rbm()
    path = tmp_path / "c4_broken.yaml"
    path.write_text("family: chimera\nshape: [4, 4, 4]\nmode: native\n"
                    f"broken_qubits: [{left[0]}]\nbroken_couplers: [[{left[1]}, {right[0]}]]\n")
    topo = topologies.load(path)
    b_left, b_right, mask = topo.native_rbm(20, 20)
    assert left[0] not in b_left
    if left[1] in b_left and right[0] in b_right:
        assert mask[b_left.index(left[1]), b_right.index(right[0])] == 0
    assert topo.graph().number_of_nodes() == 127
    emb_topo = tmp_path / "z2_broken.yaml"
    emb_topo.write_text("family: zephyr\nshape: [2, 4]\nmode: embedded\nbroken_qubits: [0, 1]\n")
    emb = topologies.load(emb_topo).embedding(8, 8, cache_dir=tmp_path)
    assert not {0, 1} & {q for chain in emb.values() for q in chain}
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: chimera\nshape: [4]\nmode: native\nbroken_qubits: [100000]\n")
    with pytest.raises(TopologyError, match="broken 100000 is not in"):
        topologies.load(bad)
