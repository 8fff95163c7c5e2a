"""The training loop shared by every recipe (poses known, or amortized).

For a batch of particles ``i`` with images ``Y_i`` (centred half transforms
``X_i``), latents ``z_i`` (sampled from the encoder's ``N(mu, exp(logvar))``
for a VAE), the model transforms are
``M_i = apply_shift_and_ctf(volume.slices(R_i, z_i))`` and the loss is

    mean_i [ sum_k w(k) |M_i(k) - X_i(k)|^2 / s^2 ] / K  +  beta mean_i KL_i / K

over the ``K`` coefficients with ``|k| < 0.5`` (``w`` an optional per-shell
weight, 1 by default: white noise). This is the Gaussian negative
log-likelihood with noise variance ``s^2 / 2`` (``s^2`` the data's mean power
per coefficient) per coefficient, scaled by ``1 / K`` as in cryoDRGN (where
the data term is a per-pixel mean and the KL term is divided by the pixels).
Recipes with ``loss = 'frc'`` (``e2gmm``) replace the data term by E2GMM's
``1 - mean FRC`` over shells up to ``frc_max_resolution_angstrom``
(:func:`cryoviz.volumes.frc.frc_loss`).

Every epoch writes an atomic checkpoint (model, optimizer, RNG states of
torch, numpy, python, the data order and the latent noise) and a line of
``log.jsonl``; ``resume=True`` continues from the last checkpoint and ends with
the same weights as an unbroken run (on CPU: the computation is the same
sequence of deterministic kernels). The run folder's files are written by
:mod:`cryoviz.train.run_files` and, after the last epoch, :mod:`cryoviz.train.final_outputs`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoviz.ctf import compute_ctf_2d
from cryoviz.errors import InputError, TrainingDiverged
from cryoviz.fourier import centered_rfft2, frequency_grid_2d, real_dtype_of, shell_index_2d
from cryoviz.imaging import apply_shift_and_ctf
from cryoviz.io.mrc import atomic_output
from cryoviz.io.particles import ImageSource, ParticleSet
from cryoviz.train.amortized_poses import band_limit, build_pose_encoder, hypothesis_errors
from cryoviz.train.data import ParticleBatches, to_device
from cryoviz.train.distributed import (
    all_sum,
    barrier,
    dist_info,
    local_batches,
    make_grad_scaler,
    wrap_model,
)
from cryoviz.train.encoder_input import run_encoder_input
from cryoviz.train.final_outputs import encode_all, write_final
from cryoviz.train.models import as_tensor, build_models, initialise_models
from cryoviz.train.pixel_sampling import draw_probabilities, particle_scales
from cryoviz.train.recipes import Recipe
from cryoviz.train.run_files import (
    check_resume_settings,
    latest_checkpoint,
    rng_state,
    set_rng_state,
    truncate_log,
    write_toml,
    write_z_pkl,
)
from cryoviz.volumes.frc import frc_loss

__all__ = ["TrainProgress", "iter_train", "train", "build_models", "write_toml",
           "latest_checkpoint", "write_z_pkl", "encode_all"]


@dataclass(frozen=True)
class TrainProgress:
    """State after one epoch of :func:`iter_train`.

    Attributes
    ----------
    epoch, epochs
        1-based epoch just finished and the total.
    step
        Optimizer steps so far.
    loss
        Mean loss per batch over the epoch (data + KL term).
    kl
        Mean KL divergence per particle (0 without a VAE).
    seconds
        Wall time of the epoch.
    checkpoint
        The checkpoint written.
    output_dir
        The run folder.
    done
        True on the last epoch, after the final outputs are written.
    """

    epoch: int
    epochs: int
    step: int
    loss: float
    kl: float
    seconds: float
    checkpoint: Path
    output_dir: Path
    done: bool = False


def _check_particles(particles: ParticleSet, recipe: Recipe) -> None:
    if recipe.poses == "given" and particles.rotations is None:
        raise InputError(particles.source_path, "poses",
                         "rotations for every particle (training needs known poses)", "none")
    if len(particles) == 0:
        raise InputError(particles.source_path, "particles", "at least one particle", 0)


# -- the loop -----------------------------------------------------------------------------
def iter_train(
    particles: ParticleSet,
    recipe: Recipe,
    output_dir: str | Path,
    *,
    resume: bool = False,
    device: str | torch.device = "cpu",
    shell_weights: torch.Tensor | None = None,
) -> Iterator[TrainProgress]:
    """Train ``recipe`` on ``particles`` (known poses), yielding after every epoch.

    Parameters
    ----------
    particles
        Particle set with rotations (shifts and CTF are used when present).
    recipe
        The method (:func:`cryoviz.train.recipes.get_recipe`).
    output_dir
        Run folder: ``config.toml``, ``checkpoints/epoch_NNNN.pt``, ``log.jsonl``;
        at the end ``latents.npz`` and ``z.pkl`` (latent recipes; ``3dflex`` also
        ``volumes/canonical.mrc``) or
        ``volumes/map.mrc`` (homogeneous recipes).
    resume
        Continue from the last checkpoint in ``output_dir`` (a fresh start when
        there is none).
    device
        Torch device.
    shell_weights
        Optional ``(d // 2 + 1,)`` per-shell weights of the squared residuals
        (e.g. inverse noise power per shell); default white (all 1).

    Yields
    ------
    TrainProgress

    Raises
    ------
    TrainingDiverged
        When an epoch's mean loss is NaN or infinite: its checkpoint is not
        written, so the folder keeps the last good epoch.

    Notes
    -----
    The global torch, numpy and python RNGs are seeded with ``recipe.seed`` at
    the start (and restored from the checkpoint on resume); the data order and
    the latent noise use their own generators.

    Under an initialised ``torch.distributed`` group (``torchrun``) every rank
    trains its slice of each global batch through DDP and rank 0 alone writes
    files; ``recipe.precision`` runs the networks under autocast (see
    :mod:`cryoviz.train.distributed`).
    """
    recipe.validate()
    _check_particles(particles, recipe)
    out = Path(output_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    info = dist_info()  # ranks of a torchrun / DDP run (rank 0 alone writes files)
    source = ImageSource(particles)
    batches = ParticleBatches(source, recipe.batch_size, chunk_size=recipe.chunk_size,
                              window_chunks=recipe.window_chunks, seed=recipe.seed,
                              box_size=recipe.box)
    box, apix, n = batches.box_size, batches.pixel_size_angstrom, len(particles)
    if recipe.counts_gaussians and recipe.gaussians is None:
        # the box-scaled default, written to config.toml: the run keeps its count
        # whatever later versions make the default
        recipe = dataclasses.replace(recipe, gaussians=recipe.gaussian_count(box))
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed % (2**32))  # noqa: NPY002 - seed the global state too
    random.seed(recipe.seed)
    noise_gen = torch.Generator(device=device).manual_seed(recipe.seed + 1)
    volume, encoder = build_models(recipe, box, apix, n)
    pose_encoder = build_pose_encoder(recipe, box, apix, encoder)  # None: poses given
    joint = pose_encoder is not None and pose_encoder is encoder  # one CNN for poses and z
    volume.to(device)
    for net in (encoder, pose_encoder):
        if net is not None:
            net.to(device)
    # params: what the pose-only warm-up holds still; pose_params: what it trains
    params = list(volume.parameters()) + (
        [] if encoder is None or joint else list(encoder.parameters()))
    pose_params = [] if pose_encoder is None else list(pose_encoder.parameters())
    optimizer = torch.optim.Adam(params + pose_params, lr=recipe.lr,
                                 weight_decay=recipe.weight_decay)
    scaler = make_grad_scaler(recipe.precision, device)  # enabled for fp16 only

    shells = shell_index_2d(box, rfft=True, device=device)
    ky, kx = frequency_grid_2d(box, rfft=True, device=device)
    radius = (ky**2 + kx**2).sqrt()
    inside = radius < 0.5
    weight_2d = inside.to(torch.float32)
    if shell_weights is not None:
        sw = torch.as_tensor(shell_weights, dtype=torch.float32, device=device)
        weight_2d = weight_2d * sw[shells.clamp(max=sw.numel() - 1)]
    n_coeff = float(inside.sum())
    # beta * KL per pixel of the full D x D transform inside Nyquist, as cryoDRGN divides
    # it by its circular mask's pixel count: the same beta weighs the same against the
    # per-pixel squared error (the half plane's n_coeff made it about twice as heavy)
    fy, fx = frequency_grid_2d(box, rfft=False)
    kl_pixels = float(((fy**2 + fx**2).sqrt() < 0.5).sum())
    frc_max_shell = (box // 2 if recipe.frc_max_resolution_angstrom is None else
                     max(1, min(box // 2, int(box * apix / recipe.frc_max_resolution_angstrom))))

    start_epoch, step = 0, 0
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        check_resume_settings(out, dataclasses.asdict(recipe))
        state = torch.load(ckpt, map_location=device, weights_only=True)
        volume.load_state_dict(state["volume"])
        if encoder is not None:
            encoder.load_state_dict(state["encoder"])
        if pose_encoder is not None and not joint:
            pose_encoder.load_state_dict(state["pose_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], batches, noise_gen)
        start_epoch, step = int(state["epoch"]), int(state["step"])
        data_scale = float(state["data_scale"])
        if info.is_main:
            truncate_log(out / "log.jsonl", start_epoch)
    else:
        data_scale = initialise_models(volume, encoder, recipe, particles, batches,
                                       inside.cpu(), device, pose_encoder)
        if info.is_main:
            (out / "log.jsonl").unlink(missing_ok=True)
            for old in (out / "checkpoints").glob("epoch_*.pt"):
                old.unlink()
    if info.is_main:
        write_toml(out / "config.toml", {
            "recipe": dataclasses.asdict(recipe),
            "data": {"n_particles": n, "box_size": box, "pixel_size_angstrom": apix,
                     "data_box_size": particles.box_size,
                     "data_pixel_size_angstrom": particles.pixel_size_angstrom,
                     "source": None if particles.source_path is None else
                     str(particles.source_path)},
            "run": {"device": str(device), "data_scale": data_scale,
                    "world_size": info.world_size},
        })

    given = pose_encoder is None  # else the particles' own poses are not used
    rotations = as_tensor(particles.rotations, device) if given else None
    shifts = as_tensor(particles.shifts_angstrom, device) if given else None
    ctf = None if particles.ctf is None else particles.ctf.to(device)
    # each particle's scale of its coefficients' probabilities: fixed by its CTF
    pixel_scales = (particle_scales(recipe.pixel_fraction, inside, ctf, box, apix, device)
                    if recipe.pixel_fraction < 1 and ctf is not None else None)
    # the networks as the loop calls them: autocast for bf16 / fp16, DDP across ranks
    encode = (None if encoder is None or joint else
              wrap_model(encoder, "forward", recipe.precision, device, info))
    encoder_view = run_encoder_input(recipe, encoder, apix, shifts, ctf, volume, rotations)
    slice_volume = wrap_model(volume, "slices", recipe.precision, device, info)
    encode_poses = None if given else wrap_model(
        pose_encoder, "joint" if joint else "hypotheses", recipe.precision, device, info)

    for epoch in range(start_epoch + 1, recipe.epochs + 1):
        t0 = time.perf_counter()
        volume.train()
        for net in (encoder, pose_encoder):
            if net is not None:
                net.train()
        warm_up = not given and epoch <= recipe.pose_only_epochs  # pose encoder alone
        n_batches, n_seen = 0, 0
        # the epoch's sums of the loss and the KL, kept on the device and read once at
        # its end (reading them every step would make the host wait for the device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        kl_sum = torch.zeros((), dtype=torch.float64, device=device)
        for part, index, images in local_batches(batches, info):  # this rank's slice
            sel = to_device(index, device)
            images = to_device(images, device)
            target = centered_rfft2(images)
            # the batch's CTFs, evaluated once for the encoder's input and the loss
            ctf_values = None if ctf is None else compute_ctf_2d(
                ctf.subset(sel), box, apix, rfft=True, dtype=real_dtype_of(target.dtype),
                device=device)
            z, kl = None, torch.zeros((), device=device)
            if joint:  # poses and latent from one pass of the CNN
                *poses, mu, logvar = encode_poses(images)
            elif not given:
                poses = encode_poses(images)
            if warm_up and encoder is not None:  # the volume at z = 0
                z = torch.zeros((len(index), recipe.latent_dim), device=device)
                if joint:  # the latent head takes part (DDP) with zero gradients
                    kl = 0.0 * (mu.sum() + logvar.sum())
            elif encoder is not None:
                if not joint:
                    mu, logvar = encode(encoder_view(images, sel, target, ctf_values), sel)
                if logvar is not None:
                    eps = part.rows(torch.randn((part.total, mu.shape[1]), generator=noise_gen,
                                                 device=device))
                    z = mu + torch.exp(0.5 * logvar) * eps
                    kl = -0.5 * (1.0 + logvar - mu**2 - logvar.exp()).sum(dim=-1).mean()
                elif encoder.noise_std > 0:
                    eps = part.rows(torch.randn((part.total, mu.shape[1]), generator=noise_gen,
                                                 device=device))
                    z = mu + encoder.noise_std * eps
                else:
                    z = mu
            if not given:  # the best of the encoder's hypotheses per image
                band = band_limit(recipe, step, len(batches))
                errors = hypothesis_errors(
                    slice_volume, *poses, z, target,
                    None, weight_2d * (radius < band), box, apix, ctf_values)
                data_term = errors.min(dim=1).values.mean() / (data_scale**2 * n_coeff)
            elif recipe.loss == "frc":
                model = apply_shift_and_ctf(slice_volume(rotations[sel], z, box, apix), apix,
                                            None if shifts is None else shifts[sel],
                                            ctf_values=ctf_values)
                data_term = frc_loss(model, target, frc_max_shell)
            elif recipe.pixel_fraction < 1:  # the coefficients of this step, drawn per image
                keys = part.rows(torch.rand((part.total, *weight_2d.shape), generator=noise_gen,
                                            device=device))
                prob = draw_probabilities(recipe.pixel_fraction, inside, ctf_values, len(index),
                                          None if pixel_scales is None else pixel_scales[sel])
                drawn = keys < prob
                model = apply_shift_and_ctf(
                    slice_volume(rotations[sel], z, box, apix, drawn), apix,
                    None if shifts is None else shifts[sel], ctf_values=ctf_values)
                # each drawn term divided by its probability: an unbiased estimate
                residual = ((model - target).abs() ** 2 * weight_2d * drawn  # prob 0: never drawn
                            / prob.clamp(min=torch.finfo(prob.dtype).tiny)).sum(dim=(-2, -1))
                data_term = residual.mean() / (data_scale**2 * n_coeff)
            else:
                model = apply_shift_and_ctf(slice_volume(rotations[sel], z, box, apix), apix,
                                            None if shifts is None else shifts[sel],
                                            ctf_values=ctf_values)
                residual = ((model - target).abs() ** 2 * weight_2d).sum(dim=(-2, -1))
                data_term = residual.mean() / (data_scale**2 * n_coeff)
            beta = recipe.kl_weight_at(step, len(batches))
            loss = data_term + beta * kl / kl_pixels
            # the model's own regularisers (3dflex smoothness / rigidity, cryofold bonds)
            loss = loss + volume.regularization_loss(z)
            optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over ranks: weight n_rank * W / B gives the global mean
            scaler.scale(loss * part.gradient_weight).backward()
            if warm_up:  # Adam skips parameters without gradients
                for param in params:
                    param.grad = None
            scaler.step(optimizer)
            scaler.update()
            step += 1
            n_batches += 1
            n_seen += part.counted
            if part.counted:  # a stand-in slice adds nothing, even a NaN
                loss_sum += loss.detach().to(torch.float64) * part.share
                kl_sum += kl.detach().to(torch.float64) * part.share * part.total
        total_loss, total_kl = float(loss_sum), float(kl_sum)
        seconds = time.perf_counter() - t0
        total_loss, total_kl, n_seen = all_sum(total_loss, total_kl, n_seen, info=info)
        ckpt_path = out / "checkpoints" / f"epoch_{epoch:04d}.pt"
        state = {
            "epoch": epoch, "step": step, "data_scale": data_scale,
            "volume": volume.state_dict(),
            "encoder": {} if encoder is None else encoder.state_dict(),
            "pose_encoder": {} if pose_encoder is None or joint else pose_encoder.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(batches, noise_gen),
        }
        mean_loss = total_loss / max(n_batches, 1)
        mean_kl = total_kl / max(n_seen, 1)
        if not math.isfinite(mean_loss):  # every rank has the same sum: all stop here
            raise TrainingDiverged(out, epoch, mean_loss)
        done = epoch == recipe.epochs
        if info.is_main:
            with atomic_output(ckpt_path) as tmp:
                torch.save(state, tmp)
            with open(out / "log.jsonl", "a") as fh:
                fh.write(json.dumps({"epoch": epoch, "step": step, "loss": mean_loss,
                                     "kl": mean_kl, "kl_weight": beta,
                                     "seconds": seconds}) + "\n")
            if done:
                write_final(out, volume, encoder, batches, particles, apix, device,
                             pose_encoder, weight_2d, encoder_view)
        barrier(info)  # the checkpoint (and final outputs) exist on every rank's return
        yield TrainProgress(epoch=epoch, epochs=recipe.epochs, step=step, loss=mean_loss,
                            kl=mean_kl, seconds=seconds, checkpoint=ckpt_path,
                            output_dir=out, done=done)
    if start_epoch >= recipe.epochs and ckpt is not None:
        # resumed a finished run: make sure the final outputs exist
        if info.is_main:
            write_final(out, volume, encoder, batches, particles, apix, device,
                         pose_encoder, weight_2d, encoder_view)
        barrier(info)
    source.close()


def train(particles: ParticleSet, recipe: Recipe, output_dir: str | Path,
          **kwargs) -> TrainProgress:
    """Run :func:`iter_train` to the end; return the last progress."""
    progress = None
    for progress in iter_train(particles, recipe, output_dir, **kwargs):  # noqa: B007
        pass
    return progress
