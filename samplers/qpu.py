"""`qpu`: a D-Wave quantum annealer (or any structured dimod sampler) as a Boltzmann sampler.

    sampler = samplers.get("qpu", topology="pegasus_p16")                   # real QPU, lazily
    sampler = samplers.get("qpu", topology="chimera_c4",
                           child_sampler="samplers.testing:thermal_mock",
                           child_kwargs={"topology": "chimera_c4", "beta": 5.0})  # offline

**β convention.** A QPU returns samples ≈ exp(−β_eff·E_prog) for an unknown, instance-dependent
β_eff (ocean_notes §11). To sample the model p(z) ∝ exp(−β·E(z)) it programs the Ising form of
β·E scaled by 1/β_eff (h, J ← (β/β_eff)·(h, J), `auto_scale=False`), so that
exp(−β_eff·E_prog) = exp(−β·E). β_eff starts at the `beta_eff` option (default: the topology
file's `qpu.beta_eff`) and is re-measured by pseudo-likelihood against the problem actually
programmed every `recalibrate_every` calls, or by `samplers.temperature.calibrate`.

**Layers** (composites, STYLE §2), innermost first:
1. the child: `DWaveSampler` built on the first `sample()` call (never at import or
   construction; token from DWAVE_API_TOKEN or the dwave config file, resolved by dwave.cloud),
   or an injected `child_sampler` (an instance, or "module:callable" factory + `child_kwargs`);
2. `RangeGuard`: checks the programmed h, J against the solver's `h_range`/`j_range` (the mock
   does not) and raises (`range_policy: error`) or clips and reports the clipped fraction
   (`range_policy: clip`);
3. native mode: the model's units are the topology's qubits (chains of length 1, no composite);
   embedded mode: `FixedEmbeddingComposite` with the topology's cached embedding.

Raw answers (`answer_mode='raw'`); more samples than `num_reads` are drawn in several calls.
Transient cloud errors are retried with exponential backoff (`max_retries`, `retry_backoff_s`);
a permanent one raises `QPUError` and leaves the sampler's state as before the call. API tokens
never appear in messages, `info`, `state_dict` or `repr`.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import time
from functools import lru_cache

import numpy as np
import torch

import topologies
from samplers.base import (SEED, Option, Sampler, SamplerFailure, SamplerOptionError,
                           check_options, non_negative, positive)
from samplers.model import BipartiteModel

# Solver parameters this backend sets itself; anything else goes through `solver_parameters`.
QPU_PARAMETERS = ("annealing_time", "programming_thermalization", "readout_thermalization")
# Options a topology file's `qpu:` block may default (facts about a chip and its solver); code
# paths and client settings are left out, so a shared topology file never names code to import.
TOPOLOGY_DEFAULTS = ("solver", "num_reads", *QPU_PARAMETERS, "chain_strength",
                     "chain_break_method", "beta_eff")
CHAIN_BREAK_METHODS = ("majority_vote", "discard", "weighted_random")


class QPUError(SamplerFailure):
    """A permanent QPU/cloud failure, or retries exhausted (message free of secrets)."""


class QPURangeError(QPUError):
    """Programmed h or J outside the solver's range under `range_policy: error`."""


class QPUConfigError(SamplerOptionError):
    """Missing token, unknown solver, or a solver/model that does not fit the topology."""


def _secrets() -> list[str]:
    """Token values that must never be shown: the environment's and the dwave config file's."""
    found = [os.environ.get("DWAVE_API_TOKEN") or ""]
    try:
        from dwave.cloud.config import load_config

        found.append(str(load_config().get("token") or ""))
    except Exception:  # an unreadable config holds no token we could leak
        pass
    return [s for s in found if len(s) >= 4]


