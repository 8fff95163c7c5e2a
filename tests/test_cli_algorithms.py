"""`cryoviz train` for the recipes with their own algorithm (cryoviz.train.cli_algorithms).

The algorithms themselves are tested in their own files; here: every such recipe
is reachable, each loads its particles with what it requires, and ``--resume``
is refused (not silently restarted) where a recipe writes no checkpoints.
"""

from __future__ import annotations

import pytest

from cryoviz.cli import build_parser, main
from cryoviz.io import read_star
from cryoviz.io.star import write_star_blocks
from cryoviz.simulate import SimulationConfig, simulate
from cryoviz.train.cli_algorithms import CHECKPOINTING, OWN_ALGORITHM, RUNNERS, _pose_settings
from cryoviz.train.recipes import RECIPES


@pytest.fixture(scope="module")
def star(tmp_path_factory):
    config = SimulationConfig(n_particles=8, box_size=16, pixel_size_angstrom=6.0, snr=1.0,
                              seed=0)
    return simulate(config, tmp_path_factory.mktemp("cli_alg") / "d") / "particles.star"


def test_every_recipe_has_one_runner():
    assert set(OWN_ALGORITHM).isdisjoint(RECIPES)  # the shared loop's recipes are separate
    assert set(CHECKPOINTING) <= set(OWN_ALGORITHM)
    for name in ("relion-refine", "relion-class3d", "cryosparc-abinit", "fstdiff", "3dva",
                 "cryoai", "cryoposenet", "cryogan", "cryovaegan"):
        assert name in RUNNERS


