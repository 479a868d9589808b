"""Hardware graphs (Chimera, Pegasus, Zephyr) described in YAML.

    import topologies
    topo = topologies.load("pegasus_p16")          # a shipped name, or a path to a YAML file
    left, right, mask = topo.native_rbm(200, 200)  # qubits of each side + coupling mask
    mask = topo.coupling_mask(200, 200)            # what the prior uses (None if dense/embedded)

See `topologies.loader` for the file format, `topologies.topology` for what a loaded topology
offers, `topologies.graphs` for the graphs and `topologies.embedding` for embedded mode.
"""

from topologies.errors import TopologyError
from topologies.loader import known, load
from topologies.topology import Topology

__all__ = ["Topology", "TopologyError", "known", "load"]
