"""Minor-embeddings of dense RBMs (K_{n_left,n_right}) on a topology, cached on disk.

The embedding is computed once per (topology, shape, RBM size) by the family's constructive
biclique embedder (`dwave.embedding.<family>.find_biclique_embedding`), or by minorminer with a
fixed seed when the file says `embedder: minorminer`. It is stored as JSON under
$DVAEQ_CACHE_DIR/embeddings (default: $XDG_CACHE_HOME or ~/.cache, then dvae-q/embeddings) and
checked with `dwave.embedding.is_valid_embedding` every time it is loaded, so a stale or edited
file is an error, never a silent re-embed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from storage.cache import cache_root
from storage.files import write_atomic
from topologies.errors import TopologyError


class Topology(Protocol):
    """What an embedding needs of a `topologies.topology.Topology` (declared here so this
    module does not import the class that calls it)."""

    name: str
    family: str | None
    shape: tuple[int, ...]
    embedder: str
    broken_qubits: tuple[int, ...]
    broken_couplers: tuple[tuple[int, int], ...]

    def graph(self): ...


def cache_path(topology: Topology, num_left: int, num_right: int, cache_dir=None) -> Path:
    shape = "x".join(map(str, topology.shape))
    broken = ""
    if topology.broken_qubits or topology.broken_couplers:
        import hashlib

        # a different set of broken qubits is a different graph: a different cache entry
        text = repr((topology.broken_qubits, topology.broken_couplers)).encode()
        broken = "-b" + hashlib.sha256(text).hexdigest()[:12]
    file = (f"{topology.name}-{topology.family}{shape}{broken}-{topology.embedder}"
            f"-K{num_left}x{num_right}.json")
    return cache_root(cache_dir) / "embeddings" / file


def _source_graph(num_left: int, num_right: int):
    import networkx as nx

    # labels 0..n_left−1 on the left and n_left.. on the right, as in BipartiteModel.to_bqm
    return nx.complete_bipartite_graph(num_left, num_right)


def compute(topology: Topology, num_left: int, num_right: int) -> dict[int, tuple[int, ...]]:
    """A fresh embedding of K_{num_left,num_right}; TopologyError if it does not fit."""
    target = topology.graph()
    if topology.embedder == "minorminer":
        import minorminer

        found = minorminer.find_embedding(
            _source_graph(num_left, num_right).edges, target.edges, random_seed=0, timeout=300
        )
        if not found:
            raise TopologyError(
                f"topology '{topology.name}': minorminer found no embedding of a dense "
                f"{num_left}+{num_right} RBM; shrink the RBM or use a bigger topology"
            )
        return {int(k): tuple(int(q) for q in v) for k, v in found.items()}
    import importlib

    module = importlib.import_module(f"dwave.embedding.{topology.family}")
    try:
        left, right = module.find_biclique_embedding(num_left, num_right, target_graph=target)
    except ValueError:
        raise TopologyError(
            f"topology '{topology.name}': a dense {num_left}+{num_right} RBM is larger than "
            f"the biclique {topology.family}{list(topology.shape)} can embed; shrink the RBM"
        ) from None
    emb = {**left, **right}
    return {int(k): tuple(int(q) for q in v) for k, v in emb.items()}


def validate(topology: Topology, emb: dict, num_left: int, num_right: int, where: str) -> None:
    """TopologyError unless `emb` embeds K_{num_left,num_right} in the topology's graph."""
    from dwave.embedding import is_valid_embedding

    n = num_left + num_right
    if sorted(emb) != list(range(n)):
        raise TopologyError(f"{where}: embedding units are not 0..{n - 1}; delete the file")
    if not is_valid_embedding(emb, _source_graph(num_left, num_right), topology.graph()):
        raise TopologyError(
            f"{where}: embedding does not match topology '{topology.name}' "
            f"({topology.family}{list(topology.shape)}, K{num_left},{num_right}); delete the file"
        )


def cached_embedding(topology: Topology, num_left: int, num_right: int, cache_dir=None):
    """The cached embedding (validated), computing and storing it on first use."""
    if num_left < 1 or num_right < 1:
        raise TopologyError(f"topology '{topology.name}': an RBM needs >= 1 unit per side")
    path = cache_path(topology, num_left, num_right, cache_dir)
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            emb = {int(k): tuple(int(q) for q in v) for k, v in stored["embedding"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TopologyError(f"embedding cache {path}: unreadable; delete the file") from None
        validate(topology, emb, num_left, num_right, f"embedding cache {path}")
        return emb
    emb = compute(topology, num_left, num_right)
    validate(topology, emb, num_left, num_right, f"computed embedding for '{topology.name}'")
    record = {
        "topology": topology.name,
        "family": topology.family,
        "shape": list(topology.shape),
        "num_left": num_left,
        "num_right": num_right,
        "embedding": {str(k): list(v) for k, v in sorted(emb.items())},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(record))
    except OSError as exc:
        raise TopologyError(
            f"cannot write the embedding cache {path} ({exc.strerror or type(exc).__name__}); "
            "point DVAEQ_CACHE_DIR at a writable folder"
        ) from None
    return emb
