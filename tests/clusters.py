"""A multi-node Ray cluster on this machine for the tests that need one (`ray.cluster_utils`:
several raylets on loopback), with token authentication, its own RAY_TMPDIR (so Ray's record of
"the cluster on this machine" stays the test's) and the environment put back afterwards."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def private_cluster(module, token_dir: Path, namespace: str, prefix: str, **environ):
    """A head without CPUs, this process connected to it; `module` (the test module) is pickled
    by value, since workers cannot import tests. `environ` is set for the cluster's lifetime
    (the raylets' workers inherit it)."""
    import ray
    from ray import cloudpickle
    from ray._raylet import AuthenticationTokenLoader, Config
    from ray.cluster_utils import Cluster

    from samplers.service import head

    keys = ("RAY_TMPDIR", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS",
            head.GCS_WAIT_ENV, head.CLIENT_WAIT_ENV, *environ)
    saved = {key: os.environ.get(key) for key in keys}
    tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # Ray's socket paths must stay short
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.update(RAY_TMPDIR=tmp, RAY_AUTH_TOKEN_PATH=str(token_dir / "auth_token"),
                      **environ)
    cloudpickle.register_pickle_by_value(module)
    cluster = None
    try:
        head.require_token_auth(create=True)
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        ray.init(address=cluster.address, namespace=namespace, log_to_driver=False,
                 logging_level="ERROR")
        yield cluster
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        cloudpickle.unregister_pickle_by_value(module)
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
        shutil.rmtree(tmp, ignore_errors=True)
