"""One file per distillation method; importing this package registers them all."""

from kdlens.distill.methods import attention  # noqa: F401
from kdlens.distill.methods import factor_transfer  # noqa: F401
from kdlens.distill.methods import feature_mse  # noqa: F401
from kdlens.distill.methods import ie_kd  # noqa: F401
from kdlens.distill.methods import kd  # noqa: F401
from kdlens.distill.methods import overhaul  # noqa: F401
from kdlens.distill.methods import iep  # noqa: F401
