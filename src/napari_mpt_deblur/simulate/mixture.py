"""Weighted mixtures of simulated microscopes: one training run, several optics.

A model trained only on 20x dry optics has never seen the PSFs of a high-NA oil objective at
0.1 µm/px, and fine-tuning on a CPU budget cannot teach it them afterwards. A
:class:`SimulationMixture` lets one run draw each training pair's optics from one of several
:class:`~napari_mpt_deblur.simulate.pairs.SimulationConfig` members, chosen with the run's own
seeded generator, so runs stay reproducible and resumable.

The spec a training config holds (``TrainConfig.simulation``) is either one preset name (as
before) or a mixture, written in YAML either as ``{preset: weight}``::

    simulation: {bbbc006: 0.7, oil-high-na: 0.3}

or as a list of members with their own overrides (and a ``name`` when a preset appears twice)::

    simulation:
      - {preset: bbbc006, weight: 0.7, overrides: {near_focus_probability: 0.5}}
      - {preset: oil-high-na, weight: 0.3}

:func:`canonical_simulation_spec` normalises both mixture forms to the list form, so that a
config, its JSON copy in a run folder and a resumed run compare equal;
:func:`parse_simulation` turns a spec into the config (one preset) or the mixture that draws
pairs; :func:`simulation_from_header` reads what a checkpoint recorded, old single-preset
headers included.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .camera import as_generator
from .parameters import SimulationConfig, get_simulation_preset, sample_parameters

__all__ = [
    "SimulationMixture",
    "canonical_simulation_spec",
    "describe_simulation",
    "parse_simulation",
    "simulation_from_header",
]

_MEMBER_KEYS = ("name", "preset", "weight", "overrides")


def _weight(value: Any, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"simulation mixture: the weight of {label} must be a number; got "
                         f"{value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"simulation mixture: the weight of {label} must be finite and > 0 "
                         f"(drop a member rather than give it weight 0); got {value!r}")
    return float(value)


def _member(item: Any, index: int) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise ValueError(f"simulation mixture member {index} must be a mapping with keys "
                         f"{', '.join(_MEMBER_KEYS)}; got {item!r}")
    unknown = sorted(set(item) - set(_MEMBER_KEYS))
    if unknown:
        raise ValueError(f"simulation mixture member {index}: unknown keys {unknown}; valid "
                         f"keys: {', '.join(_MEMBER_KEYS)}")
    preset = item.get("preset")
    if not isinstance(preset, str):
        raise ValueError(f"simulation mixture member {index} needs a preset name; got "
                         f"{preset!r}")
    get_simulation_preset(preset)  # an unknown name lists the valid ones
    name = item.get("name") or preset
    if not isinstance(name, str):
        raise ValueError(f"simulation mixture member {index}: name must be a string; got "
                         f"{name!r}")
    overrides = item.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"simulation mixture member {name!r}: overrides must be a mapping; "
                         f"got {type(overrides).__name__}")
    try:  # JSON types (tuples -> lists), so that a config equals its copy in a run folder
        overrides = json.loads(json.dumps(dict(overrides)))
    except (TypeError, ValueError):
        raise ValueError(f"simulation mixture member {name!r}: overrides must hold plain "
                         f"numbers, strings and lists; got {overrides!r}") from None
    return {"name": name, "preset": preset, "weight": _weight(item.get("weight", 1.0), repr(name)),
            "overrides": overrides}


def canonical_simulation_spec(spec: Any) -> str | tuple[dict[str, Any], ...]:
    """The one form of a ``TrainConfig.simulation`` value.

    Parameters
    ----------
    spec : str, mapping or sequence of mappings
        A preset name; ``{preset: weight}``; or members ``{preset, weight, overrides, name}``
        (``weight`` defaults to 1, ``name`` to the preset).

    Returns
    -------
    str or tuple of dict
        A preset name unchanged (checked), or one ``{"name", "preset", "weight",
        "overrides"}`` dict per member, in the order given.

    Raises
    ------
    ValueError
        Unknown preset (listing the valid ones), a weight that is not a positive number, an
        unknown member key, no members, or two members with the same name.
    """
    if isinstance(spec, str):
        get_simulation_preset(spec)
        return spec
    if isinstance(spec, Mapping):
        items = [{"preset": preset, "weight": weight} for preset, weight in spec.items()]
        for item in items:  # {preset: weight}: a nested mapping means the list form was meant
            if isinstance(item["weight"], Mapping):
                raise ValueError(
                    f"simulation mixture {{preset: weight}} needs a number for "
                    f"{item['preset']!r}; for overrides use the list form "
                    "[{preset: ..., weight: ..., overrides: {...}}]")
    elif isinstance(spec, Sequence) and not isinstance(spec, (bytes, bytearray)):
        items = list(spec)
    else:
        raise ValueError("simulation must be a preset name, a {preset: weight} mapping or a "
                         f"list of {{preset, weight, overrides}} members; got {spec!r}")
    if not items:
        raise ValueError("simulation mixture has no members")
    members = tuple(_member(item, i) for i, item in enumerate(items))
    names = [m["name"] for m in members]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"simulation mixture members {repeated} appear more than once; give "
                         "each a distinct 'name'")
    return members


@dataclass(frozen=True)
class SimulationMixture:
    """Several simulated microscopes, each drawn with a given probability.

    Parameters
    ----------
    configs : tuple of SimulationConfig
        The members' parameter ranges. They must share ``source_percentiles``: the in-focus
        sources are read once, with one intensity range, for every member.
    weights : tuple of float
        Relative probability of each member (normalised here).
    names : tuple of str
        Each member's label, recorded as ``params["member"]`` of every pair it draws (logs,
        validation by member); default: the configs' names. Must be distinct.

    Examples
    --------
    >>> mix = parse_simulation({"bbbc006": 0.7, "oil-high-na": 0.3})
    >>> mix.sample_parameters(0)["member"] in mix.names
    True
    """

    configs: tuple[SimulationConfig, ...]
    weights: tuple[float, ...]
    names: tuple[str, ...] = ()
    probabilities: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        configs, weights = tuple(self.configs), tuple(self.weights)
        names = tuple(self.names) or tuple(c.name for c in configs)
        if not configs:
            raise ValueError("SimulationMixture needs at least one member")
        if any(not isinstance(c, SimulationConfig) for c in configs):
            raise TypeError("SimulationMixture members must be SimulationConfig instances")
        if len(weights) != len(configs) or len(names) != len(configs):
            raise ValueError(f"SimulationMixture needs one weight and one name per member "
                             f"({len(configs)}); got {len(weights)} and {len(names)}")
        weights = tuple(_weight(w, repr(n)) for w, n in zip(weights, names))
        if len(set(names)) != len(names):
            raise ValueError(f"SimulationMixture member names must be distinct; got {names}")
        percentiles = {tuple(c.source_percentiles) for c in configs}
        if len(percentiles) > 1:
            raise ValueError("SimulationMixture members must share source_percentiles (the "
                             f"sources are read once for all of them); got {sorted(percentiles)}")
        total = sum(weights)
        object.__setattr__(self, "configs", configs)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "probabilities", np.array([w / total for w in weights]))

    def __len__(self) -> int:
        return len(self.configs)

    @property
    def name(self) -> str:
        """Label of the whole mixture, e.g. ``"bbbc006:0.7+oil-high-na:0.3"``."""
        return "+".join(f"{n}:{p:.3g}" for n, p in zip(self.names, self.probabilities))

    @property
    def primary(self) -> SimulationConfig:
        """The member with the largest weight (the first of equals): the optics of what needs
        one set (the EFCR re-blur bank; readers of a checkpoint's flat simulation fields)."""
        return self.configs[int(np.argmax(self.probabilities))]

    @property
    def source_percentiles(self) -> tuple[float, float]:
        """The members' shared source percentiles."""
        return self.configs[0].source_percentiles

    def choose(self, rng: np.random.Generator) -> int:
        """Index of a member drawn with the mixture's probabilities.

        A one-member mixture draws nothing from ``rng``, so it reproduces its preset's pairs.
        """
        if len(self.configs) == 1:
            return 0
        return int(rng.choice(len(self.configs), p=self.probabilities))

    def sample_parameters(
        self,
        rng: np.random.Generator | int | None = None,
        *,
        member: int | None = None,
        defocus_um: float | None = None,
        defocus_scale: float | None = None,
    ) -> dict[str, Any]:
        """One pair's parameters: a member (``choose``, or ``member``), then its draw.

        Returns :func:`~napari_mpt_deblur.simulate.pairs.sample_parameters`' dict plus
        ``"member"``, the member's name.
        """
        gen = as_generator(rng)
        index = self.choose(gen) if member is None else int(member)
        if not 0 <= index < len(self.configs):
            raise ValueError(f"member must be in 0..{len(self.configs) - 1}; got {member!r}")
        params = sample_parameters(self.configs[index], gen, defocus_um=defocus_um,
                                   defocus_scale=defocus_scale)
        params["member"] = self.names[index]
        return params

    def counts(self, n: int) -> list[int]:
        """``n`` split among the members in proportion to their weights (largest remainders),
        each getting at least one while ``n`` allows: e.g. the validation pairs per member."""
        if n < 1:
            raise ValueError(f"n must be >= 1; got {n}")
        share = self.probabilities * n
        out = [math.floor(s) for s in share]
        order = np.argsort(-(share - np.floor(share)), kind="stable")
        for i in order[: n - sum(out)]:
            out[int(i)] += 1
        while n >= len(out) and min(out) == 0:  # one each: taken from the largest share
            out[out.index(max(out))] -= 1
            out[out.index(0)] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint record: the primary member's fields flat (what readers of one
        simulation config expect), the label as ``preset`` and every member under
        ``mixture``."""
        members = [{"name": n, "weight": w, "config": c.to_dict()}
                   for n, w, c in zip(self.names, self.weights, self.configs)]
        return {**self.primary.to_dict(), "preset": self.name, "mixture": members}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimulationMixture:
        """Inverse of :meth:`to_dict`."""
        members = data.get("mixture")
        if not isinstance(members, Sequence) or not members:
            raise ValueError("a simulation mixture record needs a non-empty 'mixture' list")
        return cls(configs=tuple(SimulationConfig.from_dict(m["config"]) for m in members),
                   weights=tuple(m["weight"] for m in members),
                   names=tuple(m["name"] for m in members))


def parse_simulation(
    spec: Any, overrides: Mapping[str, Any] | None = None
) -> SimulationConfig | SimulationMixture:
    """The simulation that draws a run's pairs.

    Parameters
    ----------
    spec : str, mapping or sequence
        ``TrainConfig.simulation`` (see :func:`canonical_simulation_spec`).
    overrides : mapping, optional
        ``TrainConfig.simulation_overrides``: fields replaced in the preset, or in every member
        of a mixture before the member's own overrides.

    Returns
    -------
    SimulationConfig or SimulationMixture
        A preset name gives its config, exactly as before mixtures existed; a mixture (even of
        one member) a :class:`SimulationMixture`.
    """
    spec = canonical_simulation_spec(spec)
    common = dict(overrides or {})
    if isinstance(spec, str):
        sim = get_simulation_preset(spec)
        return sim.replace(**common) if common else sim
    configs = []
    for m in spec:
        changes = {**common, **m["overrides"]}
        try:
            configs.append(get_simulation_preset(m["preset"]).replace(**changes)
                           if changes else get_simulation_preset(m["preset"]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"simulation mixture member {m['name']!r}: {exc}") from None
    return SimulationMixture(configs=tuple(configs), weights=tuple(m["weight"] for m in spec),
                             names=tuple(m["name"] for m in spec))


def simulation_from_header(record: Any) -> SimulationConfig | SimulationMixture | None:
    """The simulation a checkpoint header recorded (``header["simulation"]``).

    Reads mixture records (:meth:`SimulationMixture.to_dict`), flat single-config records
    (``{"preset": name, **SimulationConfig fields}``, every checkpoint written before
    mixtures) and bare preset names; ``None`` when there is nothing usable.
    """
    if isinstance(record, str):
        return get_simulation_preset(record)
    if not isinstance(record, Mapping):
        return None
    if record.get("mixture"):
        return SimulationMixture.from_dict(record)
    names = {f.name for f in dataclasses.fields(SimulationConfig)}
    fields = {k: v for k, v in record.items() if k in names}
    if fields:
        return SimulationConfig.from_dict(fields)
    if isinstance(record.get("preset"), str):
        return get_simulation_preset(record["preset"])
    return None


def describe_simulation(spec: Any) -> str:
    """One line for logs and model cards, e.g. ``"bbbc006 70 %, oil-high-na 30 %"``."""
    spec = canonical_simulation_spec(spec)
    if isinstance(spec, str):
        return spec
    total = sum(m["weight"] for m in spec)
    parts = []
    for m in spec:
        text = f"{m['name']} {100 * m['weight'] / total:.0f} %"
        if m["name"] != m["preset"]:
            text += f" (preset {m['preset']})"
        if m["overrides"]:
            text += f" with {m['overrides']}"
        parts.append(text)
    return ", ".join(parts)
