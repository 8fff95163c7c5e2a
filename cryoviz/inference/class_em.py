"""3-D classification with known poses: exact EM over ``K`` Fourier-voxel class maps.

The model is the regularised likelihood of Scheres (2012, J. Mol. Biol. 415,
406; J. Struct. Biol. 180, 519) with the orientations and shifts fixed to the
given poses, so the only hidden variable of particle ``i`` is its class ``k``.

Noise model
-----------
Image transforms (centred half transforms of the ``D x D`` images) carry
independent complex Gaussian noise whose real and imaginary parts have variance
``sigma2(s)`` in Fourier shell ``s = round(|k| D)``; ``E |N(k)|^2 = 2 sigma2(s)``
in the units of the unnormalised FFT (``D^2`` times the real-space variance for
white noise). Over the half plane the columns ``kx = 0`` (and ``kx = D / 2`` for
even ``D``) hold each Hermitian pair twice and are weighted by 1/2. For particle
``i`` and class ``k``::

    log p(X_i | k) = - sum_k' w(k') |X_i(k') - CTF_i S_i P_{R_i} V_k (k')|^2 / (2 sigma2(s))
                     - sum_k' w(k') log(2 pi sigma2(s))

over the Fourier pixels ``k'`` of shells ``1 .. s_max`` (shell 0, the image mean,
is left out; ``s_max`` is Nyquist unless a resolution limit is set).

Iteration
---------
One pass over the images per iteration, batch by batch (memory-mapped images
are read once per iteration):

* E-step: posteriors ``gamma_ik = softmax_k(log p(X_i | k) + log pi_k)``
  (log-sum-exp), using the maps, class fractions and noise of the previous
  iteration; the marginal log-likelihood ``sum_i logsumexp_k(...)`` is reported.
* M-step, accumulated during the same pass: each class map by backprojection of
  all particles weighted by ``gamma_ik``
  (:meth:`cryoviz.backprojection.FourierAccumulator.add` with
  ``particle_weights``), separately for the two gold-standard half sets; after
  the pass the class's half-map FSC gives its Wiener / MAP regulariser
  (:func:`cryoviz.backprojection.wiener_regularizer`) exactly as
  :mod:`cryoviz.reconstruct` does for one map. ``pi_k = mean_i gamma_ik``;
  ``sigma2(s)`` is the expected residual power ``sum_ik gamma_ik |residual|^2``
  under the previous maps (an ECM step: it maximises the expected complete-data
  log-likelihood at the previous maps, before the maps are updated).

Initialisation
--------------
Without ``initial_maps`` the particles are split at random (seeded) into ``K``
equal hard subsets and each class map is reconstructed from its subset with the
same Wiener M-step (RELION's random-subset initialisation, here without an
external reference). ``initial_lowpass_angstrom`` then low-passes the starting
maps (RELION's ``ini_high``): it removes most of each particle's own noise from
the map of the subset it was put in, which otherwise biases the first E-steps
towards the random split. The noise spectrum starts from the images' own power
per shell (signal included, so the first E-step is flatter than the later ones).

Focused classification
----------------------
With a ``mask`` (real space, values in ``[0, 1]``, soft edges recommended) the
classification looks at the region inside it only, as RELION's focused
classification after signal subtraction: a consensus map of all particles
(gold-standard Wiener backprojection) is computed first, each image has the
projection of the consensus *outside* the mask (``V_c (1 - mask)``, with its
pose, shift and CTF) subtracted before anything else, and the class maps are
multiplied by the mask in every E-step. The class maps of the result are those
of the subtracted images: the region inside the mask (plus what the consensus
does not explain outside it, e.g. another region's own variability).

Limiting the E-step to low resolution (``resolution_limit_angstrom``) has the
same purpose at every iteration: a class map contains each particle's own noise
in proportion to its posterior, strongest in the sparsely sampled high shells.
On the simulated 4AKE / 1AKE mixture (box 32, 4 Å, SNR 0.1, 1500 particles)
a 20 Å initial low-pass and a 16 Å E-step limit give 99.6 % correct assignments
in 5 iterations; the defaults (32 Å initial low-pass, E-step to Nyquist) 96 %
after 8; random-subset maps used without a low-pass stay locked in the random
split (55 %).

Monotonicity: with a fixed E-step limit the reported log-likelihood is that of
an ECM algorithm except for the Wiener (MAP) regulariser, whose prior changes
with each iteration's FSC, and trilinear gridding; it has not decreased in our
runs, but it is not guaranteed to be monotone. With ``adaptive_resolution`` the
pixel set changes between iterations and the values are not comparable.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator

import numpy as np
import torch

from cryoviz.backprojection import FourierAccumulator, gold_standard_maps
from cryoviz.errors import InputError
from cryoviz.fourier import centered_irfft2, lowpass_volume
from cryoviz.imaging import forward_fourier, images_to_fourier, volume_to_fourier
from cryoviz.inference.class_em_result import ClassEMProgress, ClassEMResult, write_class_em
from cryoviz.inference.focus_mask import check_focus_mask
from cryoviz.io.particles import ImageSource, ParticleSet
from cryoviz.metrics.fsc import FSCCurve
from cryoviz.noise import half_plane_shells
from cryoviz.reconstruct import half_sets

__all__ = [
    "ClassEMProgress",
    "ClassEMResult",
    "iter_class_em",
    "run_class_em",
    "write_class_em",
]

#: Posteriors below this are not backprojected (RELION likewise skips
#: insignificant weights); a class map changes by less than this fraction of
#: one particle's contribution per skipped particle.
MIN_BACKPROJECTED_POSTERIOR = 1e-6

#: Default low-pass of random-subset starting maps, in multiples of the Nyquist
#: resolution (``2 * pixel size``): 32 Å for 4 Å pixels.
DEFAULT_INITIAL_LOWPASS_NYQUISTS = 4.0

#: Shells beyond the 0.143 crossing that the adaptive E-step limit adds.
ADAPTIVE_MARGIN_SHELLS = 2


def _check(particles: ParticleSet, n_classes: int, n_iterations: int, batch_size: int,
           initial_maps: torch.Tensor | np.ndarray | None) -> None:
    src = particles.source_path
    if particles.rotations is None:
        raise InputError(src, "poses",
                         "rotations for every particle (classification with known poses)",
                         "none")
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) \
            or n_classes < 1:
        raise InputError(None, "n_classes", "an integer >= 1", n_classes)
    if len(particles) < max(2, int(n_classes)):
        raise InputError(src, "particles",
                         f"at least max(2, n_classes) = {max(2, int(n_classes))} particles",
                         len(particles))
    if isinstance(n_iterations, bool) or not isinstance(n_iterations, (int, np.integer)) \
            or n_iterations < 1:
        raise InputError(None, "n_iterations", "an integer >= 1", n_iterations)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise InputError(None, "batch_size", "an integer >= 1", batch_size)
    if initial_maps is not None:
        d = particles.box_size
        shape = tuple(np.shape(initial_maps))
        if shape != (int(n_classes), d, d, d):
            raise InputError(None, "initial_maps", f"shape ({n_classes}, {d}, {d}, {d})", shape)
        if not bool(torch.isfinite(torch.as_tensor(np.asarray(initial_maps))).all()):
            raise InputError(None, "initial_maps", "finite values", "NaN or inf")


def _tensor(array: np.ndarray | None) -> torch.Tensor | None:
    return None if array is None else torch.as_tensor(np.asarray(array), dtype=torch.float32)


def e_step_limit_shell(
    curves: list[FSCCurve] | None, n_shells: int, cap_shell: int, adaptive: bool
) -> int:
    """Last shell used by the E-step."""
    last = min(n_shells - 1, cap_shell)
    if not adaptive or curves is None:
        return last
    box = 2 * (n_shells - 1)
    crossing = 0.0
    for c in curves:
        px = c.resolution_px(0.143)
        crossing = max(crossing, 0.0 if not math.isfinite(px) else box / px)
    return int(max(1, min(last, math.floor(crossing) + ADAPTIVE_MARGIN_SHELLS)))


def iter_class_em(
    particles: ParticleSet,
    n_classes: int,
    n_iterations: int = 10,
    batch_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
    initial_maps: torch.Tensor | np.ndarray | None = None,
    resolution_limit_angstrom: float | None = None,
    adaptive_resolution: bool = False,
    initial_lowpass_angstrom: float | None = None,
    mask: torch.Tensor | np.ndarray | None = None,
) -> Iterator[ClassEMProgress]:
    """3-D classification of particles with known poses by EM, yielding per iteration.

    Parameters
    ----------
    particles
        ``N`` particles with rotations (shifts and CTF used when present). The
        gold-standard halves are the set's ``half_set`` when present, else a
        split seeded with ``seed`` (:func:`cryoviz.reconstruct.half_sets`).
    n_classes
        ``K >= 1``. ``K = 1`` reproduces :func:`cryoviz.reconstruct.reconstruct`'s
        backprojection map.
    n_iterations
        EM iterations (one pass over the images each).
    batch_size
        Images per batch (memory is ``O(batch_size K D^2)`` plus ``2K`` padded
        Fourier accumulators).
    seed
        Seed of the random initial subsets (and of the half split if needed).
    device
        Torch device.
    initial_maps
        Optional ``(K, D, D, D)`` starting class maps (e.g. a low-passed
        consensus map, perturbed per class) instead of random subsets.
    resolution_limit_angstrom
        Highest resolution (Å) used in the E-step; ``None``: Nyquist.
    adaptive_resolution
        Grow the E-step limit with the classes' half-map 0.143 resolution (plus
        two shells), as RELION's current resolution; the log-likelihoods of
        iterations with different limits are then not comparable.
    initial_lowpass_angstrom
        Low-pass (Å, raised-cosine edge) applied to the starting maps. ``None``:
        four times the Nyquist resolution for random-subset starts, none for
        ``initial_maps``.
    mask
        Optional ``(D, D, D)`` focus mask, values in ``[0, 1]``: focused
        classification of the region inside it (see the module notes).

    Yields
    ------
    ClassEMProgress
        One per iteration; the last carries the :class:`ClassEMResult`.

    Raises
    ------
    InputError
        Missing poses, ``n_classes < 1``, bad ``n_iterations`` / ``batch_size``,
        ``initial_maps`` of the wrong shape, or a bad ``mask``
        (:func:`~cryoviz.inference.focus_mask.check_focus_mask`).
    """
    _check(particles, n_classes, n_iterations, batch_size, initial_maps)
    start_time = time.perf_counter()
    k_classes = int(n_classes)
    n = len(particles)
    box = particles.box_size
    apix = particles.pixel_size_angstrom
    halves = half_sets(particles, seed)
    rotations = _tensor(particles.rotations)
    shifts = _tensor(particles.shifts_angstrom)
    layout = half_plane_shells(box, device=device)
    cap_shell = layout.n_shells - 1
    if resolution_limit_angstrom is not None:
        if not resolution_limit_angstrom > 0:
            raise InputError(None, "resolution_limit_angstrom", "a positive number of Å",
                             resolution_limit_angstrom)
        cap_shell = int(math.floor(box * apix / resolution_limit_angstrom))
        if cap_shell < 1:
            raise InputError(None, "resolution_limit_angstrom",
                             f"at most {box * apix:g} Å (the box)", resolution_limit_angstrom)

    focus = None if mask is None else check_focus_mask(mask, (box,)).to(device)
    outside_ft: torch.Tensor | None = None  # the consensus outside the mask (focused)

    def batches() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        with ImageSource(particles) as source:
            for start in range(0, n, batch_size):
                index = np.arange(start, min(n, start + batch_size))
                images = source.images(index)
                if outside_ft is not None:  # signal subtraction
                    sel = torch.as_tensor(index)
                    model = forward_fourier(
                        outside_ft, rotations[sel].to(device, torch.float64), box, apix,
                        None if shifts is None else shifts[sel].to(device, torch.float64),
                        None if particles.ctf is None else particles.ctf.subset(sel))
                    images = images - centered_irfft2(model, box).to(images.device,
                                                                     images.dtype)
                yield index, images

    def accumulate(accs: list[list[FourierAccumulator]], index: np.ndarray,
                   images: torch.Tensor, gamma: torch.Tensor, n_maps: int = k_classes) -> None:
        for h in (0, 1):
            local = np.flatnonzero(halves[index] == h)
            if len(local) == 0:
                continue
            sel = torch.as_tensor(index[local])
            loc = torch.as_tensor(local)
            ctf_h = None if particles.ctf is None else particles.ctf.subset(sel)
            for k in range(n_maps):
                w = gamma[loc, k]
                take = torch.nonzero(w >= MIN_BACKPROJECTED_POSTERIOR).flatten()
                if len(take) == 0:
                    continue
                if len(take) == len(loc):
                    accs[k][h].add(images[loc], rotations[sel], apix,
                                   None if shifts is None else shifts[sel], ctf_h,
                                   particle_weights=w.to(torch.float32))
                    continue
                sub = sel[take]
                accs[k][h].add(images[loc[take]], rotations[sub], apix,
                               None if shifts is None else shifts[sub],
                               None if ctf_h is None else ctf_h.subset(take),
                               particle_weights=w[take].to(torch.float32))

    def new_accumulators() -> list[list[FourierAccumulator]]:
        return [[FourierAccumulator(box, device=device) for _ in (0, 1)]
                for _ in range(k_classes)]

    if focus is not None:  # a consensus of all particles, then its outside is subtracted
        whole = [FourierAccumulator(box, device=device) for _ in (0, 1)]
        for index, images in batches():
            accumulate([whole], index, images, torch.ones((len(index), 1),
                                                          dtype=torch.float64), n_maps=1)
        consensus = gold_standard_maps(whole)[0].to(device, torch.float64)
        outside_ft = volume_to_fourier(consensus * (1.0 - focus))

    # pass 0: image power per shell (initial noise) and, without initial maps,
    # the random-subset reconstructions
    power = torch.zeros(layout.n_shells, dtype=torch.float64, device=device)
    previous_best: np.ndarray | None = None
    accs = None if initial_maps is not None else new_accumulators()
    if initial_maps is None:
        rng = np.random.default_rng(seed)
        previous_best = rng.permutation(n) % k_classes
        initialisation = (f"random equal subsets (seed {seed}), Wiener-filtered "
                          "backprojection of each")
    else:
        initialisation = "initial_maps"
    for index, images in batches():
        ft = images_to_fourier(images.to(device, torch.float64))
        power += layout.sums(ft.real**2 + ft.imag**2).sum(dim=0)
        if accs is not None:
            onehot = torch.nn.functional.one_hot(
                torch.as_tensor(previous_best[index]), k_classes).to(torch.float64)
            accumulate(accs, index, images, onehot)
    sigma2 = power / (2.0 * n * layout.count.clamp(min=1e-30))
    sigma2[0] = sigma2[1]
    if accs is not None:
        built = [gold_standard_maps(a) for a in accs]
        maps = torch.stack([b[0] for b in built])
        half_maps = torch.stack([b[1] for b in built])
        curves: list[FSCCurve] | None = [b[2] for b in built]
    else:
        maps = torch.as_tensor(np.asarray(initial_maps), dtype=torch.float32)
        half_maps = torch.stack([maps, maps], dim=1)
        curves = None
    if initial_lowpass_angstrom is None and initial_maps is None:
        initial_lowpass_angstrom = DEFAULT_INITIAL_LOWPASS_NYQUISTS * 2.0 * apix
    if initial_lowpass_angstrom is not None:
        if not initial_lowpass_angstrom > 0:
            raise InputError(None, "initial_lowpass_angstrom", "a positive number of Å",
                             initial_lowpass_angstrom)
        maps = torch.stack([lowpass_volume(m, initial_lowpass_angstrom, apix) for m in maps])
        initialisation += f", low-passed to {initial_lowpass_angstrom:g} Å"
        curves = None
    log_pi = torch.full((k_classes,), -math.log(k_classes), dtype=torch.float64, device=device)

    log_likelihoods: list[float] = []
    posteriors = torch.zeros((n, k_classes), dtype=torch.float64)
    for iteration in range(1, n_iterations + 1):
        limit = e_step_limit_shell(curves, layout.n_shells, cap_shell, adaptive_resolution)
        used = (torch.arange(layout.n_shells, device=device) >= 1) & (
            torch.arange(layout.n_shells, device=device) <= limit)
        inv_two_sigma2 = torch.where(used, 0.5 / sigma2, torch.zeros_like(sigma2))
        constant = float((layout.count * torch.log(2.0 * math.pi * sigma2))[used].sum())
        maps_ft = [volume_to_fourier(m.to(device, torch.float64)
                                     * (1.0 if focus is None else focus)) for m in maps]
        accs = new_accumulators()
        residual_power = torch.zeros(layout.n_shells, dtype=torch.float64, device=device)
        total_ll = 0.0
        for index, images in batches():
            x = images_to_fourier(images.to(device, torch.float64))
            sel = torch.as_tensor(index)
            ctf = None if particles.ctf is None else particles.ctf.subset(sel)
            rot = rotations[sel].to(device, torch.float64)
            sh = None if shifts is None else shifts[sel].to(device, torch.float64)
            res = torch.stack([
                layout.sums((x - forward_fourier(v, rot, box, apix, sh, ctf)).abs() ** 2)
                for v in maps_ft
            ], dim=1)  # (B, K, S)
            log_lik = -(res * inv_two_sigma2).sum(dim=-1) - constant  # (B, K)
            joint = log_lik + log_pi
            marginal = torch.logsumexp(joint, dim=1)
            gamma = torch.exp(joint - marginal[:, None])
            total_ll += float(marginal.sum())
            residual_power += (gamma[:, :, None] * res).sum(dim=(0, 1))
            posteriors[sel] = gamma.cpu()
            accumulate(accs, index, images, gamma.cpu())
        fractions = posteriors.mean(dim=0)
        log_pi = torch.log(fractions.clamp(min=1e-300)).to(device)
        sigma2 = residual_power / (2.0 * n * layout.count.clamp(min=1e-30))
        sigma2[0] = sigma2[1]
        built = [gold_standard_maps(a) for a in accs]
        maps = torch.stack([b[0] for b in built])
        half_maps = torch.stack([b[1] for b in built])
        curves = [b[2] for b in built]
        best = posteriors.argmax(dim=1).numpy()
        changed = 1.0 if previous_best is None else float(np.mean(best != previous_best))
        previous_best = best
        log_likelihoods.append(total_ll)
        resolutions = tuple(c.resolution_angstrom(apix, 0.143) for c in curves)
        result = None
        if iteration == n_iterations:
            result = ClassEMResult(
                maps=maps.cpu(),
                half_maps=half_maps.cpu(),
                posteriors=posteriors.to(torch.float32),
                class_fractions=fractions.clone(),
                sigma2=sigma2.cpu(),
                half_fsc=tuple(curves),
                log_likelihoods=tuple(log_likelihoods),
                particle_ids=np.asarray(particles.particle_ids, dtype=np.int64).copy(),
                pixel_size_angstrom=apix,
                n_iterations=n_iterations,
                initialisation=initialisation + (
                    "" if focus is None else "; focused: images minus the consensus outside "
                    "the mask, class maps masked in the E-step"),
                seconds=time.perf_counter() - start_time,
                mask_fraction=None if focus is None else float(focus.mean()),
            )
        yield ClassEMProgress(
            iteration=iteration,
            log_likelihood=total_ll,
            class_fractions=tuple(float(f) for f in fractions),
            changed_fraction=changed,
            resolution_angstrom=resolutions,
            e_step_resolution_angstrom=box * apix / limit,
            result=result,
        )


def run_class_em(particles: ParticleSet, n_classes: int, **kwargs) -> ClassEMResult:
    """Run :func:`iter_class_em` to the end and return its result."""
    last = deque(iter_class_em(particles, n_classes, **kwargs), maxlen=1)
    return last[0].result
