"""Tests for cryoviz.bench.diagnostics: error propagation and sweeps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoviz.bench.diagnostics import (
    error_propagation,
    error_propagation_markdown,
    perturb_defocus,
    perturb_rotations,
    sweep_entries,
    sweep_grid_entries,
    write_error_propagation,
)
from cryoviz.bench.entries import HETEROGENEOUS_KINDS
from cryoviz.bench.suite import DatasetSpec, build_dataset
from cryoviz.ctf import CTFParams
from cryoviz.errors import InputError
from cryoviz.geometry import geodesic_distance_deg, random_rotations
from cryoviz.train.recipes import get_recipe


def test_perturbed_rotations_are_off_by_exactly_the_angle():
    rot = random_rotations(200, generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64).numpy()
    for angle in (0.0, 3.0, 20.0):
        moved = perturb_rotations(rot, angle, seed=1)
        err = geodesic_distance_deg(torch.as_tensor(moved), torch.as_tensor(rot)).numpy()
        assert np.allclose(err, angle, atol=1e-4)
        assert np.allclose(moved @ moved.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    with pytest.raises(InputError, match="pose error"):
        perturb_rotations(rot, -1.0)


def test_perturbed_defocus_has_the_error_size():
    n = 100
    ctf = CTFParams.from_arrays(defocus_u_angstrom=torch.full((n,), 15000.0, dtype=torch.float64),
                                defocus_v_angstrom=torch.full((n,), 14000.0, dtype=torch.float64),
                                astigmatism_angle_deg=0.0, voltage_kv=300.0, cs_mm=2.7,
                                amplitude_contrast=0.1)
    moved = perturb_defocus(ctf, 500.0, seed=0)
    du = (moved.defocus_u_angstrom - ctf.defocus_u_angstrom).numpy()
    dv = (moved.defocus_v_angstrom - ctf.defocus_v_angstrom).numpy()
    assert np.allclose(np.abs(du), 500.0) and np.array_equal(du, dv)
    assert 20 < (du > 0).sum() < 80  # both signs


def test_error_propagation_quality_falls_with_the_error(tmp_path):
    folder = build_dataset(DatasetSpec("homogeneous"), tmp_path)
    result = error_propagation(folder, pose_errors_deg=(0.0, 4.0, 20.0),
                               defocus_errors_angstrom=(0.0, 3000.0))
    pose = [p["fsc_auc"] for p in result["pose"]]
    assert pose[0] > pose[1] > pose[2]
    assert pose[0] - pose[2] > 0.1
    res = [p["resolution_05_angstrom"] for p in result["pose"]]
    assert res[0] < res[2]
    defocus = [p["fsc_auc"] for p in result["defocus"]]
    assert defocus[0] > defocus[1] + 0.02
    # no error reproduces the plain backprojection of the bench (same data, same method)
    assert result["pose"][0]["fsc_auc"] == pytest.approx(result["defocus"][0]["fsc_auc"])
    path = write_error_propagation(result, tmp_path / "diag")
    assert path.is_file()
    md = error_propagation_markdown(result)
    assert "| 20 |" in md and "| 3000 |" in md


def test_sweep_entries_name_the_setting():
    entries = sweep_entries("cryodrgn", "zdim", [1, 4])
    assert [e.name for e in entries] == ["cryodrgn[zdim=1]", "cryodrgn[zdim=4]"]
    assert all(e.task == "conformation" for e in entries)
    with pytest.raises(InputError, match="recipe setting"):
        sweep_entries("cryodrgn", "no_such_setting", [1])
    with pytest.raises(InputError, match="zdim"):  # every value is checked, not the first
        sweep_entries("cryodrgn", "zdim", [2, 0])


def test_a_sweep_of_a_structure_recipe_starts_from_its_bench_settings():
    # cryofold needs a base structure: without the bench's 4AKE the recipe is refused
    with pytest.raises(InputError, match="reference"):
        get_recipe("cryofold", beta=4.0)
    entries = sweep_entries("cryofold", "beta", [4.0])
    assert [e.name for e in entries] == ["cryofold[beta=4.0]"]
    assert entries[0].kinds == ("mixture", "continuous")  # not the compositional data
    assert sweep_entries("e2gmm", "beta", [4.0])[0].kinds == HETEROGENEOUS_KINDS


def test_sweep_values_on_the_command_line_may_be_words_and_booleans():
    from cryoviz.bench.cli import _sweep_entries  # noqa: PLC0415

    names = [e.name for e in _sweep_entries(["cryodrgn:domain=hartley,fourier",
                                             "cryodrgn:encoder_phase_flip=false",
                                             "cryodrgn:beta=0.5"])]
    assert names == ["cryodrgn[domain=hartley]", "cryodrgn[domain=fourier]",
                     "cryodrgn[encoder_phase_flip=False]", "cryodrgn[beta=0.5]"]
    with pytest.raises(InputError, match="domain"):
        _sweep_entries(["cryodrgn:domain=sideways"])
    # each value is typed as its recipe field: an integer setting refuses 2.5
    with pytest.raises(InputError, match="--sweep zdim: expected an integer, got 2.5"):
        _sweep_entries(["cryodrgn:zdim=2,2.5"])
    assert [e.name for e in _sweep_entries(["cryodrgn:pe-dim=16"])] == ["cryodrgn[pe_dim=16]"]


def test_a_sweep_of_several_settings_runs_every_combination():
    from cryoviz.bench.cli import _sweep_entries  # noqa: PLC0415

    names = [e.name for e in _sweep_entries(["e2gmm:beta=1,4+kl-warmup-epochs=0,2.5"])]
    assert names == ["e2gmm[beta=1.0,kl_warmup_epochs=0.0]",
                     "e2gmm[beta=1.0,kl_warmup_epochs=2.5]",
                     "e2gmm[beta=4.0,kl_warmup_epochs=0.0]",
                     "e2gmm[beta=4.0,kl_warmup_epochs=2.5]"]
    # a '+' inside a number is part of the value, not the next setting
    assert [e.name for e in _sweep_entries(["cryodrgn:lr=1e+0+zdim=2"])] == [
        "cryodrgn[lr=1.0,zdim=2]"]
    assert [e.name for e in sweep_grid_entries("e2gmm", [("encoder_input", ["fit_gradient"]),
                                                        ("beta", [4.0])])] == [
        "e2gmm[encoder_input=fit_gradient,beta=4.0]"]  # the name of the committed row
    with pytest.raises(InputError, match="each setting once"):
        _sweep_entries(["cryodrgn:zdim=2+zdim=4"])
    with pytest.raises(InputError, match="kl_warmup_epochs"):  # every combination is checked
        _sweep_entries(["cryodrgn:zdim=2,4+kl_warmup_epochs=1,-1"])
    with pytest.raises(InputError, match=r"RECIPE:SETTING=V1,V2,...\[\+SETTING"):
        _sweep_entries(["cryodrgn:zdim"])
    with pytest.raises(InputError, match="--sweep zdim: expected an integer, got 2\\+"):
        _sweep_entries(["cryodrgn:zdim=2+"])  # no setting after the '+'
