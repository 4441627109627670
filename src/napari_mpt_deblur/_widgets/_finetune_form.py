"""The fields of the fine-tune panel: data, optics, training settings, result; and the plots.

:class:`FinetuneForm` builds the panel's sub-widgets (``self._name`` attributes, so tests and
scripts set them directly), their tooltips and the two plots, and turns the fields into engine
settings (:meth:`FinetuneForm.settings`), optical hints and their origin, and the preview crop.
The behaviour (events, runs, saving) is :class:`~._finetune.FinetuneWidget`, which subclasses
it. The model and device pickers are the ones the deblur panel uses (:mod:`._pickers`), and so
are the optics fields, prefilled from a layer's metadata (:mod:`._optics`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)

from ._finetune_job import PreviewCrop
from ._form import field_row, finish_panel, scrolling_form, wrap_label
from ._optics import OpticsFields
from ._pickers import ModelPicker, device_picker

if TYPE_CHECKING:
    from ..models.catalog import ModelCatalog
    from ..train.finetune import FinetuneConfig

logger = logging.getLogger(__name__)

__all__ = ["MODE_CHOICES", "REBLUR_SERIES", "SCORE_SERIES", "SCORE_TITLE", "FinetuneForm"]

#: Key of the panel's own entry in a preview layer's ``metadata``.
PREVIEW_KEY = "napari_mpt_deblur_finetune"
MODE_CHOICES = (
    ("replay at your optics (supervised)", "replay"),
    ("full EFCR (re-blur + EFCR + replay)", "full"),
    ("re-blur self-supervision only", "reblur_only"),
    ("EFCR + replay, no re-blur pixel loss", "efcr"),
)
TRAINABLE_CHOICES = (
    ("last third of the network", "late"),
    ("all weights", "all"),
    ("norms and biases only", "norms"),
)
#: Offered only for an optics-conditioned start model: the optics branch (its FiLM) alone.
TRAINABLE_OPTICS = ("optics conditioning only", "optics")
_MAX_PREVIEW_SIDE = 1024

#: The validation plot: the selection score (validated against the true PSNR), then diagnostics.
SCORE_TITLE = "Selection score"
SCORE_SERIES = "simulated PSNR"
REBLUR_SERIES = "re-blur PSNR (diagnostic)"


class FinetuneForm(Container):
    """The fine-tune panel's fields and plots (no behaviour beyond reading them).

    Subclasses set ``self._catalog`` and ``self._viewer`` and provide ``_on_model_changed``
    and ``_update_state`` (the model picker calls them) before calling :meth:`_build_form`.
    """

    _catalog: ModelCatalog
    _export_unavailable: str | None

    def _build_form(self) -> None:
        """Create every field, the layout and the plots (called once, from ``__init__``)."""
        from ..train.finetune import get_finetune_preset, list_finetune_presets

        self._get_preset = get_finetune_preset
        self._prefilled: dict[str, float] = {}
        # ---- data
        self._images = Select(label="Blurry images", choices=self._image_choices,
                              allow_multiple=True)
        self._folder = FileEdit(label="…or folder", mode="d", nullable=True)
        self._paired_blurred = ComboBox(label="Paired: blurred", choices=self._image_choices,
                                        nullable=True, value=None)
        self._paired_sharp = ComboBox(label="Paired: sharp", choices=self._image_choices,
                                      nullable=True, value=None)
        self._paired_folder = FileEdit(label="Paired folder", mode="d", nullable=True)
        # ---- optics (0 = the start model's simulation optics), the fields the Deblur dock has
        self._optics = OpticsFields(unknown_text="from model")
        self._pixel_size, self._na, self._wavelength, self._index = (
            self._optics.pixel_size, self._optics.na, self._optics.wavelength, self._optics.index)
        self._max_defocus = FloatSpinBox(label="Max defocus (µm)", min=0.0, max=1000.0,
                                         step=0.5, value=0.0)
        self._max_defocus.native.setDecimals(2)
        self._max_defocus.native.setSpecialValueText("from model")
        # ---- settings
        presets = list_finetune_presets()
        self._preset = ComboBox(label="Preset", choices=presets,
                                value=self._default_preset(presets))
        self._models = ModelPicker(
            self._catalog, label="Start model",
            tooltip="The trained model to adapt (bundled, or a checkpoint)",
            dialog_title="Start from a checkpoint", on_change=self._on_model_changed,
            on_catalog_change=self._update_state,
        )
        self._model = self._models.combo
        self._steps = SpinBox(label="Steps", min=1, max=1_000_000, value=200)
        self._time_budget = FloatSpinBox(label="Time budget (min)", min=0.0, max=10_000.0,
                                         step=5.0, value=0.0)
        self._time_budget.native.setSpecialValueText("none")
        self._batch_size = SpinBox(label="Batch size", min=1, max=256, value=2)
        self._patch_size = SpinBox(label="Patch size (px)", min=32, max=2048, step=32,
                                   value=128)
        self._lr = FloatSpinBox(label="Learning rate", min=1e-7, max=1e-2, step=1e-5,
                                value=5e-5)
        self._lr.native.setDecimals(7)
        self._efcr_weight = FloatSpinBox(label="EFCR weight λ", min=0.0, max=1.0, step=1e-4,
                                         value=5e-4)
        self._efcr_weight.native.setDecimals(6)
        self._replay = FloatSpinBox(label="Replay fraction", min=0.0, max=1.0, step=0.05,
                                    value=0.5)
        self._advanced = CheckBox(text="Advanced settings", value=False)
        self._mode = ComboBox(label="Objective", choices=MODE_CHOICES, value="replay")
        self._trainable = ComboBox(label="Adapt", choices=self._trainable_choices, value="late")
        self._replay_folder = FileEdit(label="Replay images", mode="d", nullable=True)
        self._device = device_picker()
        self._val_every = SpinBox(label="Validate every", min=1, max=100_000, value=25)
        self._preview_every = SpinBox(label="Preview every", min=0, max=100_000, value=50)
        self._preview_every.native.setSpecialValueText("never")
        self._preview_region = ComboBox(label="Preview crop", choices=self._preview_choices,
                                        nullable=True, value=None)
        self._seed = SpinBox(label="Seed", min=0, max=2**31 - 1, value=0)
        # expert settings: collapsed by default, so the panel stays short
        self._advanced_box = Container(
            widgets=[self._lr, self._efcr_weight, self._replay, self._mode, self._trainable,
                     self._replay_folder, self._paired_blurred, self._paired_sharp,
                     self._paired_folder, self._device, self._val_every, self._preview_every,
                     self._seed],
            labels=True, visible=False,
        )
        self._advanced_box.margins = (0, 0, 0, 0)
        # ---- output and controls
        self._name = LineEdit(label="Model name", value="")
        self._output = FileEdit(label="Save to", mode="w", filter="*.safetensors", nullable=True)
        self._start = PushButton(text="Start")
        self._resume = PushButton(text="Resume")
        self._save = PushButton(text="Save")
        buttons = Container(widgets=[self._start, self._resume, self._save], layout="horizontal",
                            labels=False)
        buttons.margins = (0, 0, 0, 0)
        self._export = PushButton(text="Export for bioimage.io…", enabled=False)
        self._progress = ProgressBar(label="Progress", value=0, min=0, max=1)
        self._status = Label(label="Status", value="")
        wrap_label(self._status)
        self._tooltips()
        self._form = scrolling_form(self, [
            Label(value="<b>Data</b> (unlabeled, blurry)"), self._images, self._folder,
            Label(value="<b>Optics</b> of your microscope"), self._pixel_size, self._na,
            self._wavelength, self._index, self._max_defocus,
            Label(value="<b>Training</b>"), self._preset, self._model, self._steps,
            self._time_budget, self._batch_size, self._patch_size, self._preview_region,
            field_row(self._advanced), self._advanced_box,
            Label(value="<b>Result</b>"), self._name, self._output, buttons,
            field_row(self._export), self._progress, self._status,
        ])
        finish_panel(self, self._form)
        self._add_plots()

    # ------------------------------------------------------------------ construction helpers
    def _tooltips(self) -> None:
        self._images.tooltip = ("Your own blurry images (no ground truth needed); several "
                                "layers and stacks are fine. A crop of the largest is held out "
                                "to score the model.")
        self._folder.tooltip = "A folder of blurry TIFF/PNG images, used with the layers"
        self._paired_blurred.tooltip = "Optional: a blurred image whose sharp version you have"
        self._paired_sharp.tooltip = "Optional: the in-focus image matching 'Paired: blurred'"
        self._paired_folder.tooltip = "Optional: a folder with blur/ and sharp/ subfolders"
        self._pixel_size.tooltip = ("Pixel size in the sample plane; filled from the layer's "
                                    "metadata when known. 'from model': the start model's optics")
        self._na.tooltip = "Objective numerical aperture (re-blur kernels are defocus PSFs)"
        self._wavelength.tooltip = "Emission wavelength"
        self._max_defocus.tooltip = (
            "How far out of focus your images are at most. With pixel size and NA known, "
            "training pairs and the selection score are simulated at your optics up to this "
            "defocus ('from model': the model's training range carried over to your optics)")
        self._index.tooltip = "Immersion refractive index: 1.0 air, 1.333 water, 1.515 oil"
        self._preset.tooltip = "Sensible defaults for a laptop CPU or a GPU"
        self._steps.tooltip = "Optimiser steps (the run can be stopped earlier and resumed)"
        self._time_budget.tooltip = "Stop cleanly before this many minutes"
        self._lr.tooltip = "Peak learning rate: small, this adapts a trained model"
        self._efcr_weight.tooltip = "Weight of the EFCR contrastive term (paper: 5e-4)"
        self._replay.tooltip = ("Share of each batch that replays the model's simulated "
                                "training pairs, so that it does not forget")
        self._advanced.tooltip = ("Expert settings: learning rate, EFCR weight, replay, "
                                  "objective, paired data, device, validation and seed")
        self._mode.tooltip = ("What is optimised. The preset's choice won the domain-shift "
                              "benchmark (docs/finetuning.md); the others are for comparisons")
        self._trainable.tooltip = ("Which weights adapt: all, the last third of the network's "
                                   "blocks (faster, and it won the benchmark on a CPU), "
                                   "normalisation weights and biases only, or, for an "
                                   "optics-conditioned model, only the layers that read the "
                                   "optics")
        self._replay_folder.tooltip = ("In-focus images for replay pairs (default: procedural "
                                       "images)")
        self._preview_region.tooltip = ("Re-deblur this region at every preview: a rectangle "
                                        "drawn in a Shapes layer; empty: the held-out crop")
        self._name.tooltip = "Name of the fine-tuned model in the Defocus Deblur widget"
        self._output.tooltip = "Checkpoint file written by Save"
        self._start.tooltip = "Start fine-tuning; Stop keeps the best weights so far"
        self._resume.tooltip = "Continue the last stopped run (Steps and time budget may change)"
        self._save.tooltip = "Write the fine-tuned model as a checkpoint and list it"
        self._export.tooltip = (self._export_unavailable or
                                "Write the saved checkpoint as a bioimage.io model package "
                                "(.zip) for the model zoo, deepImageJ, ilastik or careamics")

    def _add_plots(self) -> None:
        from ._plot import LinePlot

        self._loss_plot = LinePlot("Training loss", log_left=True)
        self._loss_plot.add_series("loss", color="#9aa5b1")
        self._loss_plot.add_series("smoothed", color="#1f77b4")
        self._val_plot = LinePlot(SCORE_TITLE, left_label="dB", right_label="ratio")
        self._val_plot.add_series(SCORE_SERIES, color="#2ca02c", markers=True)
        self._val_plot.add_series(REBLUR_SERIES, color="#9aa5b1", style="dash", markers=True)
        self._val_plot.add_series("sharpness", color="#d62728", axis="right", style="dash",
                                  markers=True)
        self._loss_plot.setToolTip("Training loss per step (grey) and its moving average")
        self._val_plot.setToolTip(
            "Selection score (green, the one that decides which weights are kept): PSNR on "
            "fixed simulated pairs at your optics, made from real in-focus images the run never "
            "trains on, in focus included; it ranks checkpoints like the true PSNR on held-out "
            "pairs (docs/finetuning.md). The starting weights are kept unless a step beats them. "
            "Diagnostics on a crop of your images: re-blur PSNR (grey; rewards what the re-blur "
            "loss trains, so it can rise while the model gets worse) and sharpness (red, detail "
            "energy of the output relative to the input)")
        layout = self._form.native.layout()
        layout.insertWidget(layout.count() - 1, self._loss_plot)  # above the closing stretch
        layout.insertWidget(layout.count() - 1, self._val_plot)

    @staticmethod
    def _default_preset(presets: Sequence[str]) -> str:
        import torch

        wanted = "gpu" if torch.cuda.is_available() else "cpu-laptop"
        return wanted if wanted in presets else presets[0]

    # ------------------------------------------------------------------ choices
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self._viewer.layers
                if isinstance(layer, Image) and not layer.rgb
                and PREVIEW_KEY not in (layer.metadata or {})]

    def _preview_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        from napari.layers import Shapes

        return [(f"rectangle in {layer.name!r}", layer) for layer in self._viewer.layers
                if isinstance(layer, Shapes)]

    def _prefill_optics(self) -> None:
        """Fill the optical hints from the first chosen layer's metadata, where it has them."""
        layers = list(self._images.value or [])
        if not layers:
            return
        self._prefilled.update(self._optics.fill(layers[0]))

    def _apply_preset(self, name: Any = None) -> None:
        preset = self._get_preset(str(name or self._preset.value))
        self._steps.value = preset.steps
        self._time_budget.value = (preset.time_budget_s or 0.0) / 60.0
        self._batch_size.value = preset.batch_size
        self._patch_size.value = preset.patch_size
        self._lr.value = preset.lr
        self._efcr_weight.value = preset.efcr_weight
        self._replay.value = preset.replay_fraction
        self._val_every.value = max(1, preset.val_every)
        self._preview_every.value = preset.preview_every
        self._mode.value = preset.mode
        self._trainable.value = preset.trainable

    def _trainable_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        """The Adapt choices for the start model: "optics" only where it has optics inputs
        (the engine refuses it for a blind model)."""
        conditioned = self._models.optics().conditioned
        return [*TRAINABLE_CHOICES, *([TRAINABLE_OPTICS] if conditioned else [])]

    def _on_advanced(self, value: Any = None) -> None:
        self._advanced_box.visible = bool(self._advanced.value)

    # ------------------------------------------------------------------ settings
    def settings(self) -> FinetuneConfig:
        """The engine settings the fields describe (``ValueError`` for impossible optics)."""
        hints = {
            "pixel_size_um": self._pixel_size.value, "numerical_aperture": self._na.value,
            "wavelength_nm": self._wavelength.value, "immersion_index": self._index.value,
        }
        hints = {k: (float(v) if v and v > 0 else None) for k, v in hints.items()}
        na, index = hints["numerical_aperture"], hints["immersion_index"]
        if na is not None and na >= 1.0 and (index is None or na >= index):
            raise ValueError(
                f"NA {na:g} needs an immersion medium of higher index: set 'Immersion index' "
                "(1.333 water, 1.515 oil)"
            )
        budget_min = float(self._time_budget.value)
        max_defocus = float(self._max_defocus.value)
        return self._get_preset(str(self._preset.value)).replace(
            max_defocus_um=max_defocus if max_defocus > 0 else None,
            steps=int(self._steps.value),
            time_budget_s=budget_min * 60.0 if budget_min > 0 else None,
            batch_size=int(self._batch_size.value),
            patch_size=int(self._patch_size.value),
            lr=float(self._lr.value),
            efcr_weight=float(self._efcr_weight.value),
            replay_fraction=float(self._replay.value),
            mode=str(self._mode.value),
            trainable=str(self._trainable.value),
            device=str(self._device.value),
            val_every=int(self._val_every.value),
            preview_every=int(self._preview_every.value),
            seed=int(self._seed.value),
            **hints,
        )

    def _optics_origin(self) -> dict[str, str]:
        values = {"pixel_size_um": self._pixel_size.value, "numerical_aperture": self._na.value,
                  "wavelength_nm": self._wavelength.value,
                  "immersion_index": self._index.value}
        origin = {}
        for name, value in values.items():
            if not value or value <= 0:
                origin[name] = "model"
            elif name in self._prefilled and math.isclose(value, self._prefilled[name]):
                origin[name] = "layer metadata"
            else:
                origin[name] = "entered"
        return origin

    def _preview_crop(self) -> PreviewCrop | None:
        """The rectangle chosen for previews, cut from the first chosen layer's shown plane."""
        from ._layers import layer_axes, select_plane, stack_axes

        shapes = self._preview_region.value
        layers = list(self._images.value or [])
        if shapes is None or not layers:
            return None
        if not len(shapes.data):
            raise ValueError(f"Shapes layer {shapes.name!r} is empty: draw a rectangle in it")
        image = layers[0]
        vertices = np.asarray(shapes.data[0], dtype=float)
        world = np.array([shapes.data_to_world(v) for v in vertices])
        data_pts = np.array([image.world_to_data(w[-image.ndim:]) for w in world])
        ys, xs = data_pts[:, -2], data_pts[:, -1]
        height, width = image.data.shape[-2:]
        y0, y1 = int(max(0, math.floor(ys.min()))), int(min(height, math.ceil(ys.max())))
        x0, x1 = int(max(0, math.floor(xs.min()))), int(min(width, math.ceil(xs.max())))
        if y1 - y0 < 8 or x1 - x0 < 8:
            raise ValueError(
                f"the preview rectangle in {shapes.name!r} covers {max(0, y1 - y0)}×"
                f"{max(0, x1 - x0)} px of {image.name!r}; draw one of at least 8×8 px over it"
            )
        y1, x1 = min(y1, y0 + _MAX_PREVIEW_SIDE), min(x1, x0 + _MAX_PREVIEW_SIDE)
        data = image.data
        if stack_axes(layer_axes(image)):
            plane = select_plane(image, tuple(self._viewer.dims.point))
            data = data[plane.slices(data.ndim)]
        crop = np.asarray(data[..., y0:y1, x0:x1]).reshape(y1 - y0, x1 - x0)
        return PreviewCrop(crop, (y0, x0, y1 - y0, x1 - x0), image.name)
