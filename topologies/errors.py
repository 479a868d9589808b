"""The one error type of the topologies package."""


class TopologyError(ValueError):
    """A topology file or request that cannot be used; the message is one line naming the fix."""
