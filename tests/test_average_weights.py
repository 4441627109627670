"""``scripts/average_weights.py``: a weighted mean of two stages' weights, as a loadable model."""

from __future__ import annotations

import pytest
import torch


def test_average_state_dicts_is_the_weighted_mean_and_refuses_mismatches(load_script):
    avg = load_script("average_weights").average_state_dicts
    a = {"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([2.0, 0.0]), "n": torch.tensor(7)}
    out = avg([a, b], [3.0, 1.0])
    assert torch.allclose(out["w"], torch.tensor([0.5, 3.0]))
    assert out["n"] == 3  # integer buffers come from the first checkpoint
    with pytest.raises(ValueError, match="other parameters"):
        avg([a, {"v": b["w"], "n": b["n"]}], [1.0, 1.0])
    with pytest.raises(ValueError, match="shapes differ"):
        avg([a, {"w": torch.zeros(3), "n": b["n"]}], [1.0, 1.0])
    with pytest.raises(ValueError, match="one weight per checkpoint"):
        avg([a, b], [1.0])


def test_soup_of_two_checkpoints_loads_and_computes_between_them(load_script, tmp_path):
    from napari_mpt_deblur import create_model, load_model
    from napari_mpt_deblur.models.checkpoint import read_header, save_checkpoint

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = create_model("mpt-test", routing="aligned", optics_conditioning=True)
        paths.append(save_checkpoint(tmp_path / f"m{seed}.safetensors", net,
                                     metadata={"name": f"m{seed}"}))
    out = tmp_path / "soup.safetensors"
    assert load_script("average_weights").main(
        [str(paths[0]), str(paths[1]), "--weights", "0.25", "0.75", "-o", str(out)]) == 0
    soup = load_model(str(out), device="cpu")
    first, second = (load_model(str(p), device="cpu") for p in paths)
    key = next(k for k, v in soup.state_dict().items() if v.is_floating_point())
    expected = 0.25 * first.state_dict()[key] + 0.75 * second.state_dict()[key]
    assert torch.allclose(soup.state_dict()[key], expected, atol=1e-6)

    recipe = read_header(out)["averaged_from"]
    assert [r["weight"] for r in recipe] == [0.25, 0.75]
    from napari_mpt_deblur.models.checkpoint import file_sha256

    assert [r["sha256"] for r in recipe] == [file_sha256(p) for p in paths]
    with pytest.raises(ValueError, match="sum to a positive number"):  # not a ZeroDivisionError
        load_script("average_weights").main(
            [str(paths[0]), str(paths[1]), "--weights", "1", "-1", "-o", str(tmp_path / "x")])


def test_model_card_says_an_average_is_one_and_whose_metrics_it_shows(load_script, tmp_path):
    card = load_script("model_card")
    recipe = [{"checkpoint": "runs/a/state.pt", "weight": 0.3},
              {"checkpoint": "mpt_tiny.defocus", "weight": 0.7}]
    import json

    for stored in (json.dumps(recipe), recipe):  # as older files stored it, and as now
        (line,) = card.averaging_lines({"averaged_from": stored, "metrics": {"step": 1900}})
        assert "0.3 × `runs/a/state.pt` + 0.7 × `mpt_tiny.defocus`" in line
        assert "not the average's" in line
    assert card.averaging_lines({"metrics": {"step": 5}}) == []
    (line,) = card.averaging_lines({"averaged_from": [
        {"checkpoint": "a.pt", "weight": 1.0, "sha256": "ab" * 32}]})
    assert "1 × `a.pt` (SHA-256 `abababababababab…`)" in line
