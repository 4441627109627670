"""Screenshots for docs/user_guide.md, taken from a real napari viewer.

Opens napari, loads the bundled actin sample through the plugin's sample-data contribution, opens
the Deblur widget through the manifest, deblurs with the chosen model and saves PNGs of the
window and of each comparison view into ``docs/images/`` (or ``--out``), with a
``screenshots.json`` that records which model made them and the window size of each shot. Then,
in a 1920 × 1080 window: the Fine-tune dock (Advanced section closed) next to the Deblur dock;
the two-channel sample, its nuclei layer deblurred and run through the Detection preview dock;
and all three docks open at once, to show that they fit a full-HD screen.

Run it on a machine with a display, or under a virtual one::

    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/screenshots.py   # shipped default model
    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/screenshots.py \
        --model runs/mpt-tiny/best.safetensors

The screen must be at least 1920 × 1080 (xvfb-run's default screen is smaller).

``--untrained`` uses a random ``mpt-test`` network: only for checking the layout, never for
published screenshots (the "result" is then meaningless); send those to another folder, e.g.
``--untrained --out /tmp/shots``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "napari-mpt-deblur"
WIDGET = "Deblur"
FINETUNE_WIDGET = "Fine-tune"
DETECT_WIDGET = "Detection preview"
SAMPLE = "defocused_actin"
NUCLEI_SAMPLE = "defocused_nuclei_actin"
WINDOW_SIZE = (1500, 900)  # single-dock shots
FULL_HD = (1920, 1080)  # the Fine-tune and all-docks shots: a common laptop/desktop screen
TIMEOUT_S = 1800  # longest wait for a deblurring or detection run
# Where the Deblur panel writes a result's provenance: the layer metadata key the user guide
# documents (docs/user_guide.md), read here as any user script would.
PROVENANCE_KEY = "napari_mpt_deblur"

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


def wait_while(app, busy, what: str, on_tick=None) -> None:
    """Run the Qt event loop while ``busy()``: the worker's signals are delivered through it."""
    started = time.perf_counter()
    while busy():
        if time.perf_counter() - started > TIMEOUT_S:
            raise SystemExit(f"{what} did not finish within {TIMEOUT_S} s")
        settle(app, 0.05)
        if on_tick is not None:
            on_tick()


def set_window_size(viewer, app, size: tuple[int, int]) -> tuple[int, int]:
    """Resize the main window and return the size it got (smaller screens or docks refuse)."""
    window = viewer.window._qt_window
    window.resize(*size)
    settle(app, 0.5)
    got = (window.width(), window.height())
    if got != tuple(size):
        logger.warning("the window is %d x %d, not %d x %d (screen too small, or the docks "
                       "need more room)", *got, *size)
    return got


def share_out(room: int, wants: list[int], floor: int = 200) -> list[int]:
    """Split ``room`` pixels between docks: the shortest panels get all they want as long as
    every other dock keeps at least ``floor``; the last (longest) one gets the rest and
    scrolls if it needs more."""
    sizes = [0] * len(wants)
    order = sorted(range(len(wants)), key=lambda i: wants[i])
    for n, i in enumerate(order):
        after = len(order) - n - 1
        sizes[i] = room if not after else max(floor, min(wants[i], room - floor * after))
        room -= sizes[i]
    return sizes


def arrange_docks(viewer, app, docks: list, horizontal: bool = False) -> None:
    """Give docks that share one dock area the room they ask for, as a user would by dragging
    the splitters: a dock added under another one starts at its minimum height.

    ``horizontal`` puts the docks next to each other in columns, each at full height, instead.
    """
    from qtpy.QtCore import Qt

    window = viewer.window._qt_window
    orientation = Qt.Orientation.Horizontal if horizontal else Qt.Orientation.Vertical
    for first, second in itertools.pairwise(docks):
        window.splitDockWidget(first, second, orientation)
    settle(app, 0.3)
    if horizontal:
        sizes = [dock.sizeHint().width() for dock in docks]
    else:  # one column, as wide as its widest panel wants, then the heights
        width = max(dock.sizeHint().width() for dock in docks)
        window.resizeDocks([docks[0]], [width], Qt.Orientation.Horizontal)
        settle(app, 0.3)
        sizes = share_out(sum(dock.height() for dock in docks),
                          [dock.sizeHint().height() for dock in docks])
    window.resizeDocks(docks, sizes, orientation)
    settle(app, 0.5)


