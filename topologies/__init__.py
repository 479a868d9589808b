"""Hardware graphs (Chimera, Pegasus, Zephyr) described in YAML."""
