"""The Qt-free model catalog behind the widgets' model picker."""

from __future__ import annotations

import gc
import shutil
import threading

import pytest

from napari_mpt_deblur.models.catalog import CatalogEvent, ModelCatalog, is_checkpoint_path
from napari_mpt_deblur.models.checkpoint import CheckpointError, file_sha256


@pytest.fixture
def catalog() -> ModelCatalog:
    return ModelCatalog(include_bundled=False)


def test_add_checkpoint_names_from_file_and_loads(catalog, tiny_checkpoint):
    events: list[CatalogEvent] = []
    catalog.connect(events.append)
    entry = catalog.add_checkpoint(tiny_checkpoint)
    assert entry.name == "tiny-test"
    assert entry.kind == "checkpoint"
    assert entry.label == "tiny-test (file)"
    assert catalog.names() == ["tiny-test"]
    assert [(e.kind, e.entry.name, e.select) for e in events] == [("added", "tiny-test", False)]
    model = catalog.load("tiny-test", device="cpu")
    assert model.info["sha256"] == file_sha256(tiny_checkpoint)
    assert catalog.default_name() == "tiny-test"


def test_same_file_is_listed_once_and_can_be_reselected(catalog, tiny_checkpoint):
    events: list[CatalogEvent] = []
    catalog.connect(events.append)
    first = catalog.add_checkpoint(tiny_checkpoint)
    again = catalog.add_checkpoint(str(tiny_checkpoint), select=True)
    assert again == first
    assert len(catalog) == 1
    assert [e.kind for e in events] == ["added", "select"]
    assert events[-1].select


def test_name_collisions_get_a_counter(catalog, tiny_checkpoint, tmp_path):
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    copy = shutil.copy(tiny_checkpoint, other_dir / tiny_checkpoint.name)
    catalog.add_checkpoint(tiny_checkpoint)
    second = catalog.add_checkpoint(copy)
    named = catalog.add_checkpoint(shutil.copy(tiny_checkpoint, tmp_path / "x.safetensors"),
                                   name="tiny-test")
    assert (second.name, named.name) == ("tiny-test (2)", "tiny-test (3)")


@pytest.mark.parametrize(
    ("content", "suffix", "error"),
    [
        (None, ".safetensors", FileNotFoundError),
        (b"weights", ".npy", ValueError),
        (b"this is not a safetensors file", ".safetensors", CheckpointError),
    ],
)
def test_bad_checkpoints_are_refused_early(catalog, tmp_path, content, suffix, error):
    path = tmp_path / f"model{suffix}"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match="model"):
        catalog.add_checkpoint(path)
    assert len(catalog) == 0


def test_in_memory_models_and_removal(catalog):
    from napari_mpt_deblur import create_model

    model = create_model("mpt-test")
    entry = catalog.add_model(model, "fresh")
    assert entry.kind == "memory" and entry.label == "fresh (in memory)"
    assert catalog.load("fresh", device="cpu") is model
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        catalog.add_model("not a model", "x")
    with pytest.raises(ValueError, match="non-empty"):
        catalog.add_model(model, " ")
    catalog.remove("fresh")
    with pytest.raises(ValueError, match="available models: none"):
        catalog.get("fresh")


def test_bound_method_callbacks_are_weak_and_failures_isolated(catalog, tiny_checkpoint):
    class Subscriber:
        def __init__(self):
            self.events = []

        def on_event(self, event):
            self.events.append(event)

    def broken(event):
        raise RuntimeError("subscriber bug")

    keep = Subscriber()
    gone = Subscriber()
    catalog.connect(broken)
    catalog.connect(keep.on_event)
    catalog.connect(gone.on_event)
    del gone
    gc.collect()
    catalog.add_checkpoint(tiny_checkpoint)  # the broken callback does not stop the others
    assert [e.kind for e in keep.events] == ["added"]
    assert len(catalog._callbacks) == 2  # the dead subscriber was dropped
    catalog.disconnect(keep.on_event)
    catalog.remove("tiny-test")
    assert len(keep.events) == 1


def test_concurrent_adds_get_unique_names(catalog, tiny_checkpoint, tmp_path):
    paths = [shutil.copy(tiny_checkpoint, tmp_path / f"m{i}.safetensors") for i in range(8)]
    threads = [threading.Thread(target=catalog.add_checkpoint, args=(p,), kwargs={"name": "m"})
               for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(catalog.names())) == 8


def test_checkpoint_suffixes():
    assert is_checkpoint_path("a/b/model.PTH")
    assert is_checkpoint_path("x.safetensors")
    assert not is_checkpoint_path("x.tif")


def test_bundled_entries_say_what_their_weights_are_for():
    from napari_mpt_deblur.models.checkpoint import read_header
    from napari_mpt_deblur.models.pretrained import bundled_models

    catalog = ModelCatalog()
    for name, path in bundled_models().items():
        description = (read_header(path) or {}).get("description")
        assert catalog.get(name).kind == "bundled"
        assert catalog.get(name).description == (description or f"shipped weights: {path.name}")


def test_model_optics_come_from_the_header_without_loading(catalog, tiny_checkpoint, tmp_path):
    from napari_mpt_deblur import create_model
    from napari_mpt_deblur.models.catalog import ModelOptics
    from napari_mpt_deblur.models.checkpoint import save_checkpoint

    bundled = ModelCatalog()
    assert bundled.optics("mpt-tiny") == ModelOptics(True, (0.645, 0.1))  # 20x + oil share
    assert bundled.optics("mpt-tiny-wide") == ModelOptics(False, (0.645,))
    blind = catalog.add_checkpoint(tiny_checkpoint)
    assert catalog.optics(blind.name) == ModelOptics()  # no simulation recorded
    conditioned = create_model("mpt-test", optics_conditioning=True)
    path = save_checkpoint(tmp_path / "c.safetensors", conditioned,
                           metadata={"simulation": {"pixel_size_um": 0.1}})
    assert catalog.optics(catalog.add_checkpoint(path).name) == ModelOptics(True, (0.1,))
    memory = catalog.add_model(conditioned, "in memory")
    assert catalog.optics(memory.name).conditioned
    path.unlink()  # a header that cannot be read knows nothing (loading will say why)
    assert catalog.optics("c") == ModelOptics()


def test_sampling_notice_only_beyond_one_and_a_half_times_every_training_sampling():
    pytest.importorskip("magicgui")
    from napari_mpt_deblur._widgets._optics import sampling_notice

    assert sampling_notice(0.3, (0.645, 0.1)).startswith("These pixels (0.3 µm)")
    assert sampling_notice(0.645 * 1.5, (0.645,)) == ""
    assert sampling_notice(0.645 * 1.6, (0.645,)) != ""
    assert sampling_notice(0.645 / 1.6, (0.645,)) != ""
    assert sampling_notice(None, (0.645,)) == sampling_notice(0.3, ()) == ""
