"""Write ``weights/<name>.md``, the model card of a bundled model, from its checkpoint header
and the evaluation results in ``docs/results/quality.md`` (and ``quality_oil-1.4.md``).

The card names the model's recipe (``configs/recipes/<name>.yaml``, the config of its last
stage) and says in words how the weights that stage started from were made (``--lineage``); the
earlier stages' configs live in git history, not in the tree (docs/training.md, "Recipes").

    python scripts/model_card.py mpt-tiny --lineage "stage 1 (...) → ... → stage 12" --notes "..."
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_mpt_deblur.models.checkpoint import file_sha256, read_header
from napari_mpt_deblur.models.pretrained import bundled_models

ROOT = Path(__file__).resolve().parents[1]


def simulation_line(config: dict, header: dict) -> str:
    """The card's line on the simulation: a preset name as before, or a mixture's members and
    shares (the header then records every member under ``mixture``)."""
    from napari_mpt_deblur.simulate import describe_simulation

    spec = config.get("simulation")
    kind = "preset" if spec is None or isinstance(spec, str) else "mixture"
    text = spec if spec is None or isinstance(spec, str) else describe_simulation(spec)
    return f"- Simulation {kind} `{text}`: `{json.dumps(header.get('simulation'))[:600]}`"


def averaging_lines(header: dict) -> list[str]:
    """Card lines for a weight average (``scripts/average_weights.py``): what was averaged, and
    that the header's validation metrics are those of the averaged run's step, not of the
    shipped weights (the average is never validated during training)."""
    parts = header.get("averaged_from")
    if isinstance(parts, str):  # files averaged before 2026-12-07 stored it as a JSON string
        parts = json.loads(parts)
    if not parts:
        return []
    terms = " + ".join(
        f"{float(p['weight']):g} × `{p['checkpoint']}`"
        + (f" (SHA-256 `{p['sha256'][:16]}…`)" if p.get("sha256") else "") for p in parts)
    return [f"- **Weight average** of checkpoints of one lineage: {terms} (the first is this "
            "recipe's run, whose training record is the one above; a key such as "
            "`mpt_tiny.defocus` names the bundled weights of that day, which the lineage above "
            "identifies). Chosen on validation data only; "
            "the metrics below are that run's own, not the average's."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--notes", default="", help="extra Markdown for the limitations section")
    parser.add_argument("--recipe", default=None, metavar="YAML",
                        help="the config of the weights' last stage (default: "
                             "configs/recipes/<name>.yaml)")
    parser.add_argument("--lineage", default="",
                        help="Markdown: the stages that led to the recipe's starting weights "
                             "(default: the recipe is the only stage)")
    parser.add_argument("--configs", nargs="+", default=None, metavar="YAML",
                        help="deprecated: one config file per stage; use --recipe and --lineage")
    args = parser.parse_args()
    if args.configs:
        print("model_card.py: --configs is deprecated (stage configs are no longer kept in the "
              "tree); use --recipe and --lineage", file=sys.stderr)
    path = bundled_models()[args.name]
    header = read_header(path) or {}
    averaged = averaging_lines(header)
    training = header.get("training", {})
    config = training.get("config", training)
    quality = ROOT / "docs" / "results" / "quality.md"
    oil = ROOT / "docs" / "results" / "quality_oil-1.4.md"  # benchmarks/eval_quality.py --regime
    recipe = args.recipe or f"configs/recipes/{args.name}.yaml"
    lineage = args.lineage or (" → ".join(f"`{c}`" for c in args.configs) if args.configs
                               else "")
    provenance = f"recipe `{recipe}`, " + (f"started (`--init`) from {lineage}" if lineage
                                            else "from scratch")
    lines = [
        f"# Model card: `{args.name}`",
        "",
        f"- **Architecture**: {header.get('arch', 'mpt').upper()} preset "
        f"`{config.get('model', '?')}`, routing `{header.get('routing')}`, "
        f"{header.get('in_channels')} channel(s) in/out; "
        f"config `{json.dumps(header.get('config'))}`.",
        f"- **File**: `{path.name}`, {path.stat().st_size / 1e6:.1f} MB, "
        f"SHA-256 `{file_sha256(path)}`.",
        f"- **Licence**: {header.get('license', 'Apache-2.0')}.",
        "- **Intended use**: widefield fluorescence images with defocus blur, 20×-class optics "
        "(about 0.3-1 µm/px); other optics: fine-tune (docs/finetuning.md).",
        *([] if not (header.get("config") or {}).get("optics_conditioning") else [
            "- **Optics**: optics-conditioned. Give the microscope (pixel size and NA at least; "
            "emission wavelength and immersion if known): read from the file's metadata, the "
            "CLI's `--pixel-size-um`, `--na`, `--wavelength-nm`, `--immersion-index` or the "
            "widget's Optics group. Without them it runs blind, on a default it learned from "
            "30 % of its training pairs (docs/training.md, \"Optics-conditioned models\")."]),
        "",
        "## Training",
        "",
        f"- Data: {', '.join(config.get('train_dirs', []) + config.get('extra_dirs', []))} "
        f"(under `{config.get('data_root')}`; see `../shared/data/README.md` and "
        "`scripts/prepare_extra_data.py` for sources and licences). Validation on "
        f"{', '.join(config.get('val_dirs', []))}; the test set (`eval/`) was used neither "
        "for training nor for choosing the checkpoint.",
        simulation_line(config, header),
        f"- Optimisation: {config.get('steps')} steps planned, batch {config.get('batch_size')} × "
        f"{config.get('patch_size')} px, AdamW lr {config.get('lr')}, {config.get('pixel_loss')} "
        f"loss + EFCR (λ = {config.get('efcr_weight')}) in the last stage; {provenance}.",
        *averaged,
        (f"- Validation metrics of the run at step {(header.get('metrics') or {}).get('step')}: "
         if averaged else "- Validation metrics of these weights: ")
        + f"`{json.dumps(header.get('metrics'))[:400]}`",
        "",
        "## Evaluation",
        "",
        quality.read_text() if quality.exists() else "(run `benchmarks/eval_quality.py`)",
        "",
        *([oil.read_text(), ""] if oil.exists() else []),
        "## Limitations",
        "",
        args.notes or "See the notes above.",
        "",
    ]
    out = path.with_suffix(".md")
    out.write_text("\n".join(lines))
    print(out)


if __name__ == "__main__":
    main()
