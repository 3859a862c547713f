"""Tools to check hypergradients: finite differences and problems with known answers.

Public and documented so that users can verify their own bilevel setups the way the
library's test suite verifies itself.
"""

from ._finite_difference import finite_difference_hypergrad as finite_difference_hypergrad
from ._quadratic import QuadraticProblem as QuadraticProblem
from ._quadratic import random_quadratic as random_quadratic
from ._ridge import RidgeProblem as RidgeProblem
from ._ridge import ridge_problem as ridge_problem
from ._solve_inner import solve_inner as solve_inner

__all__ = [
    "finite_difference_hypergrad",
    "QuadraticProblem",
    "random_quadratic",
    "RidgeProblem",
    "ridge_problem",
    "solve_inner",
]
