"""Adversarial SVD (Ludvigsen & Grasmair): fast semi-supervised two-source separation.

Clean cutouts ``U`` of one source and mixtures ``V`` (clean source + an unseen one) give
two linear bases in seconds (docs/method.md section 8):

* the clean basis ``W0``: top eigenvectors of ``C_U - tau C_V`` (:mod:`.eigen`);
* the unseen basis ``W1``: fitted on the mixtures with ``W0`` fixed (:mod:`.unseen`);

and a new mixture is separated by least squares on both bases, through its observation
operator when there is one, then split Wiener-style (:mod:`.separate`). ``tau="auto"``
chooses the adversarial weight on held-out data (:mod:`.tau`). The fitted
:class:`ASVDModel` lives in a prior folder (:mod:`.model`).

Typical use::

    model = fit_asvd(clean, mixed, rank_clean=16, rank_unseen=8, tau="auto")
    sources = model.separate(new_mixtures)          # (B, 2, C, H, W)
    model.save("priors/grass-asvd")
    model = load_asvd("priors/grass-asvd")
"""

from .eigen import SecondMoment, adversarial_basis, adversarial_objective, top_eigenvectors
from .model import ASVDModel, fit_asvd, load_asvd
from .priorset import ASVDPriorSet, load_asvd_priorset
from .separate import project, separate_with_bases, wiener_split
from .tau import moment_mismatch, select_tau
from .unseen import UnseenFit, deflated_basis, fit_unseen_basis, unseen_objective

__all__ = [
    "ASVDModel",
    "ASVDPriorSet",
    "load_asvd_priorset",
    "fit_asvd",
    "load_asvd",
    "SecondMoment",
    "adversarial_basis",
    "adversarial_objective",
    "top_eigenvectors",
    "UnseenFit",
    "fit_unseen_basis",
    "deflated_basis",
    "unseen_objective",
    "separate_with_bases",
    "wiener_split",
    "project",
    "select_tau",
    "moment_mismatch",
]
