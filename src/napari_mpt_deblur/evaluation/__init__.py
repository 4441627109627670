"""The evaluation harness: how good is deblurring, measured the same way every time.

Every quality number the project reports (the tables in ``docs/results/``, ``mpt-deblur
evaluate``, ``benchmarks/eval_quality.py``, the model cards) comes from :func:`evaluate`, so
that they cannot disagree. It scores the blurred input, a Richardson–Lucy baseline given the
true PSF, and any number of models on a held-out test set, per defocus level, and writes the
result as Markdown with the protocol stated under the table, as JSON, and as a figure.

The harness never guesses where the data are: the data root (``eval_config(data_root=...)``)
and the Richardson–Lucy cache (``rl_cache``) are parameters, and the command-line tools pass
their defaults (``../shared/data`` from the repository root, ``benchmarks/results``).

Modules
-------
protocol
    What is measured: image sets, defocus levels, regimes, the simulated microscope and the
    seeded noise streams (:class:`EvalConfig`, :func:`eval_config`, :func:`noise_rng`).
baselines
    Richardson–Lucy with the true PSF and its iteration tuning on validation data, cached
    (:func:`richardson_lucy_deconvolve`, :func:`tune_richardson_lucy`, :class:`RLTuning`).
columns
    Model columns from command-line words (:func:`model_columns`, :func:`split_views`,
    :class:`Ensembled`).
scoring
    The loop that runs and scores every method (:func:`evaluate`, :func:`fit_affine`).
results
    The records (:class:`Score`, :class:`EvalResult`, read back from ``results.json``).
tables, figures
    Presentation (:func:`to_markdown`, :func:`save_example_figure`; matplotlib is imported
    only when a figure is drawn).

Protocol
--------
* **Simulated defocus.** Each real in-focus eval image (``eval/bbbc006_w1_infocus``, Hoechst,
  460 nm; ``eval/bbbc006_w2_infocus``, actin, 620 nm) goes through the project's microscope
  simulator (:func:`napari_mpt_deblur.simulate.make_pair`) at each fixed defocus level with one
  fixed objective (NA 0.5, dry, 0.645 µm/px), one fixed camera (1500 photo-electrons at full
  scale, 4 e⁻ read noise, offset 110 ADU, 12 bit) and a camera-noise seed derived from the seed,
  the image name and the level. Subsets (``--levels``, ``--max-images``) therefore reproduce the
  same pairs as the full run.
* **Methods.** The blurred input itself, Richardson–Lucy with the true (simulated) PSF, and each
  model through the inference engine (:func:`napari_mpt_deblur.engine.predict.deblur`).
* **Richardson–Lucy.** ``skimage.restoration.richardson_lucy`` with ``clip=False``, on the
  image shifted to be non-negative (minus its minimum) and mirror-padded by the PSF radius (the
  simulator mirrors borders too, so zero padding would add edge artefacts that are not RL's
  fault). Its only parameter, the iteration count, is chosen per emission wavelength and
  defocus level on ``val/`` (never on ``eval/``) by :func:`tune_richardson_lucy`, and cached in
  a JSON file so the table is reproducible.
* **Metrics.** :func:`napari_mpt_deblur.metrics.psnr` / :func:`~napari_mpt_deblur.metrics.ssim`:
  both images normalised by the sharp reference's min-max range.
* **Real pair.** BBBC006 a01 site 1 w1 at z=00 (32 µm below focus) against z=16 (in focus). The
  two recordings have different intensity scales, so every method's output (the blurred input
  included) is mapped onto the in-focus image by a least-squares affine fit (:func:`fit_affine`)
  before scoring. The true PSF is unknown there; RL uses the simulator's PSF at NA 0.5, 460 nm
  and the nominal 32 µm.
"""

from __future__ import annotations

from .baselines import RL_CANDIDATES as RL_CANDIDATES
from .baselines import RLTuning as RLTuning
from .baselines import richardson_lucy_deconvolve as richardson_lucy_deconvolve
from .baselines import tune_richardson_lucy as tune_richardson_lucy
from .columns import Ensembled as Ensembled
from .columns import model_columns as model_columns
from .columns import split_blind as split_blind
from .columns import split_views as split_views
from .figures import save_example_figure as save_example_figure
from .protocol import BLURRED as BLURRED
from .protocol import EVAL_REGIMES as EVAL_REGIMES
from .protocol import IMAGE_SETS as IMAGE_SETS
from .protocol import REAL_PAIR_FOLDER as REAL_PAIR_FOLDER
from .protocol import RICHARDSON_LUCY as RICHARDSON_LUCY
from .protocol import RICHARDSON_LUCY_REAL as RICHARDSON_LUCY_REAL
from .protocol import EvalConfig as EvalConfig
from .protocol import ImageSet as ImageSet
from .protocol import eval_config as eval_config
from .protocol import noise_rng as noise_rng
from .protocol import read_plane as read_plane
from .protocol import simulation_params as simulation_params
from .results import EvalResult as EvalResult
from .results import Score as Score
from .scoring import evaluate as evaluate
from .scoring import fit_affine as fit_affine
from .tables import to_markdown as to_markdown

__all__ = [
    "BLURRED",
    "EVAL_REGIMES",
    "IMAGE_SETS",
    "REAL_PAIR_FOLDER",
    "RICHARDSON_LUCY",
    "RICHARDSON_LUCY_REAL",
    "RL_CANDIDATES",
    "Ensembled",
    "EvalConfig",
    "EvalResult",
    "ImageSet",
    "RLTuning",
    "Score",
    "eval_config",
    "evaluate",
    "fit_affine",
    "model_columns",
    "noise_rng",
    "read_plane",
    "richardson_lucy_deconvolve",
    "save_example_figure",
    "simulation_params",
    "split_blind",
    "split_views",
    "to_markdown",
    "tune_richardson_lucy",
]
