"""The model contract: what every deblurring network offers the engine, widgets and CLI.

A network is used through three attributes and a forward, spelled out by :class:`DeblurModel`,
plus a :class:`ModelInfo` record of what it is (name, architecture, normalisation, training
lineage). The info is attached in one place, by :func:`attach_info`: the architectures'
constructors attach a bare one and :func:`~napari_mpt_deblur.models.resolve.resolve_model`
replaces it with what the checkpoint says. Readers call :func:`model_info`, which also accepts a
network of the user's own (no ``info``, or a plain ``dict`` assigned by older code), so nobody
needs ``getattr(net, "info", {})``. The optional attributes are read here too, each with the
default the engine assumes: :func:`size_multiple`, :func:`in_channels`, :func:`preset_name`
(the preset ``create_model`` built it from) and :func:`inference_bytes_per_pixel` (the memory
cost hint the engine sizes tiles by). Code that takes a network is typed :class:`DeblurModel`.

``ModelInfo`` is the checkpoint header in typed form: :meth:`ModelInfo.to_header` writes the
JSON header of the project's safetensors files and :meth:`ModelInfo.from_header` reads it back,
keeping keys it does not know in :attr:`ModelInfo.extra`, so headers written by any version of
the project round-trip unchanged. It is also a mutable mapping over that header form, so code
written against the old ``model.info`` dict (``info["name"]``, ``info.get(...)``,
``dict(info)``, ``info["name"] = ...``) keeps working.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["DeblurModel", "IntensityNormalization", "ModelInfo", "attach_info", "attached_info",
           "in_channels", "inference_bytes_per_pixel", "model_info", "optics_conditioned",
           "optics_conditioning_module", "preset_name", "size_multiple"]

#: What the engine assumes for a network that does not say (a user's own ``nn.Module``).
DEFAULT_SIZE_MULTIPLE = 128
DEFAULT_IN_CHANNELS = 1
#: Channel width assumed by :func:`inference_bytes_per_pixel` for a config without ``dim``.
DEFAULT_WIDTH = 32

# Header keys that are fields of ModelInfo (everything else goes to ``extra``).
_LOAD_ONLY = ("source", "sha256", "authors_checkpoint")


@dataclass(frozen=True)
class IntensityNormalization:
    """Percentiles defining the affine map to model units (stored in every checkpoint).

    Applied by :mod:`napari_mpt_deblur.engine.normalize`; defined here because it is part of
    what a network is (it only works on inputs normalised the way it was trained).
    """

    method: str = "percentile"
    low_percentile: float = 0.5
    high_percentile: float = 99.8

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> IntensityNormalization:
        if not data:
            return cls()
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def _default_normalization() -> dict[str, Any]:
    return IntensityNormalization().to_dict()


@dataclass
class ModelInfo(MutableMapping):
    """What a network is: identity, architecture, pre-processing and provenance.

    Attributes
    ----------
    name : str
        Display name: the pretrained key's label (``"mpt-tiny"``), the checkpoint's header name,
        or the file stem.
    key : str or None
        The pretrained key (``"mpt_tiny.defocus"``) for shipped weights, else ``None``.
    arch : str
        Architecture family registered in :mod:`._registry` (``"mpt"``, ``"htcsf"``).
    config : dict
        The architecture config (``MPTConfig.to_dict()`` ...).
    normalization : dict
        The :class:`IntensityNormalization` the network was trained with (default: robust
        percentiles, what every network so far was trained with).
    routing : str or None
        MPT's CSWA routing (``None`` for other architectures).
    description : str or None
        One line on what the weights are for.
    training, simulation, metrics, finetune : dict or None
        Free-form records written by training and fine-tuning (see the model cards).
    lineage : tuple of str
        Where the weights come from, oldest first (training configs, a fine-tune's start model).
    source : str or None
        The file the weights were read from (set on load, never saved).
    sha256 : str or None
        SHA-256 of that file (set on load, never saved).
    authors_checkpoint : bool
        Read from an authors' torch file without a project header.
    extra : dict
        Header keys this version does not model (licence, package version ...), kept verbatim.
    """

    name: str = ""
    key: str | None = None
    arch: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    normalization: dict[str, Any] = field(default_factory=_default_normalization)
    routing: str | None = None
    description: str | None = None
    training: dict[str, Any] | None = None
    simulation: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None
    lineage: tuple[str, ...] = ()
    source: str | None = None
    sha256: str | None = None
    authors_checkpoint: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def optics_conditioned(self) -> bool:
        """Whether the network takes the microscope's optics (``forward(x, optics)``), read
        from its config (``optics_conditioning``); such a model also works without them."""
        return bool(self.config.get("optics_conditioning", False))

    # ------------------------------------------------------------------ header round trip
    @classmethod
    def from_header(cls, header: Mapping[str, Any] | None, **overrides: Any) -> ModelInfo:
        """The info a checkpoint header describes; unknown keys are kept in ``extra``."""
        data = dict(header or {})
        data.update(overrides)
        fields = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: data.pop(k) for k in list(data) if k in fields}
        extra = dict(data.pop("extra", None) or {}) if isinstance(data.get("extra"), dict) else {}
        extra.update(data)
        if known.get("lineage") is not None:
            known["lineage"] = tuple(str(x) for x in known["lineage"])
        for key in ("config", "normalization"):
            if known.get(key) is None:
                known.pop(key, None)
        for key in ("name", "arch"):
            if known.get(key) is None:
                known.pop(key, None)
            else:
                known[key] = str(known[key])
        known["authors_checkpoint"] = bool(known.get("authors_checkpoint", False))
        return cls(**known, extra=extra)

    def to_header(self) -> dict[str, Any]:
        """The JSON header form: every field but the load-time ones, ``extra`` flattened."""
        out = self.to_dict()
        for key in _LOAD_ONLY:
            out.pop(key, None)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (the old ``model.info`` shape): ``extra`` flattened, empty fields left out.

        ``arch``, ``normalization`` and ``routing`` are always present, and so are ``source``,
        ``sha256`` and ``authors_checkpoint`` once the weights came from a file, as in the old
        dict.
        """
        out: dict[str, Any] = dict(self.extra)
        always = {"arch", "normalization", "routing"}
        if self.source is not None:
            always |= set(_LOAD_ONLY)
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name == "lineage":
                value = list(value)
            if f.name in always or value not in (None, {}, [], "", False):
                out[f.name] = value
        return out

    def replace(self, **changes: Any) -> ModelInfo:
        """A copy with some fields changed (unknown names go to ``extra``)."""
        fields = {f.name for f in dataclasses.fields(self)}
        known = {k: v for k, v in changes.items() if k in fields}
        extra = {k: v for k, v in changes.items() if k not in fields}
        if extra:
            known["extra"] = {**self.extra, **known.get("extra", {}), **extra}
        return dataclasses.replace(self, **known)

    # ------------------------------------------------------------------ the old dict's interface
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        """``info["name"] = ...`` as on the old dict: a field, or an ``extra`` key."""
        if key in _FIELDS:
            setattr(self, key, tuple(value) if key == "lineage" else value)
        else:
            self.extra[key] = value

    def __delitem__(self, key: str) -> None:
        if key in _FIELDS:  # a field cannot go: it returns to its default
            default = ModelInfo()
            setattr(self, key, getattr(default, key))
        else:
            del self.extra[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelInfo)) - {"extra"}


