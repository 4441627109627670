"""bioimage.io model-zoo packages: export our models, and load them back.

A bioimage.io package (``bioimageio.spec`` 0.5 format) is a zip of an ``rdf.yaml`` description,
weights, a test input with its expected output and a model card. careamics, deepImageJ, ilastik
and the bioimage.io tools read it, so a model trained or fine-tuned here can be used there.

Why the network is wrapped (:class:`DeblurNetwork`)
---------------------------------------------------
Our engine maps each plane and channel to model units with ``(x - lo) / (hi - lo)``, where
``lo``/``hi`` are low/high percentiles of *that input image*, and maps the network's output back
with the inverse, ``y * (hi - lo) + lo``, using the same ``lo``/``hi``. The spec's preprocessing
op ``scale_range`` can express the first step, but no postprocessing op applies the inverse of
another tensor's percentile scaling (``scale_linear`` needs fixed numbers, ``scale_mean_variance``
matches mean and variance, which is a different map). So both steps live in a small wrapper module
around the network: the package takes the raw image and returns the deblurred image in the same
units, exactly as :func:`napari_mpt_deblur.deblur` does for a whole plane. The only spec op used
is ``ensure_dtype`` (float32) on the input.

Loading needs no ``bioimageio`` package: :func:`load_bioimageio` reads the description with
PyYAML and the weights with ``torch.load(weights_only=True)``.

Layout: :mod:`.network` (the wrapper, :class:`DeblurNetwork`, and the names a package uses to
find it), :mod:`.export` (:func:`export_bioimageio`), :mod:`.card` (the package's model card),
:mod:`.load` (:func:`load_bioimageio`). Everything public is importable from here, the module
that bioimage.io descriptions name.
"""

from __future__ import annotations

from .card import CITATIONS as CITATIONS
from .card import DEFAULT_AUTHORS as DEFAULT_AUTHORS
from .card import DEFAULT_LICENSE as DEFAULT_LICENSE
from .export import ExportReport, build_model_description, export_bioimageio
from .export import default_test_image as default_test_image
from .load import RDF_NAMES as RDF_NAMES
from .load import is_bioimageio_package, load_bioimageio
from .network import ARCHITECTURE_CALLABLE as ARCHITECTURE_CALLABLE
from .network import ARCHITECTURE_MODULE as ARCHITECTURE_MODULE
from .network import CONFIG_KEY as CONFIG_KEY
from .network import DeblurNetwork

# The module-level names above (constants, ``default_test_image``) were importable from here
# before the package split and stay so; ``__all__`` is what it was.
__all__ = [
    "DeblurNetwork",
    "ExportReport",
    "build_model_description",
    "export_bioimageio",
    "is_bioimageio_package",
    "load_bioimageio",
]
