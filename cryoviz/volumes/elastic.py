"""Bond-length and elastic-network restraints on moving Gaussian centres (CryoFold-style).

An atomic or residue-level Gaussian mixture built from a base structure
(:func:`cryoviz.volumes.gmm_init.mixture_from_structure`) keeps the base's
distances as its reference geometry:

* **bonds**: consecutive components ``(i, i + 1)`` whose base distance is below
  ``max_bond_angstrom``. At the residue level the components sit on the CA atoms,
  so these are the CA-CA virtual bonds (3.8 Å for a trans peptide, about 2.9 Å
  for a cis one); a chain break or a gap in the model gives a longer distance
  and no bond.
* **elastic network**: every pair closer than ``cutoff_angstrom`` in the base
  (an anisotropic network model's contact list). Keeping these distances keeps
  each neighbourhood locally rigid while domains may still move as wholes
  (only the few contacts across a hinge are strained).

The penalty of a set of pairs is the mean over pairs of ``(|x_i - x_j| - d0)^2``
in Å^2, where ``d0`` is the base distance. Both terms are zero for the base
structure and for any rigid motion of it.
"""

from __future__ import annotations

import torch

__all__ = ["bonded_pairs", "contact_pairs", "distance_penalty", "ElasticRestraints"]


def bonded_pairs(centres_angstrom: torch.Tensor, max_bond_angstrom: float = 4.3
                 ) -> torch.Tensor:
    """Consecutive pairs ``(P, 2)`` (int64) closer than ``max_bond_angstrom``.

    Parameters
    ----------
    centres_angstrom
        ``(M, 3)`` base centres in chain order.
    max_bond_angstrom
        Longest distance that counts as a bond, Å.
    """
    m = centres_angstrom.shape[0]
    if m < 2:
        return torch.zeros((0, 2), dtype=torch.int64)
    d = torch.linalg.vector_norm(centres_angstrom[1:] - centres_angstrom[:-1], dim=-1)
    first = torch.nonzero(d < max_bond_angstrom).squeeze(1).cpu()
    return torch.stack([first, first + 1], dim=1)


def contact_pairs(centres_angstrom: torch.Tensor, cutoff_angstrom: float) -> torch.Tensor:
    """All pairs ``(P, 2)`` (int64, ``i < j``) closer than ``cutoff_angstrom`` in the base."""
    d = torch.cdist(centres_angstrom[None].double(), centres_angstrom[None].double())[0]
    i, j = torch.nonzero(torch.triu(d < cutoff_angstrom, diagonal=1), as_tuple=True)
    return torch.stack([i, j], dim=1).cpu()


def distance_penalty(centres_angstrom: torch.Tensor, pairs: torch.Tensor,
                     lengths_angstrom: torch.Tensor) -> torch.Tensor:
    """Mean squared change of pair distances, Å^2, per structure.

    Parameters
    ----------
    centres_angstrom
        ``(B, M, 3)`` centres.
    pairs
        ``(P, 2)`` component indices.
    lengths_angstrom
        ``(P,)`` reference distances.

    Returns
    -------
    torch.Tensor
        ``(B,)`` (zeros when there are no pairs).
    """
    if pairs.shape[0] == 0:
        return centres_angstrom.new_zeros(centres_angstrom.shape[0])
    diff = centres_angstrom[:, pairs[:, 0]] - centres_angstrom[:, pairs[:, 1]]
    dist = torch.sqrt((diff**2).sum(-1) + 1e-12)
    return ((dist - lengths_angstrom.to(dist.dtype)) ** 2).mean(dim=-1)


class ElasticRestraints(torch.nn.Module):
    """The bonds and contacts of a base structure, with their weights.

    Parameters
    ----------
    base_centres_angstrom
        ``(M, 3)`` centres of the base structure, in chain order.
    bond_weight, contact_weight
        Weights of the bond and elastic-network penalties (Å^-2).
    max_bond_angstrom
        See :func:`bonded_pairs`.
    cutoff_angstrom
        See :func:`contact_pairs`.

    Notes
    -----
    The pairs and distances are non-persistent buffers: they are rebuilt from
    the base structure (which a run's recipe names) and are not written to
    checkpoints.
    """

    def __init__(self, base_centres_angstrom: torch.Tensor, bond_weight: float,
                 contact_weight: float, max_bond_angstrom: float = 4.3,
                 cutoff_angstrom: float = 10.0) -> None:
        super().__init__()
        self.bond_weight = float(bond_weight)
        self.contact_weight = float(contact_weight)
        base = base_centres_angstrom.detach().double()
        bonds = bonded_pairs(base, max_bond_angstrom)
        contacts = contact_pairs(base, cutoff_angstrom)
        self.register_buffer("bonds", bonds, persistent=False)
        self.register_buffer("bond_lengths", _lengths(base, bonds).float(), persistent=False)
        self.register_buffer("contacts", contacts, persistent=False)
        self.register_buffer("contact_lengths", _lengths(base, contacts).float(),
                             persistent=False)

    def terms(self, centres_angstrom: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted ``bond`` and ``contact`` penalties ``(B,)`` of centres ``(B, M, 3)``."""
        return {"bond": distance_penalty(centres_angstrom, self.bonds, self.bond_lengths),
                "contact": distance_penalty(centres_angstrom, self.contacts,
                                            self.contact_lengths)}

    def forward(self, centres_angstrom: torch.Tensor) -> torch.Tensor:
        """Weighted penalty, a scalar: the batch mean of ``w_b bond + w_c contact``."""
        t = self.terms(centres_angstrom)
        return (self.bond_weight * t["bond"] + self.contact_weight * t["contact"]).mean()


def _lengths(centres: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    if pairs.shape[0] == 0:
        return centres.new_zeros(0)
    return torch.linalg.vector_norm(centres[pairs[:, 0]] - centres[pairs[:, 1]], dim=-1)
