"""Particle selection (index, cluster, polygon on an embedding) and export with identities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cryoviz.analysis import export_selection, points_in_polygon, select_particles
from cryoviz.ctf import CTFParams
from cryoviz.io import (
    ParticleSet,
    load_particles,
    read_index_pkl,
    write_stack,
    write_star,
)
from cryoviz.io.conventions import relion_to_internal

APIX = 2.0


def test_points_in_square():
    square = np.array([[0, 0], [2, 0], [2, 2], [0, 2]], dtype=float)
    pts = np.array([[1, 1], [0.1, 1.9], [1.9, 0.1], [3, 1], [-0.5, 1], [1, 2.5], [1, -1],
                    [2.1, 2.1]])
    want = [True, True, True, False, False, False, False, False]
    assert points_in_polygon(pts, square).tolist() == want
    # orientation and a closing vertex do not matter
    assert points_in_polygon(pts, square[::-1]).tolist() == want
    assert points_in_polygon(pts, np.vstack([square, square[:1]])).tolist() == want
    assert points_in_polygon(pts, square, rule="nonzero").tolist() == want


def test_points_in_concave_polygon():
    # a "U": outer 0..3 x 0..3 with the notch 1..2 x 1..3 cut out of the top
    u = np.array([[0, 0], [3, 0], [3, 3], [2, 3], [2, 1], [1, 1], [1, 3], [0, 3]], dtype=float)
    pts = np.array([
        [0.5, 2.5],  # left arm
        [2.5, 2.5],  # right arm
        [1.5, 0.5],  # bottom bar
        [1.5, 2.0],  # in the notch: outside
        [1.5, 1.2],  # just above the bar, in the notch: outside
        [0.5, 0.5],
        [3.5, 2.5],
        [1.5, 3.5],
        [-0.1, 1.5],
    ])
    want = [True, True, True, False, False, True, False, False, False]
    assert points_in_polygon(pts, u).tolist() == want
    assert points_in_polygon(pts, u, rule="nonzero").tolist() == want
    # a ray through a vertex (y = 1 passes the notch corners) is counted once
    on_vertex_line = np.array([[0.5, 1.0], [2.5, 1.0], [-1.0, 1.0], [4.0, 1.0]])
    assert points_in_polygon(on_vertex_line, u).tolist() == [True, True, False, False]


def test_self_intersecting_rules():
    # a pentagram: the centre is covered twice (even-odd: out, nonzero: in)
    ang = np.pi / 2 + np.arange(5) * 4 * np.pi / 5
    star = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    centre = np.zeros((1, 2))
    assert not points_in_polygon(centre, star)[0]
    assert points_in_polygon(centre, star, rule="nonzero")[0]


def test_points_in_polygon_bad_input():
    with pytest.raises(ValueError, match="V >= 3"):
        points_in_polygon(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        points_in_polygon(np.zeros((2, 3)), np.eye(3)[:, :2])


def _particles(folder, n=40, d=8, seed=0):
    rng = np.random.default_rng(seed)
    stack = folder / "stacks" / "parts.mrcs"
    write_stack(stack, rng.normal(size=(n, d, d)).astype(np.float32), APIX)
    euler = np.stack([rng.uniform(-180, 180, n), rng.uniform(5, 175, n),
                      rng.uniform(-180, 180, n)], axis=1)
    rot, shifts = relion_to_internal(euler, rng.normal(size=(n, 2)) * 3.0)
    ctf = CTFParams.from_arrays(
        defocus_u_angstrom=rng.uniform(10000, 20000, n),
        defocus_v_angstrom=rng.uniform(9000, 19000, n),
        astigmatism_angle_deg=rng.uniform(-90, 90, n), voltage_kv=300.0, cs_mm=2.7,
        amplitude_contrast=0.1,
    )
    ps = ParticleSet(
        image_stacks=[stack], stack_index=np.zeros(n), image_index=rng.permutation(n),
        box_size=d, pixel_size_angstrom=APIX, rotations=rot, shifts_angstrom=shifts, ctf=ctf,
        extra=pd.DataFrame({"rlnClassNumber": rng.integers(1, 4, n)}),
    )
    original = folder / "particles.star"
    write_star(ps, original)
    return load_particles(original), original


def _check_rows(back, ref, idx, rot_atol, shift_atol, df_atol):
    np.testing.assert_array_equal(back.particle_ids, ref.particle_ids[idx])
    np.testing.assert_array_equal(back.image_index, ref.image_index[idx])
    np.testing.assert_allclose(back.rotations, ref.rotations[idx], atol=rot_atol)
    np.testing.assert_allclose(back.shifts_angstrom, ref.shifts_angstrom[idx], atol=shift_atol)
    a, b = back.ctf.as_numpy(), ref.ctf.as_numpy()
    for key in ("defocus_u_angstrom", "defocus_v_angstrom"):
        np.testing.assert_allclose(a[key], b[key][idx], atol=df_atol)
    assert [p.resolve() for p in back.image_stacks] == [p.resolve() for p in ref.image_stacks]


def test_select_particles_criteria(tmp_path):
    ps, _ = _particles(tmp_path, n=10)
    assert select_particles(ps, index=[7, 2, 2, 5]).tolist() == [2, 5, 7]
    mask = np.zeros(10, bool)
    mask[[1, 3]] = True
    assert select_particles(ps, index=mask).tolist() == [1, 3]
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    assert select_particles(ps, cluster_labels=labels, clusters=0).tolist() == [0, 3, 6, 9]
    assert select_particles(ps, cluster_labels=labels, clusters=[1, 2]).tolist() == [
        1, 2, 4, 5, 7, 8]
    emb = np.stack([np.arange(10.0), np.zeros(10)], axis=1)
    box = np.array([[2.5, -1], [6.5, -1], [6.5, 1], [2.5, 1]])
    assert select_particles(ps, polygon=box, embedding=emb).tolist() == [3, 4, 5, 6]
    # criteria combine by intersection
    assert select_particles(ps, polygon=box, embedding=emb, cluster_labels=labels,
                            clusters=0).tolist() == [3, 6]
    with pytest.raises(ValueError, match="needs"):
        select_particles(ps)
    with pytest.raises(ValueError, match="go together"):
        select_particles(ps, polygon=box)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        select_particles(ps, index=[10])
    with pytest.raises(ValueError, match=r"\(10, 2\)"):
        select_particles(ps, polygon=box, embedding=emb[:5])


def test_export_selection_round_trip(tmp_path):
    ps, original = _particles(tmp_path)
    # a 2-D "embedding" with a known region
    rng = np.random.default_rng(5)
    emb = rng.uniform(-1, 1, size=(len(ps), 2))
    tri = np.array([[-1.0, -1.0], [1.0, -1.0], [0.0, 1.0]])
    idx = select_particles(ps, polygon=tri, embedding=emb)
    x, y = emb[:, 0], emb[:, 1]
    want = np.flatnonzero((y > -1) & (y < 2 * x + 1) & (y < -2 * x + 1))
    np.testing.assert_array_equal(idx, want)
    assert 5 < idx.size < len(ps)

    out = export_selection(ps, idx, tmp_path / "sel" / "chosen")
    assert out == {"star": tmp_path / "sel" / "chosen.star", "cs": tmp_path / "sel" / "chosen.cs",
                   "pkl": tmp_path / "sel" / "chosen_index.pkl"}
    star_back = load_particles(out["star"])
    _check_rows(star_back, ps, idx, rot_atol=1e-5, shift_atol=1e-5, df_atol=1e-5)
    np.testing.assert_array_equal(star_back.extra["rlnClassNumber"],
                                  ps.extra["rlnClassNumber"].to_numpy()[idx])
    cs_back = load_particles(out["cs"])  # float32 fields
    _check_rows(cs_back, ps, idx, rot_atol=1e-5, shift_atol=1e-4, df_atol=1e-2)
    np.testing.assert_array_equal(read_index_pkl(out["pkl"]), ps.particle_ids[idx])
    # the index pickle applies to the original file, cryoDRGN-style
    via_pkl = load_particles(original, index=out["pkl"])
    _check_rows(via_pkl, ps, idx, rot_atol=0, shift_atol=0, df_atol=0)
    # the images are the same ones
    from cryoviz.io import ImageSource  # noqa: PLC0415

    with ImageSource(star_back) as a, ImageSource(ps) as b:
        np.testing.assert_array_equal(a.images(np.arange(idx.size)).numpy(),
                                      b.images(idx).numpy())


def test_export_keeps_original_ids_of_a_subset(tmp_path):
    full, original = _particles(tmp_path, n=30)
    # work on a subset (as after an earlier selection): positions are not ids any more
    sub = full.subset(np.arange(10, 30))
    idx = select_particles(sub, index=[0, 4, 19])
    out = export_selection(sub, idx, tmp_path / "again", formats=("star", "pkl"))
    assert set(out) == {"star", "pkl"}
    ids = read_index_pkl(out["pkl"])
    assert ids.tolist() == [10, 14, 29]
    back = load_particles(out["star"])
    assert back.particle_ids.tolist() == [10, 14, 29]
    via_pkl = load_particles(original, index=out["pkl"])
    np.testing.assert_array_equal(via_pkl.rotations, full.rotations[ids])
    np.testing.assert_allclose(back.rotations, full.rotations[ids], atol=1e-5)
    with pytest.raises(ValueError, match="empty"):
        export_selection(sub, [], tmp_path / "none")
    with pytest.raises(ValueError, match="formats"):
        export_selection(sub, idx, tmp_path / "x", formats=("mrc",))