@pytest.mark.parametrize("recipe", sorted(set(OWN_ALGORITHM) - set(CHECKPOINTING)))
def test_resume_is_refused_where_nothing_is_checkpointed(star, tmp_path, capsys, recipe):
    code = main(["train", str(star), "--recipe", recipe, "-o", str(tmp_path / "run"),
                 "--resume"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--resume" in err and recipe in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize(("recipe", "prefixes", "needed"), [
    ("relion-refine", ("rlnDefocus",), "CTF is required"),
    ("relion-class3d", ("rlnAngle", "rlnOrigin"), "poses are required"),
])
def test_particles_must_have_what_the_recipe_needs(star, tmp_path, capsys, recipe, prefixes,
                                                   needed):
    blocks = read_star(star)
    name = next(k for k, t in blocks.items() if len(t) == 8)
    blocks[name] = blocks[name][[c for c in blocks[name].columns
                                 if not c.startswith(prefixes)]]
    bare = star.parent / f"bare_{recipe}.star"  # beside the stack it names
    write_star_blocks(bare, blocks)
    code = main(["train", str(bare), "--recipe", recipe, "-o", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert str(bare) in err and needed in err


@pytest.mark.parametrize("recipe", ["fstdiff", "relion-refine", "cryoposenet"])
def test_starting_map_off_the_particles_grid_names_the_file(star, tmp_path, capsys, recipe):
    """Every recipe's --initial-map is read by one check: a map of another box or voxel
    size is refused before the run, naming the file, the field and the particles' grid."""
    import numpy as np  # noqa: PLC0415

    from cryoviz.io.mrc import write_volume  # noqa: PLC0415

    for name, box, apix, message in (("box12.mrc", 12, 6.0, "box size: expected 16^3"),
                                     ("apix3.mrc", 16, 3.0, "voxel size: expected 6 Å")):
        write_volume(tmp_path / name, np.ones((box,) * 3, np.float32), apix)
        code = main(["train", str(star), "--recipe", recipe, "--initial-map",
                     str(tmp_path / name), "-o", str(tmp_path / name[:-4])])
        err = capsys.readouterr().err
        assert code == 2, err
        assert name in err and message in err and "(the particles')" in err, err


def test_3dva_filter_resolution_sets_the_working_box(star, tmp_path):
    """--filter-resolution 24 Å on 6 Å pixels of box 16: the working box whose Nyquist
    is 24 Å is 8 (12 Å voxels); without it the box is min(16, 32) = 16."""
    from cryoviz.io.mrc import read_volume  # noqa: PLC0415

    for extra, box, apix in ((["--filter-resolution", "24"], 8, 12.0), ([], 16, 6.0)):
        out = tmp_path / f"run{box}"
        assert main(["train", str(star), "--recipe", "3dva", "-o", str(out), "--epochs", "1",
                     "--components", "1", *extra]) == 0
        mean, voxel = read_volume(out / "volumes" / "mean.mrc")
        assert mean.shape == (box, box, box) and voxel == pytest.approx(apix)


def test_3dva_filter_resolution_must_be_positive(star, tmp_path, capsys):
    assert main(["train", str(star), "--recipe", "3dva", "-o", str(tmp_path / "run"),
                 "--filter-resolution", "-5"]) == 2
    assert "--filter-resolution: expected a positive number of Å" in capsys.readouterr().err


def test_3dva_mask_from_the_command_line(star, tmp_path, capsys):
    """--mask: a map on the particles' grid; the components are zero outside it; a
    mask of another box or with values outside [0, 1] is refused naming the file."""
    import numpy as np  # noqa: PLC0415

    from cryoviz.io.mrc import read_volume, write_volume  # noqa: PLC0415

    half = np.zeros((16, 16, 16), dtype=np.float32)
    half[:, :, 8:] = 1.0  # the +x half of the box
    good = tmp_path / "mask.mrc"
    write_volume(good, half, 6.0)
    out = tmp_path / "run"
    assert main(["train", str(star), "--recipe", "3dva", "-o", str(out), "--epochs", "1",
                 "--components", "1", "--mask", str(good)]) == 0
    component, _ = read_volume(out / "volumes" / "component_0.mrc")
    assert np.abs(component[:, :, :7]).max() < 1e-6 < np.abs(component[:, :, 9:]).max()
    for name, volume, apix, message in (
            ("small.mrc", np.ones((8, 8, 8), np.float32), 6.0, "box size: expected 16^3"),
            ("apix.mrc", half, 3.0, "voxel size: expected 6 Å"),
            ("range.mrc", half * 5.0, 6.0, "mask: expected values in [0, 1]")):
        write_volume(tmp_path / name, volume, apix)
        assert main(["train", str(star), "--recipe", "3dva", "-o", str(tmp_path / name[:-4]),
                     "--mask", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert name in err and message in err, err


def test_mask_reaches_class3d_and_is_refused_elsewhere(star, tmp_path, capsys):
    """relion-class3d takes --mask (focused, known poses: metrics record the mask);
    recipes without a focus mask refuse it instead of ignoring it."""
    import json  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from cryoviz.io.mrc import write_volume  # noqa: PLC0415

    half = np.zeros((16, 16, 16), dtype=np.float32)
    half[:, :, 8:] = 1.0
    path = tmp_path / "mask.mrc"
    write_volume(path, half, 6.0)
    out = tmp_path / "classes"
    assert main(["train", str(star), "--recipe", "relion-class3d", "--classes", "2", "-o",
                 str(out), "--epochs", "1", "--mask", str(path)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mask_fraction"] == 0.5 and "focused" in metrics["initialisation"]
    for recipe, extra in (("cryodrgn", []), ("relion-refine", []),
                          ("relion-class3d", ["--initial-map", str(path)])):
        assert main(["train", str(star), "--recipe", recipe, "-o", str(tmp_path / recipe),
                     "--mask", str(path), *extra]) == 2
        assert "--mask: expected" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "iterations", "expected"), [
    ((), 6, 2),  # relion-refine's default: two global searches
    (("--global-iterations", "4"), 6, 4),
    (("--global-iterations", "4"), 3, 3),  # at most the iterations
])
def test_pose_search_global_iterations(flags, iterations, expected):
    args = build_parser().parse_args(["train", "p.star", "--recipe", "relion-refine", "-o",
                                      "out", *flags])
    assert _pose_settings(args, iterations).n_global_iterations == expected