def redact(text: str) -> str:
    """`text` with every known API token replaced by '***'."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


def _transient(exc: BaseException) -> bool:
    """Network hiccups, timeouts and server-side 5xx errors are worth retrying; others are not."""
    import dwave.cloud.api.exceptions as api_exc
    import dwave.cloud.exceptions as cloud_exc

    kinds = (cloud_exc.RequestTimeout, cloud_exc.PollingTimeout, cloud_exc.SolverOfflineError,
             cloud_exc.ProblemUploadError, api_exc.RequestTimeout, api_exc.InternalServerError,
             ConnectionError, TimeoutError)
    try:
        import requests

        kinds = kinds + (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    except ImportError:
        pass
    return isinstance(exc, kinds)


def _from_cloud(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return module.startswith(("dwave.cloud", "requests", "urllib3")) or isinstance(exc, OSError)


def _resolve_factory(spec: str):
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise SamplerOptionError(
            f"sampler 'qpu' option 'child_sampler': {spec!r} is not 'module:callable'"
        )
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise SamplerOptionError(f"sampler 'qpu' option 'child_sampler': cannot import '{spec}'") from None
    if not callable(factory):
        raise SamplerOptionError(f"sampler 'qpu' option 'child_sampler': '{spec}' is not callable")
    return factory


def _range(properties: dict, key: str) -> tuple[float, float]:
    if key not in properties:
        raise QPUConfigError(f"sampler 'qpu': the child sampler has no '{key}' property")
    lo, hi = properties[key]
    return float(lo), float(hi)


def _make_range_guard(child, policy: str):
    import dimod

    class RangeGuard(dimod.Sampler, dimod.Structured):
        """Checks (or clips) a BQM's h, J against the child's h_range/j_range, then forwards it.
        After each call: `last_bqm` (as programmed) and `clipped_fraction`."""

        def __init__(self):
            self.child = child
            self.h_range = _range(child.properties, "h_range")
            self.j_range = _range(child.properties, "j_range")
            self.last_bqm = None
            self.clipped_fraction = 0.0

        @property
        def nodelist(self):
            return self.child.nodelist

        @property
        def edgelist(self):
            return self.child.edgelist

        @property
        def properties(self):
            return self.child.properties

        @property
        def parameters(self):
            return self.child.parameters

        def sample(self, bqm, **kwargs):
            if bqm.vartype is not dimod.SPIN:
                bqm = bqm.change_vartype(dimod.SPIN, inplace=False)
            h, (row, col, j), offset = bqm.to_numpy_vectors()
            labels = list(bqm.variables)
            over_h = (h < self.h_range[0]) | (h > self.h_range[1])
            over_j = (j < self.j_range[0]) | (j > self.j_range[1])
            total = len(h) + len(j)
            self.clipped_fraction = (over_h.sum() + over_j.sum()) / max(total, 1)
            if over_h.any() or over_j.any():
                if policy == "error":
                    raise QPURangeError(self._describe(h, j, row, col, labels, over_h, over_j))
                h = np.clip(h, *self.h_range)
                j = np.clip(j, *self.j_range)
                bqm = dimod.BinaryQuadraticModel.from_numpy_vectors(
                    h, (row, col, j), offset, dimod.SPIN, variable_order=labels
                )
            self.last_bqm = bqm
            return self.child.sample(bqm, **kwargs)

        def _describe(self, h, j, row, col, labels, over_h, over_j) -> str:
            def excess(v, rng):
                return np.maximum(rng[0] - v, v - rng[1])

            eh = np.where(over_h, excess(h, self.h_range), -np.inf)
            ej = np.where(over_j, excess(j, self.j_range), -np.inf)
            if len(ej) and (not len(eh) or ej.max() > eh.max()):
                k = int(ej.argmax())
                worst = (f"J = {j[k]:.4g} on coupler ({labels[row[k]]}, {labels[col[k]]}) "
                         f"outside j_range {list(self.j_range)}")
            else:
                k = int(eh.argmax())
                worst = f"h = {h[k]:.4g} on qubit {labels[k]} outside h_range {list(self.h_range)}"
            return (f"sampler 'qpu': programmed {worst} ({int(over_h.sum() + over_j.sum())} terms "
                    "out of range); raise beta_eff, lower chain_strength, or set range_policy: clip")

    return RangeGuard()


def topology_defaults(topology: topologies.Topology) -> dict:
    """The topology file's `qpu:` block, validated with this sampler's own option rules."""
    block = dict(topology.qpu)
    where = f"topology '{topology.name}' ({topology.source or 'in memory'})"
    unknown = sorted(set(block) - set(TOPOLOGY_DEFAULTS))
    if unknown:
        raise SamplerOptionError(
            f"{where}: unknown qpu key '{unknown[0]}'; accepted: {', '.join(TOPOLOGY_DEFAULTS)}"
        )
    try:
        return check_options("qpu", block)
    except SamplerOptionError as exc:
        raise SamplerOptionError(f"{where}: qpu block: {exc}") from None


class QPUSampler(Sampler):
    name = "qpu"
    topology_defaults = staticmethod(topology_defaults)
    parameters = {
        "topology": Option(None, (str, topologies.Topology), None,
                           "topology name or YAML path (native or embedded)", nullable=True,
                           run_key="topology"),
        "child_sampler": Option(None, (str, object), None,
                                "structured dimod sampler, or 'module:callable' factory; "
                                "null: DWaveSampler", nullable=True),
        "child_kwargs": Option({}, (dict,), None, "keyword arguments of the child factory"),
        "solver": Option(None, (str, dict), None, "solver name or feature filter", nullable=True),
        "client_config": Option({}, (dict,), None,
                                "DWaveSampler/dwave.cloud options (profile, region, "
                                "config_file, endpoint); never a token"),
        "beta_eff": Option(None, (int, float), positive, "initial β_eff > 0", nullable=True),
        "num_reads": Option(None, (int,), lambda v: 1 <= v <= 10000, "reads per call, 1..10000",
                            nullable=True),
        "annealing_time": Option(None, (int, float), positive, "µs > 0", nullable=True),
        "programming_thermalization": Option(None, (int, float), non_negative, "µs >= 0",
                                             nullable=True),
        "readout_thermalization": Option(None, (int, float), non_negative, "µs >= 0",
                                         nullable=True),
        "solver_parameters": Option({}, (dict,), None, "extra solver parameters per call"),
        "chain_strength": Option(None, (int, float), positive, "> 0; null: torque compensation",
                                 nullable=True),
        "chain_break_method": Option(None, (str,), lambda v: v in CHAIN_BREAK_METHODS,
                                     "majority_vote, discard or weighted_random", nullable=True),
        "range_policy": Option("error", (str,), lambda v: v in ("error", "clip"), "error or clip"),
        "recalibrate_every": Option(0, (int,), non_negative,
                                    "re-measure β_eff every N calls; 0: never"),
        "calibration_bootstrap": Option(50, (int,), non_negative, "bootstrap replicates"),
        "max_retries": Option(3, (int,), non_negative, "retries of transient errors"),
        "retry_backoff_s": Option(1.0, (int, float), non_negative,
                                  "first retry delay (s), doubled each retry"),
        "seed": SEED,
    }

    def __init__(self, **options):
        super().__init__(**options)
        if "token" in self.options["client_config"]:
            # refused without echoing the value: configs are written to run directories
            raise SamplerOptionError(
                "sampler 'qpu' option 'client_config': never put a token in a config; set "
                "DWAVE_API_TOKEN or use the dwave config file"
            )
        if self.options["topology"] is None:
            raise SamplerOptionError("sampler 'qpu' needs option 'topology' (a name or YAML path)")
        self.topology = topologies.load(self.options["topology"])
        if self.topology.mode == "dense":
            raise SamplerOptionError(
                f"sampler 'qpu': topology '{self.topology.name}' is dense; use a native or "
                "embedded topology"
            )
        defaults = topology_defaults(self.topology)
        pick = lambda key: self.options[key] if self.options[key] is not None else defaults.get(key)  # noqa: E731
        self.beta_eff = pick("beta_eff")
        if self.beta_eff is None:
            raise SamplerOptionError(
                f"sampler 'qpu' needs option 'beta_eff' (topology '{self.topology.name}' has no "
                "qpu.beta_eff default)"
            )
        self.beta_eff = float(self.beta_eff)
        self.num_reads = pick("num_reads")
        self.solver = pick("solver")
        self.chain_strength = pick("chain_strength")
        self.chain_break_method = pick("chain_break_method") or "majority_vote"
        self._explicit = {k: self.options[k] for k in QPU_PARAMETERS if self.options[k] is not None}
        self._defaults = {k: defaults[k] for k in QPU_PARAMETERS if defaults.get(k) is not None}
        spec = self.options["child_sampler"]
        self._factory = _resolve_factory(spec) if isinstance(spec, str) else None
        if spec is not None and not isinstance(spec, str) and self.options["child_kwargs"]:
            raise SamplerOptionError("sampler 'qpu': child_kwargs only apply to a factory path")
        self._child = None
        self._guard = None
        self._plans: dict = {}
        self._rng = np.random.default_rng(self.options["seed"])
        self.calls = 0
        self.beta_eff_history: list[float] = [self.beta_eff]
        self._last: tuple | None = None

    # ---- child, lazily -------------------------------------------------------------------
    def preflight(self) -> None:
        """Without a child sampler the D-Wave client needs a token: resolve the client's
        configuration locally (environment, config file; no network) and fail now if it has
        none, so training never creates a run directory it cannot use."""
        if self.options["child_sampler"] is not None or self._child is not None:
            return
        from dwave.cloud.config import load_config

        try:
            found = load_config(**{k: v for k, v in self.options["client_config"].items()
                                   if k in ("config_file", "profile")})
        except Exception as exc:  # an unreadable dwave config file
            raise QPUConfigError(f"sampler 'qpu': cannot read the D-Wave client configuration "
                                 f"({type(exc).__name__})") from None
        if not found.get("token"):
            raise QPUConfigError(
                "sampler 'qpu': no D-Wave API token; set DWAVE_API_TOKEN or create a config "
                "file with `dwave config create`"
            )

    def _connect(self):
        from dwave.cloud.exceptions import SolverNotFoundError
        from dwave.system import DWaveSampler

        kwargs = dict(self.options["client_config"])
        if self.solver is not None:
            kwargs["solver"] = self.solver
        try:
            return DWaveSampler(**kwargs)
        except SolverNotFoundError:
            raise QPUConfigError(
                f"sampler 'qpu': no available solver matches {self.solver!r}; check the "
                "topology's qpu.solver or the 'solver' option"
            ) from None
        except ValueError as exc:
            if "token" in str(exc).lower():
                raise QPUConfigError(
                    "sampler 'qpu': no D-Wave API token; set DWAVE_API_TOKEN or create a config "
                    "file with `dwave config create`"
                ) from None
            raise QPUConfigError(f"sampler 'qpu': cannot connect: {redact(str(exc))}") from None

    def _ensure_child(self):
        if self._child is not None:
            return
        spec = self.options["child_sampler"]
        if spec is None:
            child = self._with_retries(self._connect)[0]
        elif self._factory is not None:
            kwargs = dict(self.options["child_kwargs"])
            # a factory that takes a topology (e.g. samplers.testing:thermal_mock) gets ours
            if "topology" in inspect.signature(self._factory).parameters:
                kwargs.setdefault("topology", self.topology)
            child = self._factory(**kwargs)
        else:
            child = spec
        for attr in ("nodelist", "edgelist", "properties", "sample"):
            if not hasattr(child, attr):
                raise QPUConfigError(
                    f"sampler 'qpu': child sampler {type(child).__name__} is not a structured "
                    f"dimod sampler (no '{attr}')"
                )
        found = child.properties.get("topology")
        if found is not None and (found.get("type") != self.topology.family
                                  or list(found.get("shape", [])) != list(self.topology.shape)):
            raise QPUConfigError(
                f"sampler 'qpu': solver topology {found.get('type')}{list(found.get('shape', []))} "
                f"does not match topology '{self.topology.name}' "
                f"({self.topology.family}{list(self.topology.shape)})"
            )
        self._guard = _make_range_guard(child, self.options["range_policy"])
        self._child = child

    # ---- per model size: qubits or embedding ---------------------------------------------
    def _plan(self, model: BipartiteModel) -> dict:
        key = (model.num_left, model.num_right)
        if key in self._plans:
            return self._plans[key]
        nodes = set(self._child.nodelist)
        edges = {frozenset(e) for e in self._child.edgelist}
        topo = self.topology
        if topo.mode == "native":
            left, right, mask = topo.native_rbm(*key)
            labels = left + right
            rows, cols = np.nonzero(mask.numpy())
            pairs = [(labels[i], labels[model.num_left + j]) for i, j in zip(rows, cols)]
            qubits = set(labels)
            plan = {"labels": labels, "rows": rows, "cols": cols, "mask": mask.numpy() != 0,
                    "num_qubits": len(labels), "sampler": self._guard}
        else:
            emb = topo.embedding(*key)
            qubits = {q for chain in emb.values() for q in chain}
            pairs = []
            rows, cols = np.nonzero(np.ones(key))
            from dwave.system import FixedEmbeddingComposite

            plan = {"labels": list(range(model.num_units)), "rows": rows, "cols": cols,
                    "mask": None, "num_qubits": len(qubits),
                    "sampler": FixedEmbeddingComposite(self._guard, emb)}
        missing = sorted(qubits - nodes)
        if missing:
            raise QPUConfigError(
                f"sampler 'qpu': qubit {missing[0]} ({len(missing)} in all) of topology "
                f"'{topo.name}' is absent on the solver (dead qubit); list the solver's missing qubits "
                "under broken_qubits in the topology file"
            )
        dead = [p for p in pairs if frozenset(p) not in edges]
        if dead:
            raise QPUConfigError(
                f"sampler 'qpu': coupler {dead[0]} ({len(dead)} in all) of topology "
                f"'{topo.name}' is absent on the solver; list it under broken_couplers in the topology file"
            )
        plan["label_array"] = np.asarray(plan["labels"], dtype=np.int64)
        self._plans[key] = plan
        return plan

    def _fits_mask(self, model: BipartiteModel, plan: dict) -> bool:
        """Whether the model's own mask lies within the topology's couplers (then so does W).
        Checked once per mask tensor and version, since training passes the same buffer."""
        mask = model.mask
        if mask is None:
            return False
        key = (mask.data_ptr(), mask._version, tuple(mask.shape), str(mask.device))
        if plan.get("verified_mask") != key:
            if bool((mask.detach().cpu().numpy()[~plan["mask"]] != 0).any()):
                return False
            plan["verified_mask"] = key
        return True

    def programmed_bqm(self, model: BipartiteModel):
        """The SPIN BQM sent for `model`: Ising form of β·E on the plan's labels, times 1/β_eff
        (before range checks). Built from arrays (ocean_notes §2)."""
        import dimod

        self._ensure_child()
        plan = self._plan(model)
        n_l = model.num_left
        rows, cols = plan["rows"], plan["cols"]
        w = model.W.detach()
        # only the couplers' values are gathered: O(couplers), not O(n_left·n_right)
        wv_t = w[torch.as_tensor(rows, device=w.device), torch.as_tensor(cols, device=w.device)]
        if plan["mask"] is not None and not self._fits_mask(model, plan) \
                and torch.count_nonzero(w) != torch.count_nonzero(wv_t):
            outside = (w.cpu().numpy() != 0) & ~plan["mask"]
            i, j = np.argwhere(outside)[0]
            raise QPUConfigError(
                f"sampler 'qpu': the model couples units {i} and {n_l + j}, which have no coupler "
                f"on topology '{self.topology.name}'; train with its coupling mask"
            )
        wv = wv_t.cpu().double().numpy()
        a = torch.cat([model.a_left, model.a_right]).detach().cpu().double().numpy()
        field = np.bincount(rows, weights=wv, minlength=model.num_units)
        field += np.bincount(cols + n_l, weights=wv, minlength=model.num_units)
        scale = float(model.beta) / self.beta_eff
        h = -scale * (a / 2 + field / 4)
        quad = -scale * wv / 4
        return dimod.BinaryQuadraticModel.from_numpy_vectors(
            h, (rows, cols + n_l, quad), 0.0, dimod.SPIN, variable_order=plan["labels"]
        )

    # ---- calls ----------------------------------------------------------------------------
    def _with_retries(self, call, *args, **kwargs):
        """(result, retries): `call` retried on transient errors; secrets never escape."""
        retries = 0
        while True:
            try:
                return call(*args, **kwargs), retries
            except (QPUConfigError, QPUError):
                raise
            except Exception as exc:
                text = str(exc)
                cleaned = redact(text)
                if _transient(exc) and retries < self.options["max_retries"]:
                    time.sleep(self.options["retry_backoff_s"] * 2**retries)
                    retries += 1
                    continue
                if _transient(exc):
                    raise QPUError(
                        f"sampler 'qpu': {type(exc).__name__} persisted after {retries} retries: "
                        f"{cleaned}"
                    ) from None
                if _from_cloud(exc) or cleaned != text:
                    raise QPUError(f"sampler 'qpu': {type(exc).__name__}: {cleaned}") from None
                raise

    def _solver_kwargs(self, reads: int) -> dict:
        accepted = set(getattr(self._child, "parameters", {}) or {})
        kwargs = {"num_reads": reads}
        for key, value in (("answer_mode", "raw"), ("auto_scale", False)):
            if key in accepted:
                kwargs[key] = value
        for key, value in self._defaults.items():
            if key in accepted:   # topology defaults apply where the child has the parameter
                kwargs[key] = value
        for key, value in {**self._explicit, **self.options["solver_parameters"]}.items():
            if key not in accepted:
                raise SamplerOptionError(
                    f"sampler 'qpu': the child sampler has no parameter '{key}'"
                )
            kwargs[key] = value
        return kwargs

    def _sample(self, model: BipartiteModel, num_samples: int) -> torch.Tensor:
        rng_state = self._rng.bit_generator.state
        try:
            return self._sample_calls(model, num_samples)
        except BaseException:
            self._rng.bit_generator.state = rng_state  # a failed call leaves no trace
            raise

    def _sample_calls(self, model: BipartiteModel, num_samples: int) -> torch.Tensor:
        self._ensure_child()
        plan = self._plan(model)
        bqm = self.programmed_bqm(model)
        per_call = self.num_reads or min(num_samples, 10000)
        embedded = self.topology.mode == "embedded"
        extra = {}
        if embedded:
            extra = {"chain_break_method": _chain_break(self.chain_break_method),
                     "chain_break_fraction": True}
            if self.chain_strength is not None:
                extra["chain_strength"] = float(self.chain_strength)
        blocks, breaks = [], []
        timing: dict = {}
        retries, clipped, calls = 0, 0.0, 0
        total = 0
        while total < num_samples:
            reads = min(per_call, num_samples - total) if self.num_reads is None else per_call
            kwargs = {**self._solver_kwargs(reads), **extra}

            def call():
                ss = plan["sampler"].sample(bqm, **kwargs)
                ss.resolve()
                return ss

            ss, r = self._with_retries(call)
            retries += r
            calls += 1
            clipped = max(clipped, float(self._guard.clipped_fraction))
            spins = ss.record.sample
            found = np.asarray(ss.variables, dtype=np.int64)
            if not np.array_equal(found, plan["label_array"]):
                pos = np.argsort(found)
                spins = spins[:, pos[np.searchsorted(found[pos], plan["label_array"])]]
            if np.any(ss.record.num_occurrences != 1):
                spins = np.repeat(spins, ss.record.num_occurrences, axis=0)
            if len(spins) == 0:
                raise QPUError("sampler 'qpu': the solver returned no samples "
                               "(chain_break_method 'discard' dropped them all?)")
            blocks.append(spins)
            if embedded:
                breaks.append(np.repeat(ss.record.chain_break_fraction, ss.record.num_occurrences))
            for k, v in ss.info.get("timing", {}).items():
                if isinstance(v, (int, float)):
                    # totals add up over the QPU calls; per-sample figures are averages
                    per_sample = k.endswith("_per_sample")
                    timing[k] = float(v) if per_sample else timing.get(k, 0.0) + float(v)
            total += len(spins)
        spins = np.concatenate(blocks)[:num_samples]
        # the problem as actually programmed: qubit level in native mode (clipping included);
        # logical level (before chains) in embedded mode
        programmed = self._guard.last_bqm if not embedded else bqm
        self._last = (programmed, spins, plan["labels"])
        used = self.beta_eff
        self.calls += 1
        info = {
            "beta_eff": used,
            "chain_break_fraction": float(np.concatenate(breaks)[:num_samples].mean())
            if embedded else 0.0,
            "timing": timing,
            "qpu_access_time_us": timing.get("qpu_access_time"),
            "retries": retries,
            "num_qpu_calls": calls,
            "clipped_fraction": clipped,
            "recalibrated": False,
        }
        every = self.options["recalibrate_every"]
        if every and self.calls % every == 0:
            from samplers.temperature import TemperatureEstimationError

            try:
                est = self.measure_beta_eff()
            except TemperatureEstimationError as exc:
                # a prior with (near) zero fields, as at the start of training, carries no
                # temperature information: keep β_eff and say so in the call's info
                info["recalibration_skipped"] = str(exc)
            else:
                self.set_beta_eff(est.beta)
                info.update(recalibrated=True, beta_eff_measured=est.beta,
                            beta_eff_stderr=est.stderr)
        z = (spins > 0).astype(np.float64 if model.dtype == torch.float64 else np.float32)
        return torch.from_numpy(z).to(model.dtype), info  # z = (s + 1) / 2

    # ---- temperature ----------------------------------------------------------------------
    def measure_beta_eff(self, num_bootstrap: int | None = None, seed: int | None = None):
        """β̂ (a `BetaEstimate`) of the last call's samples against the problem it programmed."""
        from samplers.temperature import estimate_beta

        if self._last is None:
            raise RuntimeError("measure_beta_eff needs a previous sample() call")
        bqm, spins, labels = self._last
        if seed is None:
            seed = int(self._rng.integers(2**31 - 1))
        boot = self.options["calibration_bootstrap"] if num_bootstrap is None else num_bootstrap
        return estimate_beta(bqm, (spins, labels), num_bootstrap=boot, seed=seed,
                             beta_guess=self.beta_eff)

    def set_beta_eff(self, beta_eff: float) -> None:
        """Use `beta_eff` for the scaling from the next call on (recorded in the history)."""
        if not (isinstance(beta_eff, (int, float)) and math.isfinite(beta_eff) and beta_eff > 0):
            raise ValueError(f"beta_eff must be a finite number > 0, got {beta_eff!r}")
        self.beta_eff = float(beta_eff)
        self.beta_eff_history.append(self.beta_eff)

    def estimated_access_time_us(self, model: BipartiteModel, num_samples: int) -> float:
        """QPU access time of `sample(model, num_samples)` (all its QPU calls) by Ocean's timing
        model: the solver's own if it has one, else the Advantage4.1 model. Network latency and
        queueing are not included."""
        self._ensure_child()
        plan = self._plan(model)
        params = {**self._defaults, **self._explicit}
        reads = self.num_reads or min(num_samples, 10000)
        calls = -(-num_samples // reads)
        solver = getattr(self._child, "solver", None)
        if solver is not None and hasattr(solver, "estimate_qpu_access_time"):
            per_call = solver.estimate_qpu_access_time(plan["num_qubits"], num_reads=reads, **params)
        else:
            per_call = estimate_access_time_us(self.topology, plan["num_qubits"], reads, **params)
        return calls * float(per_call)

    # ---- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"beta_eff": self.beta_eff, "beta_eff_history": list(self.beta_eff_history),
                "calls": self.calls, "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.beta_eff = float(state["beta_eff"])
        self.beta_eff_history = [float(b) for b in state["beta_eff_history"]]
        self.calls = int(state["calls"])
        self._rng.bit_generator.state = state["rng"]


def _chain_break(name: str):
    from dwave.embedding import chain_breaks

    return getattr(chain_breaks, name)


@lru_cache(maxsize=4)
def _timing_solver(family: str, shape: tuple):
    from dwave.cloud.solver import StructuredSolver
    from dwave.cloud.testing import mocks

    make = getattr(mocks, f"qpu_{family}_solver_data")
    data = make(*shape, problem_timing_data=mocks.qpu_problem_timing_data("advantage"))
    return StructuredSolver(client=None, data=data)


def estimate_access_time_us(topology, num_qubits: int, num_reads: int, **parameters) -> float:
    """Ocean's QPU access-time estimate (µs) for one call on a perfect `topology` chip, with the
    Advantage4.1 timing model from dwave.cloud's test mocks; no network needed.

    `parameters`: annealing_time, programming_thermalization, readout_thermalization.
    """
    topo = topologies.load(topology)
    solver = _timing_solver(topo.family, topo.shape)
    return float(solver.estimate_qpu_access_time(num_qubits, num_reads=num_reads, **parameters))
