"""implicitgrad: hypergradients for bilevel optimization in PyTorch.

The whole public API is listed here; everything else is private.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from . import plugins as plugins
from . import testing as testing
from ._adjoint import AbstractAdjoint as AbstractAdjoint
from ._adjoint import ImplicitAdjoint as ImplicitAdjoint
from ._adjoint import UnrollAdjoint as UnrollAdjoint
from ._distributed import DataParallel as DataParallel
from ._errors import ConvergenceWarning as ConvergenceWarning
from ._errors import DivergenceError as DivergenceError
from ._errors import ImplicitGradError as ImplicitGradError
from ._errors import InputError as InputError
from ._errors import SolverError as SolverError
from ._errors import StationarityWarning as StationarityWarning
from ._hypergrad import HypergradInfo as HypergradInfo
from ._hypergrad import fixed_point_hypergrad as fixed_point_hypergrad
from ._hypergrad import hypergrad as hypergrad
from ._implicit import implicit as implicit
from ._minimize import FixedPointInfo as FixedPointInfo
from ._minimize import fixed_point as fixed_point
from ._minimize import minimize as minimize
from ._module import make_functional as make_functional
from ._optim import SGD as SGD
from ._optim import AbstractOptimizer as AbstractOptimizer
from ._optim import Adam as Adam
from ._optim import AdamState as AdamState
from ._optim import AdamW as AdamW
from ._optim import SGDState as SGDState
from ._preconditioners import AbstractPreconditioner as AbstractPreconditioner
from ._preconditioners import BuiltPreconditioner as BuiltPreconditioner
from ._preconditioners import DiagonalPreconditioner as DiagonalPreconditioner
from ._preconditioners import NystromPreconditioner as NystromPreconditioner
from ._preconditioners import RecycledPreconditioner as RecycledPreconditioner
from ._solvers import CG as CG
from ._solvers import GMRES as GMRES
from ._solvers import AbstractSolver as AbstractSolver
from ._solvers import BiCGStab as BiCGStab
from ._solvers import Exact as Exact
from ._solvers import Identity as Identity
from ._solvers import LinearOperator as LinearOperator
from ._solvers import Neumann as Neumann
from ._solvers import Nystrom as Nystrom
from ._solvers import Solution as Solution
from ._unroll import UnrollInfo as UnrollInfo
from ._unroll import unroll as unroll

try:
    __version__ = _version("implicitgrad")
except _PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "testing",
    "plugins",
    # hypergradients
    "hypergrad",
    "fixed_point_hypergrad",
    "implicit",
    "HypergradInfo",
    # how to differentiate an inner solution
    "minimize",
    "fixed_point",
    "FixedPointInfo",
    "AbstractAdjoint",
    "ImplicitAdjoint",
    "UnrollAdjoint",
    # solvers
    "AbstractSolver",
    "LinearOperator",
    "Solution",
    "CG",
    "GMRES",
    "BiCGStab",
    "Neumann",
    "Nystrom",
    "Identity",
    "Exact",
    # preconditioners (of CG)
    "AbstractPreconditioner",
    "BuiltPreconditioner",
    "NystromPreconditioner",
    "DiagonalPreconditioner",
    "RecycledPreconditioner",
    # unrolled differentiation
    "unroll",
    "UnrollInfo",
    "AbstractOptimizer",
    "SGD",
    "SGDState",
    "Adam",
    "AdamW",
    "AdamState",
    # data-parallel
    "DataParallel",
    # modules
    "make_functional",
    # errors
    "ImplicitGradError",
    "InputError",
    "SolverError",
    "DivergenceError",
    "ConvergenceWarning",
    "StationarityWarning",
]
