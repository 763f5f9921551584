"""One file per distillation method; importing this package registers them all."""

from kdlens.distill.methods import attention  # noqa: F401
from kdlens.distill.methods import factor_transfer  # noqa: F401
from kdlens.distill.methods import feature_mse  # noqa: F401
from kdlens.distill.methods import ie_kd  # noqa: F401
from kdlens.distill.methods import kd  # noqa: F401
from kdlens.distill.methods import overhaul  # noqa: F401
from kdlens.distill.methods import iep  # noqa: F401
from kdlens.distill.methods import fitnet  # noqa: F401
from kdlens.distill.methods import rkd  # noqa: F401
from kdlens.distill.methods import sp  # noqa: F401
from kdlens.distill.methods import cc  # noqa: F401
from kdlens.distill.methods import vid  # noqa: F401
from kdlens.distill.methods import pkt  # noqa: F401
from kdlens.distill.methods import nst  # noqa: F401
from kdlens.distill.methods import ab  # noqa: F401
from kdlens.distill.methods import fsp  # noqa: F401
from kdlens.distill.methods import crd  # noqa: F401
from kdlens.distill.methods import tf_kd  # noqa: F401
from kdlens.distill.methods import dkd  # noqa: F401
from kdlens.distill.methods import mhgd  # noqa: F401
