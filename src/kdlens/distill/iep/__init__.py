"""Building blocks of interpretable embedding procedure (IEP) knowledge
transfer (Lee, Song, AAAI 2021): stacked PCA (``spca``), the distilling MPNN
(``mpnn``) and the gradient control (``gradients``). Not a registered method
yet; the training integration assembles these."""

from kdlens.distill.iep.gradients import combine_gradients, loss_gradients, rescale_factor
from kdlens.distill.iep.mpnn import (
    EmbeddingProcedureMPNN,
    MPNNOutput,
    affinity_kl,
    alteration_loss,
    interim_loss,
    mpnn_loss,
)
from kdlens.distill.iep.spca import (
    FirstPC,
    IncrementalPCA,
    PCAStats,
    affinity,
    batch_pca,
    feature_matrix,
    first_principal_components,
    inverse_stereographic,
    principal_sign,
    project,
    sphere_center,
    stereographic,
    student_principal_vectors,
    top_eigenpair,
)

__all__ = [
    "EmbeddingProcedureMPNN",
    "FirstPC",
    "IncrementalPCA",
    "MPNNOutput",
    "PCAStats",
    "affinity",
    "affinity_kl",
    "alteration_loss",
    "batch_pca",
    "combine_gradients",
    "loss_gradients",
    "feature_matrix",
    "first_principal_components",
    "interim_loss",
    "inverse_stereographic",
    "mpnn_loss",
    "principal_sign",
    "project",
    "rescale_factor",
    "sphere_center",
    "stereographic",
    "student_principal_vectors",
    "top_eigenpair",
]
