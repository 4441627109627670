"""Simulation mixtures: parsing and its errors, draws by weight, seeding, records, the
high-NA oil training preset."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from napari_mpt_deblur.simulate import (
    OpticsConfig,
    SimulationConfig,
    SimulationMixture,
    canonical_simulation_spec,
    defocus_psf,
    describe_simulation,
    get_simulation_preset,
    parse_simulation,
    sample_parameters,
    simulation_from_header,
)

MIX = {"bbbc006": 0.7, "oil-high-na": 0.3}


def test_both_mixture_forms_give_one_canonical_list():
    listed = [{"preset": "bbbc006", "weight": 0.7}, {"preset": "oil-high-na", "weight": 0.3}]
    canonical = canonical_simulation_spec(MIX)
    assert canonical == canonical_simulation_spec(listed)
    assert canonical == ({"name": "bbbc006", "preset": "bbbc006", "weight": 0.7, "overrides": {}},
                         {"name": "oil-high-na", "preset": "oil-high-na", "weight": 0.3,
                          "overrides": {}})
    # idempotent, and unchanged by a JSON round trip (tuples in overrides become lists)
    assert canonical_simulation_spec(json.loads(json.dumps(canonical))) == canonical
    with_tuple = [{"preset": "bbbc006", "overrides": {"defocus_um_range": (2.0, 8.0)}}]
    assert canonical_simulation_spec(with_tuple)[0]["overrides"] == {"defocus_um_range": [2, 8]}
    assert canonical_simulation_spec("bbbc006") == "bbbc006"


@pytest.mark.parametrize(("spec", "message"), [
    ({"bbbc007": 1.0}, r"unknown simulation preset 'bbbc007'; choose one of .*'oil-high-na'"),
    ("bbbc007", "unknown simulation preset 'bbbc007'"),
    ({"bbbc006": 0.0, "oil-high-na": 1.0}, r"weight of 'bbbc006' must be finite and > 0"),
    ({"bbbc006": -0.5}, "must be finite and > 0"),
    ({"bbbc006": math.nan}, "must be finite and > 0"),
    ({"bbbc006": "0.7"}, "weight of 'bbbc006' must be a number"),
    ({"bbbc006": True}, "must be a number"),
    ({}, "has no members"),
    ([], "has no members"),
    ({"bbbc006": {"weight": 1}}, "for overrides use the list form"),
    ([{"preset": "bbbc006", "wieght": 1}], r"unknown keys \['wieght'\]; valid keys"),
    ([{"weight": 1}], "needs a preset name"),
    (["bbbc006"], "must be a mapping"),
    ([{"preset": "bbbc006"}, {"preset": "bbbc006"}], r"\['bbbc006'\] appear more than once"),
    (3, "must be a preset name"),
])
def test_bad_mixtures_are_refused_with_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_simulation(spec)


def test_member_overrides_are_checked_and_named():
    with pytest.raises(ValueError, match=r"member 'oil-high-na': .*unknown SimulationConfig keys"):
        parse_simulation([{"preset": "bbbc006"},
                          {"preset": "oil-high-na", "overrides": {"pixel_size": 0.1}}])
    with pytest.raises(ValueError, match="must share source_percentiles"):
        parse_simulation([{"preset": "bbbc006"}, {
            "preset": "oil-high-na", "overrides": {"source_percentiles": [1.0, 99.0]}}])


def test_overrides_common_then_per_member():
    mix = parse_simulation(
        [{"preset": "bbbc006", "weight": 3, "overrides": {"near_focus_probability": 0.5}},
         {"preset": "oil-high-na", "name": "oil-65nm", "overrides": {"pixel_size_um": 0.065}},
         {"preset": "oil-high-na"}],
        overrides={"near_focus_probability": 0.1, "haze_probability": 0.0})
    assert isinstance(mix, SimulationMixture)
    assert mix.names == ("bbbc006", "oil-65nm", "oil-high-na")
    assert [c.near_focus_probability for c in mix.configs] == [0.5, 0.1, 0.1]
    assert [c.haze_probability for c in mix.configs] == [0.0, 0.0, 0.0]
    assert [c.pixel_size_um for c in mix.configs] == [0.645, 0.065, 0.1]
    assert mix.probabilities.tolist() == pytest.approx([0.6, 0.2, 0.2])
    assert mix.primary is mix.configs[0]
    # a preset name stays a plain config, with the overrides as before
    single = parse_simulation("bbbc006", {"defocus_um_range": [2, 16]})
    assert single == get_simulation_preset("bbbc006").replace(defocus_um_range=(2.0, 16.0))


def test_draws_follow_the_weights():
    mix = parse_simulation({"bbbc006": 0.7, "oil-high-na": 0.2, "widefield-dry": 0.1})
    rng = np.random.default_rng(2026)
    n = 3000
    drawn = [mix.names[mix.choose(rng)] for _ in range(n)]
    for name, p in zip(mix.names, mix.probabilities):
        share = drawn.count(name) / n
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / n), (name, share)


def test_draws_are_seeded_and_record_their_member():
    mix = parse_simulation(MIX)
    a = [mix.sample_parameters(np.random.default_rng([5, s])) for s in range(40)]
    b = [mix.sample_parameters(np.random.default_rng([5, s])) for s in range(40)]
    c = [mix.sample_parameters(np.random.default_rng([6, s])) for s in range(40)]
    assert a == b and a != c
    assert {p["member"] for p in a} == {"bbbc006", "oil-high-na"}
    for p in a:  # each pair's optics come from its member
        cfg = mix.configs[mix.names.index(p["member"])]
        assert p["pixel_size_um"] == cfg.pixel_size_um
        assert p["immersion_index"] == cfg.immersion_index
    forced = mix.sample_parameters(0, member=1, defocus_um=1.0)
    assert forced["member"] == "oil-high-na" and forced["defocus_nominal_um"] == 1.0
    with pytest.raises(ValueError, match=r"member must be in 0\.\.1"):
        mix.sample_parameters(0, member=2)


def test_a_one_member_mixture_reproduces_its_preset():
    """No draw is spent on choosing the only member, so its pairs are the preset's."""
    mix = parse_simulation([{"preset": "bbbc006"}])
    for seed in range(5):
        params = mix.sample_parameters(seed)
        assert params.pop("member") == "bbbc006"
        assert params == sample_parameters("bbbc006", seed)


