"""dvae-q: discrete VAEs with relaxed Boltzmann priors (DVAE, DVAE++, DVAE#).

    import dvae_q
    run = dvae_q.fit("smoke", {"steps": 40}, run_dir="runs/smoke")
    run = dvae_q.load_run("runs/smoke")

`fit` and `load_run` are imported on first use, so `import dvae_q` stays light.
"""

__version__ = "0.1.0"
__all__ = ["fit", "load_run"]


def __getattr__(name):
    if name in __all__:
        from dvae_q import run

        return getattr(run, name)
    raise AttributeError(f"module 'dvae_q' has no attribute {name!r}")
