"""Screenshots for docs/user_guide.md, taken from a real napari viewer.

Opens napari, loads the bundled sample through the plugin's sample-data contribution, opens the
Defocus Deblur widget through the manifest, deblurs with the chosen model and saves PNGs of the
window and of each comparison view into ``docs/images/``, with a ``screenshots.json`` that
records which model made them.

Run it on a machine with a display, or under a virtual one::

    xvfb-run -a python scripts/screenshots.py                      # the shipped default model
    xvfb-run -a python scripts/screenshots.py --model runs/mpt-tiny/best.safetensors

``--untrained`` uses a random ``mpt-test`` network: only for checking the layout, never for
published screenshots (the "result" is then meaningless).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "napari-mpt-deblur"
WIDGET = "Deblur"
SAMPLE = "defocused_actin"
WINDOW_SIZE = (1500, 900)

logger = logging.getLogger("screenshots")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="bundled model name or checkpoint file (default: the shipped default)")
    parser.add_argument("--untrained", action="store_true",
                        help="use a random mpt-test network (layout checks only)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda:N or mps")
    parser.add_argument("--tile", default="256",
                        help="tile size in the widget (several tiles make progress visible)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images",
                        help="output folder (default: docs/images)")
    return parser.parse_args(argv)


def register_plugin() -> None:
    """Let napari find the manifest when the package is used from the source tree."""
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    try:
        pm.get_manifest(PLUGIN)
        return
    except KeyError:
        pass
    pm.discover()
    try:
        pm.get_manifest(PLUGIN)
    except KeyError:
        pm.register(PluginManifest.from_file(ROOT / "src" / "napari_mpt_deblur" / "napari.yaml"))


def choose_model(args: argparse.Namespace) -> str:
    """Put the requested model in the shared catalog and return its entry name."""
    from napari_mpt_deblur.models.catalog import get_catalog

    catalog = get_catalog()
    if args.untrained:
        import torch

        from napari_mpt_deblur import create_model

        torch.manual_seed(0)
        return catalog.add_model(create_model("mpt-test"), "untrained mpt-test").name
    if args.model and Path(args.model).is_file():
        return catalog.add_checkpoint(args.model).name
    name = args.model or catalog.default_name()
    if name is None or name not in catalog:
        raise SystemExit(
            f"model {name!r} is not available (bundled: {catalog.names() or 'none'}). Pass "
            "--model path/to/checkpoint.safetensors, or --untrained for a layout check."
        )
    return name


def show_activity(viewer, visible: bool) -> None:
    """Open or close napari's activity dock (private API: skipped if napari changed it)."""
    try:
        viewer.window._status_bar._toggle_activity_dock(visible)
    except AttributeError:
        logger.warning("cannot toggle the activity dock in this napari version")


def compact_png(path: Path) -> None:
    """Re-save with a 256-colour palette (about half the size; grey images lose nothing visible)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with napari's imageio
        return
    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                dither=Image.Dither.NONE)
    palette.save(path, optimize=True)


def camera_of(viewer):
    """``viewer.scene.camera`` (napari >= 0.9) or ``viewer.camera``."""
    camera = getattr(getattr(viewer, "scene", None), "camera", None)
    return camera if camera is not None else viewer.camera


def settle(app, seconds: float = 0.3) -> None:
    """Let Qt paint (and the worker deliver) for a moment."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(ROOT / "src"))
    register_plugin()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_mpt_deblur._widgets._layers import METADATA_KEY

    model_name = choose_model(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    try:  # the one-off "PyQt5 is deprecated" toast would cover the screenshots
        import napari._qt.qt_main_window as main_window

        main_window.SHOW_QT_WARNING = False
    except (ImportError, AttributeError):
        pass
    viewer = napari.Viewer(title="napari: Defocus Deblur", show=True)
    app = QApplication.instance()
    viewer.window.resize(*WINDOW_SIZE)
    viewer.open_sample(PLUGIN, SAMPLE)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    widget._model.value = model_name
    widget._device.value = args.device if args.device in widget._device.choices else "auto"
    widget._tile.value = args.tile
    source = viewer.layers["defocused sample"]
    viewer.layers.selection.active = source
    viewer.reset_view()
    settle(app, 1.0)
    shots: dict[str, str] = {}

    def shot(name: str, description: str, canvas_only: bool = False) -> None:
        settle(app)
        path = out / f"{name}.png"
        viewer.screenshot(str(path), canvas_only=canvas_only, flash=False)
        compact_png(path)
        shots[path.name] = description
        logger.info("saved %s", path)

    shot("widget", "The Defocus Deblur widget docked next to the defocused sample")

    show_activity(viewer, True)
    started = time.perf_counter()
    widget._run.native.click()
    progress_taken = False
    while widget.running and time.perf_counter() - started < 1800:
        settle(app, 0.05)
        if not progress_taken and widget.running and widget._progress.value >= 2:
            progress_taken = True  # shot from this loop, not from a signal handler
            shot("progress", "A run in progress: tile progress in the widget and activity dock")
    show_activity(viewer, False)
    result = viewer.layers["defocused sample [deblurred]"]
    provenance = result.metadata[METADATA_KEY]
    viewer.layers.selection.active = result
    shot("result", "The result layer, with its provenance in the layer metadata")

    compare = widget._compare
    compare.show_side_by_side()
    viewer.reset_view()
    shot("side_by_side", "Side by side: input and result with one camera")
    compare._swipe_position.value = 0.5
    compare.show_swipe()
    viewer.reset_view()
    camera_of(viewer).zoom *= 1.5
    shot("swipe", "Swipe: input left of the split, result right of it")
    compare.show_difference()
    viewer.reset_view()
    shot("difference", "Input, result and result − input")
    compare.show_normal()

    record = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model_name,
        "untrained": bool(args.untrained),
        "provenance": provenance,
        "napari": napari.__version__,
        "images": shots,
    }
    (out / "screenshots.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