@runtime_checkable
class DeblurModel(Protocol):
    """What the engine needs from a network.

    ``forward`` maps ``(N, in_channels, H, W)``, with ``H`` and ``W`` multiples of
    ``size_multiple``, to ``(N, out_channels, H, W)`` in normalised intensity units.
    :class:`~napari_mpt_deblur.models.mpt.MPT` and
    :class:`~napari_mpt_deblur.models.htcsf.HTCSF` satisfy it; so does any ``nn.Module`` with
    these attributes. A network whose ``info.optics_conditioned`` is true also takes
    ``optics``, an ``(N, 3)`` tensor of
    :func:`~napari_mpt_deblur.models.conditioning.optics_vector` (``None``: unknown optics);
    the engine passes it to no other network.

    Optional, read through this module's accessors with the engine's defaults:
    ``inference_bytes_per_pixel`` (:func:`inference_bytes_per_pixel`), ``preset_name``
    (:func:`preset_name`) and ``config`` (:func:`model_info`).
    """

    info: ModelInfo

    @property
    def size_multiple(self) -> int: ...

    @property
    def in_channels(self) -> int: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def attach_info(net: nn.Module, info: ModelInfo | Mapping[str, Any] | None = None,
                **changes: Any) -> ModelInfo:
    """Give ``net`` its :class:`ModelInfo` (the one place that sets ``net.info``).

    ``info`` replaces the current one (a mapping is read as a header); ``changes`` then update
    fields. Returns the attached info.
    """
    if info is None:
        current = model_info(net)
    elif isinstance(info, ModelInfo):
        current = info
    else:
        current = ModelInfo.from_header(info)
    if changes:
        current = current.replace(**changes)
    net.info = current
    return current