def test_counts_split_by_weight_with_one_each():
    mix = parse_simulation(MIX)
    assert mix.counts(24) == [17, 7] and mix.counts(16) == [11, 5]
    assert mix.counts(2) == [1, 1] and mix.counts(1) == [1, 0]
    three = parse_simulation({"bbbc006": 0.9, "oil-high-na": 0.05, "oil-1.2": 0.05})
    for n in (3, 7, 10, 33):
        counts = three.counts(n)
        assert sum(counts) == n and min(counts) >= 1
    with pytest.raises(ValueError, match="n must be >= 1"):
        mix.counts(0)


def test_header_records_round_trip_and_old_headers_still_load():
    mix = parse_simulation(MIX)
    record = json.loads(json.dumps(mix.to_dict()))
    assert simulation_from_header(record) == mix
    # the flat fields are the largest member's, for readers of one config (fine-tuning replay)
    flat = {k: v for k, v in record.items() if k not in ("preset", "mixture")}
    assert SimulationConfig.from_dict(flat) == mix.primary == get_simulation_preset("bbbc006")
    assert record["preset"] == mix.name == "bbbc006:0.7+oil-high-na:0.3"
    # headers written before mixtures: a flat config (with its preset name), or a bare name
    sim = get_simulation_preset("bbbc006").replace(defocus_um_range=(2.0, 16.0))
    old = json.loads(json.dumps({"preset": "bbbc006", **sim.to_dict()}))
    assert simulation_from_header(old) == sim
    assert simulation_from_header({"preset": "oil-1.2"}) == get_simulation_preset("oil-1.2")
    assert simulation_from_header("bbbc006") == get_simulation_preset("bbbc006")
    assert simulation_from_header(None) is None


def test_describe_simulation():
    assert describe_simulation("bbbc006") == "bbbc006"
    assert describe_simulation(MIX) == "bbbc006 70 %, oil-high-na 30 %"
    text = describe_simulation([{"preset": "oil-high-na", "name": "oil-65nm",
                                 "overrides": {"pixel_size_um": 0.065}}])
    assert text == "oil-65nm 100 % (preset oil-high-na) with {'pixel_size_um': 0.065}"


def test_oil_high_na_preset_is_physical():
    oil = get_simulation_preset("oil-high-na")
    assert oil.numerical_aperture_range == (1.25, 1.45) and oil.immersion_index == 1.515
    assert oil.pixel_size_um == 0.1 and oil.defocus_um_range == (0.0, 3.0)
    # about Nyquist (λ / 4NA) for GFP emission at NA 1.4, as the preset's comment says
    assert oil.pixel_size_um == pytest.approx(0.520 / (4 * 1.4), rel=0.1)
    # the largest defocus at the highest NA still fits the PSF without truncation
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        psf = defocus_psf(OpticsConfig(numerical_aperture=1.45, wavelength_nm=460.0,
                                       immersion_index=1.515, pixel_size_um=0.1, defocus_um=3.0))
    assert psf.sum() == pytest.approx(1.0)
    draws = [sample_parameters(oil, np.random.default_rng([1, i])) for i in range(400)]
    na = np.array([d["numerical_aperture"] for d in draws])
    defocus = np.abs([d["defocus_um"] for d in draws])
    assert na.min() >= 1.25 and na.max() <= 1.45
    assert defocus.max() <= 3.0
    near = np.mean(defocus <= 0.4)  # near-focus share plus the plain draw's own (0.4 / 3)
    expected = 0.25 + 0.75 * 0.4 / 3.0
    assert abs(near - expected) < 4 * math.sqrt(expected * (1 - expected) / len(draws))