def check_docks(viewer, docks: dict[str, object]) -> dict[str, dict[str, object]]:
    """Log where each open dock sits and whether it is cut or scrolls.

    "cut": part of the dock lies outside the window; "scrolls": its form is taller than the
    room it got (fine: the panels scroll by design, but worth knowing for a screenshot).
    """
    from qtpy.QtWidgets import QScrollArea

    window = viewer.window._qt_window
    room = window.rect()
    report: dict[str, dict[str, object]] = {}
    for name, dock in docks.items():
        if not dock.isVisible():
            continue
        top_left = dock.mapTo(window, dock.rect().topLeft())
        rect = dock.rect().translated(top_left)
        scroll = dock.findChild(QScrollArea)
        scrolls = bool(scroll is not None and scroll.verticalScrollBar().maximum() > 0)
        cut = not room.contains(rect)
        hint = dock.sizeHint()
        report[name] = {"geometry": [rect.x(), rect.y(), rect.width(), rect.height()],
                        "size_hint": [hint.width(), hint.height()], "cut": cut,
                        "scrolls": scrolls}
        logger.info("  dock %-18s %4d x %-4d at (%d, %d), wants %d x %d%s%s", name,
                    rect.width(), rect.height(), rect.x(), rect.y(), hint.width(),
                    hint.height(), "  CUT" if cut else "", "  (scrolls)" if scrolls else "")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(ROOT / "src"))
    register_plugin()

    import napari
    from qtpy.QtWidgets import QApplication

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
    window_size = set_window_size(viewer, app, WINDOW_SIZE)
    viewer.open_sample(PLUGIN, SAMPLE)
    deblur_dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    docks = {WIDGET: deblur_dock}
    widget._model.value = model_name
    widget._device.value = args.device if args.device in widget._device.choices else "auto"
    widget._tile.value = args.tile
    source = viewer.layers["defocused sample"]
    viewer.layers.selection.active = source
    viewer.reset_view()
    settle(app, 1.0)
    shots: dict[str, str] = {}
    windows: dict[str, list[int]] = {}
    layout: dict[str, dict[str, dict[str, object]]] = {}

    def shot(name: str, description: str, canvas_only: bool = False) -> None:
        settle(app)
        path = out / f"{name}.png"
        viewer.screenshot(str(path), canvas_only=canvas_only, flash=False)
        compact_png(path)
        shots[path.name] = description
        windows[path.name] = list(window_size)
        logger.info("saved %s", path)
        if not canvas_only:
            layout[path.name] = check_docks(viewer, docks)

    shot("widget", "The Deblur widget docked next to the defocused sample")

    show_activity(viewer, True)
    widget._run.native.click()
    progress_taken = False

    def progress_shot() -> None:
        nonlocal progress_taken
        if not progress_taken and widget.running and widget._progress.value >= 2:
            progress_taken = True  # shot from this loop, not from a signal handler
            shot("progress", "A run in progress: tile progress in the widget and activity dock")

    wait_while(app, lambda: widget.running, "deblurring", progress_shot)
    show_activity(viewer, False)
    result = viewer.layers["defocused sample [deblurred]"]
    provenance = result.metadata[PROVENANCE_KEY]
    viewer.layers.selection.active = result
    shot("result", "The result layer, with its provenance in the layer metadata")

    compare = widget._compare
    compare.show_side_by_side()
    viewer.reset_view()
    shot("side_by_side", "Side by side: input and result with one camera, each panel titled")
    compare._swipe_position.value = 0.5
    compare.show_swipe()
    viewer.reset_view()
    camera_of(viewer).zoom *= 1.5
    shot("swipe", "Swipe: input left of the split, result right of it; the labelled Split slider")
    # three panels with long titles ("<input> [deblurred] [difference]") need the wider window
    window_size = set_window_size(viewer, app, FULL_HD)
    compare.show_difference()
    viewer.reset_view()
    shot("difference", "Input, result and result − input, each panel titled")
    compare.show_normal()

    # ---- Fine-tune, next to the Deblur dock, in a full-HD window
    finetune_dock, finetune = viewer.window.add_plugin_dock_widget(PLUGIN, FINETUNE_WIDGET)
    docks[FINETUNE_WIDGET] = finetune_dock
    finetune._advanced.value = False  # the expert settings stay folded away
    viewer.layers.selection.active = source
    settle(app, 1.0)
    logger.info("as docked by napari:")
    as_docked = {"finetune.png": check_docks(viewer, docks)}
    arrange_docks(viewer, app, [deblur_dock, finetune_dock], horizontal=True)
    viewer.reset_view()
    shot("finetune", "The Fine-tune dock (Advanced settings closed) next to the Deblur dock, "
         f"in a {FULL_HD[0]} x {FULL_HD[1]} window")

    # ---- Detection preview on the two-channel sample's nuclei layer
    viewer.layers.clear()
    viewer.open_sample(PLUGIN, NUCLEI_SAMPLE)
    nuclei = viewer.layers.selection.active  # the sample adds its nuclei layer last
    arrange_docks(viewer, app, [deblur_dock, finetune_dock])  # one column again
    detect_dock, detect = viewer.window.add_plugin_dock_widget(PLUGIN, DETECT_WIDGET)
    docks[DETECT_WIDGET] = detect_dock
    settle(app, 0.5)
    if detect._input.value is None or detect._input.value != nuclei:
        raise SystemExit(f"the Detection preview did not preselect {nuclei.name!r} "
                         f"(it chose {getattr(detect._input.value, 'name', None)!r})")
    widget._layer.value = nuclei
    widget._run.native.click()
    wait_while(app, lambda: widget.running, "deblurring the nuclei layer")
    deblurred = viewer.layers[f"{nuclei.name} [deblurred]"]
    if detect._deblurred.value is None or detect._deblurred.value != deblurred:
        detect._deblurred.value = deblurred  # normally picked as the result appears
    detect._run.native.click()
    wait_while(app, lambda: detect.running, "the detection preview")
    outcome = detect.last_outcome
    if outcome is None:
        raise SystemExit(f"the detection preview failed: {detect._status.value}")
    logger.info("detections: %s", outcome.to_dict())
    viewer.layers.selection.active = nuclei
    logger.info("as docked by napari:")
    as_docked["all_docks.png"] = check_docks(viewer, docks)
    arrange_docks(viewer, app, [deblur_dock, finetune_dock, detect_dock])
    viewer.reset_view()
    shot("all_docks", "Deblur, Fine-tune and Detection preview open together in a "
         f"{FULL_HD[0]} x {FULL_HD[1]} window: every dock fits; Fine-tune, the longest, scrolls")

    deblur_dock.hide()  # hidden, not closed: the Detection preview alone, with a wide canvas
    finetune_dock.hide()
    detect.show_side_by_side()
    settle(app, 0.5)
    shot("detection", "Detection preview on the nuclei layer: input (magenta) and deblurred "
         "(green) detections side by side; rings are matched, discs found in one image only")
    detect.show_normal()

    record = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model_name,
        "untrained": bool(args.untrained),
        "provenance": provenance,
        "detection": {"input": nuclei.name, "deblurred": deblurred.name,
                      "provenance": deblurred.metadata.get(PROVENANCE_KEY),
                      **outcome.to_dict()},
        "napari": napari.__version__,
        "images": shots,
        "window_sizes": windows,
        "docks": layout,  # where each dock sat in each shot (after arrange_docks)
        "docks_as_opened": as_docked,  # where napari put them before
    }
    (out / "screenshots.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
