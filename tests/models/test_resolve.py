"""resolve_model: one road from a name to a network, and its one cache."""

from __future__ import annotations

import os

import pytest
import torch

from napari_mpt_deblur.models import resolve
from napari_mpt_deblur.models._registry import create_model
from napari_mpt_deblur.models.checkpoint import save_checkpoint
from napari_mpt_deblur.models.info import ModelInfo
from napari_mpt_deblur.models.resolve import (
    CACHE_SIZE,
    cached_models,
    clear_model_cache,
    load_model,
    resolve_model,
)


@pytest.fixture(autouse=True)
def _empty_cache():
    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture
def checkpoints(tmp_path):
    torch.manual_seed(0)
    return [save_checkpoint(tmp_path / f"m{i}.safetensors", create_model("mpt-test"),
                            metadata={"name": f"m{i}"}) for i in range(CACHE_SIZE + 1)]


@pytest.fixture
def reads(monkeypatch):
    calls = []
    original = resolve.load_checkpoint
    monkeypatch.setattr(resolve, "load_checkpoint",
                        lambda path: calls.append(str(path)) or original(path))
    return calls


def test_the_same_source_and_device_give_the_same_network(checkpoints, reads):
    first = resolve_model(checkpoints[0], device="cpu")
    assert resolve_model(str(checkpoints[0]), device=torch.device("cpu")) is first
    assert len(reads) == 1 and cached_models() == 1
    assert isinstance(first.info, ModelInfo) and first.info.name == "m0"
    assert not first.training


def test_the_least_recently_used_network_is_evicted(checkpoints, reads):
    nets = [resolve_model(p, device="cpu") for p in checkpoints[:CACHE_SIZE]]
    assert resolve_model(checkpoints[0], device="cpu") is nets[0]  # m0 is now the most recent
    resolve_model(checkpoints[CACHE_SIZE], device="cpu")  # one too many: m1 goes
    assert cached_models() == CACHE_SIZE
    assert resolve_model(checkpoints[0], device="cpu") is nets[0]
    again = resolve_model(checkpoints[1], device="cpu")
    assert again is not nets[1] and reads.count(str(checkpoints[1])) == 2


def test_a_rewritten_file_is_read_again(checkpoints):
    first = resolve_model(checkpoints[0], device="cpu")
    torch.manual_seed(5)
    save_checkpoint(checkpoints[0], create_model("mpt-test"), metadata={"name": "new"})
    stat = checkpoints[0].stat()
    os.utime(checkpoints[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = resolve_model(checkpoints[0], device="cpu")
    assert second is not first and second.info.name == "new"


def test_copies_and_load_model_are_private(checkpoints, reads):
    shared = resolve_model(checkpoints[0], device="cpu")
    private = resolve_model(checkpoints[0], device="cpu", copy=True)
    assert private is not shared and len(reads) == 1
    with torch.no_grad():
        next(private.parameters()).add_(1.0)  # fine-tuning the copy ...
    assert not torch.equal(next(private.parameters()), next(shared.parameters()))  # ... only
    fresh = load_model(checkpoints[0], device="cpu")
    assert fresh is not shared and len(reads) == 2  # load_model always reads: a fresh network
    assert resolve_model(checkpoints[0], device="cpu") is shared


def test_clear_model_cache_forgets_everything(checkpoints, reads):
    first = resolve_model(checkpoints[0], device="cpu")
    clear_model_cache()
    assert cached_models() == 0
    assert resolve_model(checkpoints[0], device="cpu") is not first and len(reads) == 2


def test_a_network_passes_through_with_a_model_info():
    net = create_model("mpt-test")
    net.info = {"name": "mine", "normalization": {"method": "minmax"}}  # older code did this
    assert resolve_model(net, device="cpu") is net
    assert isinstance(net.info, ModelInfo) and net.info.name == "mine"
    assert net.info.normalization == {"method": "minmax"}
    bare = torch.nn.Conv2d(1, 1, 3, padding=1)
    assert resolve_model(bare, device="cpu", name="from the catalog").info.name == (
        "from the catalog")
    assert cached_models() == 0  # networks in memory are never cached


def test_the_engine_and_the_catalog_share_the_cache(checkpoints, reads, rng):
    from napari_mpt_deblur import deblur
    from napari_mpt_deblur.models.catalog import ModelCatalog

    image = rng.random((40, 40)).astype("float32")
    deblur(image, checkpoints[0], device="cpu", amp=False)
    catalog = ModelCatalog(include_bundled=False)
    catalog.add_checkpoint(checkpoints[0], name="m0")
    net = catalog.load("m0", device="cpu")
    assert net is resolve_model(checkpoints[0], device="cpu") and len(reads) == 1


def test_a_header_less_file_is_described_by_the_architecture_that_read_it(tmp_path):
    """resolve_model names no architecture itself: an authors' file of any registered family
    that can infer its config from tensors gets that family's ``arch`` in its ModelInfo."""
    from dataclasses import asdict, dataclass

    from napari_mpt_deblur.models import _registry
    from napari_mpt_deblur.models.checkpoint import CheckpointError

    @dataclass(frozen=True)
    class ToyConfig:
        in_channels: int = 1
        out_channels: int = 1

        def to_dict(self) -> dict:
            return asdict(self)

        @classmethod
        def from_dict(cls, data: dict) -> ToyConfig:
            return cls(**data)

    class Toy(torch.nn.Module):
        def __init__(self, config: ToyConfig) -> None:
            super().__init__()
            self.config = config
            self.toy = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.toy(x)

    def infer(state_dict: dict, routing: str | None) -> ToyConfig:
        if set(state_dict) != {"toy.weight", "toy.bias"}:
            raise CheckpointError("not a toy")
        return ToyConfig()

    path = tmp_path / "authors_toy.pth"
    torch.save(Toy(ToyConfig()).state_dict(), path)
    _registry.register_architecture(_registry.Architecture(
        name="toy", config_class=ToyConfig, build=Toy, infer_config=infer))
    try:
        net = resolve_model(path, device="cpu", cache=False)
    finally:
        del _registry._ARCHITECTURES["toy"]
    assert isinstance(net, Toy)
    assert net.info.arch == "toy" and net.info.authors_checkpoint and net.info.name == path.stem
