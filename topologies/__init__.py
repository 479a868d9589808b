"""Hardware graphs (Chimera, Pegasus, Zephyr) described in YAML.

    import topologies
    topo = topologies.load("pegasus_p16")          # a shipped name, or a path to a YAML file
    left, right, mask = topo.native_rbm(200, 200)  # qubits of each side + coupling mask
    mask = topo.coupling_mask(200, 200)            # what the prior uses (None if dense/embedded)

See `topologies.loader` for the file format and `topologies.embedding` for embedded mode.
"""

from topologies.loader import Topology, TopologyError, known, load

__all__ = ["Topology", "TopologyError", "known", "load"]