def model_info(net: Any) -> ModelInfo:
    """The :class:`ModelInfo` of any network.

    A network without one (a user's own module) gets a minimal record named after its class; a
    plain ``dict`` assigned by older code is read as a header. Nothing is attached here.
    """
    info = getattr(net, "info", None)
    if isinstance(info, ModelInfo):
        return info
    if isinstance(info, Mapping) and info:
        return ModelInfo.from_header(info)
    config = getattr(net, "config", None)
    return ModelInfo(
        name=type(net).__name__,
        arch=type(net).__name__.lower(),
        config=config.to_dict() if hasattr(config, "to_dict") else {},
        routing=getattr(config, "routing", None),
    )


def size_multiple(net: Any) -> int:
    """``net.size_multiple``, or the engine's default for a network that does not say."""
    value = getattr(net, "size_multiple", None)
    return int(value) if value else DEFAULT_SIZE_MULTIPLE


def optics_conditioned(net: Any) -> bool:
    """Whether ``net`` takes the optics: its info says so (see :class:`ModelInfo`)."""
    return model_info(net).optics_conditioned


def optics_conditioning_module(net: Any) -> Any:
    """The module that feeds the optics to an optics-conditioned network (MPT's FiLM,
    ``optics_film``), or ``None``: what fine-tuning adapts, or leaves out, as "the optics"."""
    return getattr(net, "optics_film", None)


def in_channels(net: Any) -> int:
    """``net.in_channels``, or 1 for a network that does not say."""
    value = getattr(net, "in_channels", None)
    return int(value) if value else DEFAULT_IN_CHANNELS


def attached_info(net: Any) -> Any:
    """``net.info`` exactly as it is: a :class:`ModelInfo`, a ``dict`` assigned by older code,
    or ``None``. For the one caller that must tell these apart
    (:func:`~napari_mpt_deblur.models.resolve.resolve_model`, which names a network only when
    it had no info at all); everyone else reads :func:`model_info`."""
    return getattr(net, "info", None)


def preset_name(net: Any) -> str | None:
    """The architecture preset ``net`` was built from (``"mpt-tiny"``: what
    :func:`~napari_mpt_deblur.create_model` records on it), or ``None`` for a network
    read from a checkpoint or a user's own module."""
    value = getattr(net, "preset_name", None)
    return str(value) if value else None


def inference_bytes_per_pixel(net: Any, per_channel: int) -> int:
    """Memory one input pixel of ``net``'s forward needs: the network's own estimate
    (``net.inference_bytes_per_pixel``; MPT and HTCSF give one), else ``per_channel`` bytes for
    each channel of its width (``config.dim``; :data:`DEFAULT_WIDTH` when it has none). The
    engine sizes its tiles by it."""
    value = getattr(net, "inference_bytes_per_pixel", None)
    if value is not None:
        return int(value)
    return int(per_channel) * int(getattr(getattr(net, "config", None), "dim", DEFAULT_WIDTH))
