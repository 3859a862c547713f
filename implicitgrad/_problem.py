"""The optimality condition of the inner problem, written once for both forms.

Every implicit entry point (`hypergrad`, `fixed_point_hypergrad`, `implicit`, and the
implicit adjoint) reduces to the same steps: evaluate the condition once with its graph kept
(the gradient $F = \\nabla_\\theta f$ of the root form, or the update $T$ of the fixed-point
form), hand the solver a matrix-free operator that reuses that graph and says what it is
(symmetric or not), and finish with one mixed vector-Jacobian product. The fixed-point form
is the root problem $\\theta - T(\\theta, \\phi) = 0$, so only the operator and the sign of
the mixed product differ:

- root form: $A = \\partial F/\\partial\\theta = H$, implicit part
  $-(\\partial F/\\partial\\phi)^\\top A^{-1}v$;
- fixed-point form: $A = I - (\\partial T/\\partial\\theta)^\\top$, implicit part
  $+(\\partial T/\\partial\\phi)^\\top A^{-1}v$.

With `batch_size` the leaves carry a leading dimension of independent problems; the losses
are written for one problem and evaluated with `torch.func.vmap`, and because the problems
are independent the summed condition's products are block diagonal: one graph serves all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from ._errors import ImplicitGradError, InputError
from ._solvers.base import LinearOperator
from ._tree import TreeDef, describe, leaf_path, unflatten

__all__ = [
    "Form",
    "Condition",
    "FuncCondition",
    "NoDoubleBackward",
    "build_condition",
    "call_scalar",
    "grad_or_zeros",
    "check_finite_leaves",
]


class NoDoubleBackward(Exception):
    """The condition's graph cannot be differentiated again (a `torch.compile`d loss):
    the entry points then form the products with torch.func instead."""


@dataclass(frozen=True)
class Form:
    """Which optimality condition: `fn` is `inner_loss(θ, φ)` (root form) or
    `update(θ, φ)` (fixed-point form); `symmetric` tags the operator."""

    fn: Callable[..., Any]
    fixed_point: bool
    symmetric: bool

    @property
    def name(self) -> str:
        return "update" if self.fixed_point else "inner_loss"

    def what(self) -> str:
        return "|T(θ, φ) - θ|" if self.fixed_point else "|∇θ inner_loss|"


def _wrap_user_error(call: str, fn_name: str, err: Exception, theta: Any, phi: Any) -> InputError:
    if "wrapper == nullptr" in str(err) or "inside of a function being transformed" in str(err):
        # The Functions that run the solves see plain tensors; a tensor captured from an
        # enclosing torch.func transform (per-problem data in a closure) is not one.
        return InputError(
            f"`{call}`: {fn_name} uses a tensor that an enclosing torch.func transform maps "
            "over (per-problem data captured in a closure, under vmap). The solve runs below "
            "the transform and cannot see it. Pass such data through outer_params (for "
            "example as a dict entry) or inner_params instead of capturing it."
        )
    return InputError(
        f"`{call}`: calling {fn_name}(inner_params, outer_params) raised "
        f"{type(err).__name__}: {err}. Check that inner_params and outer_params have the "
        f"structure {fn_name} expects; it received inner_params={describe(theta)} and "
        f"outer_params={describe(phi)}."
    )


def uncompiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The Python function behind a `torch.compile` wrapper (`fn` itself otherwise).

    The condition is differentiated twice, which AOTAutograd's compiled backward does not
    allow; the original function computes the same values and takes the graph-reusing path.
    A compiled function hidden inside the user's own callable is still handled, by the
    torch.func fallback of `FuncCondition`.
    """
    return getattr(fn, "_torchdynamo_orig_callable", fn)


def _invoke(
    fn: Callable[..., Any], theta: Any, phi: Any, *, call: str, fn_name: str, batched: bool
) -> Any:
    fn = uncompiled(fn)
    try:
        return torch.func.vmap(fn)(theta, phi) if batched else fn(theta, phi)
    except ImplicitGradError:
        raise
    except Exception as err:
        raise _wrap_user_error(call, fn_name, err, theta, phi) from err


def call_scalar(
    fn: Callable[..., Any],
    theta: Any,
    phi: Any,
    *,
    call: str,
    fn_name: str,
    batched: bool = False,
) -> torch.Tensor:
    """Call a user loss and check that it returns a real scalar tensor (summed over a batch)."""
    out = _invoke(fn, theta, phi, call=call, fn_name=fn_name, batched=batched)
    if not isinstance(out, torch.Tensor):
        raise InputError(
            f"`{call}`: {fn_name} must return a scalar torch.Tensor, got {type(out).__name__}."
        )
    if out.numel() != (out.shape[0] if batched and out.dim() else 1) or out.dim() > int(batched):
        raise InputError(
            f"`{call}`: {fn_name} must return a scalar, got a tensor of shape "
            f"{tuple(out.shape[int(batched) :])}. Reduce it, e.g. with .mean() or .sum()."
        )
    if not out.is_floating_point():
        raise InputError(f"`{call}`: {fn_name} returned dtype {out.dtype}; it must be floating.")
    return out.sum() if batched else out.reshape(())


def grad_or_zeros(
    outputs: torch.Tensor | Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    grad_outputs: Any = None,
    *,
    retain_graph: bool = True,
    create_graph: bool = False,
) -> tuple[list[torch.Tensor], list[bool]]:
    """`torch.autograd.grad` returning zeros for unused inputs, plus which inputs were used."""
    grads = torch.autograd.grad(
        outputs,
        list(inputs),
        grad_outputs=grad_outputs,
        retain_graph=retain_graph,
        create_graph=create_graph,
        allow_unused=True,
    )
    used = [g is not None for g in grads]
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)], used


def check_finite_leaves(
    leaves: Sequence[torch.Tensor], spec: TreeDef, *, call: str, what: str, error: type
) -> None:
    """Raise `error` naming the first leaf of `leaves` that holds NaN or Inf (one host sync)."""
    if not leaves:
        return
    if len(leaves) == 1:
        total = float(leaves[0].detach().sum())
    else:
        total = float(torch.stack([leaf.detach().sum() for leaf in leaves]).sum())
    if math.isfinite(total):
        return
    for i, leaf in enumerate(leaves):
        if not bool(torch.isfinite(leaf.detach()).all()):
            kind = "NaN" if bool(torch.isnan(leaf.detach()).any()) else "Inf"
            path = leaf_path(spec, i)
            where = what if path == "<root>" else f"{what}{path}"
            raise error(f"`{call}`: {kind} in {where}. {_FIX[what]}")
    # Only the sum overflowed; every entry is finite.


_FIX = {
    "inner_params": "Check how the inner parameters were computed (a diverged inner solve?).",
    "outer_params": "Check the outer parameters (a diverged outer update?).",
    "the gradient of inner_loss w.r.t. inner_params": (
        "inner_loss is not finite, or not differentiable, at the given parameters."
    ),
    "update(inner_params, outer_params)": "The update map is not finite at the given parameters.",
    "the gradient of outer_loss w.r.t. inner_params": (
        "outer_loss is not finite, or not differentiable, at the given parameters."
    ),
    "the gradient of outer_loss w.r.t. outer_params": (
        "outer_loss is not finite, or not differentiable, at the given parameters."
    ),
    "the hypergradient w.r.t. outer_params": (
        "The mixed second derivative of the inner problem is not finite at the given parameters."
    ),
}


def _flat(tensors: Sequence[torch.Tensor], batch: int | None) -> torch.Tensor:
    if batch is None:
        if len(tensors) == 1:
            return tensors[0].reshape(-1)
        return torch.cat([t.reshape(-1) for t in tensors])
    return torch.cat([t.reshape(batch, -1) for t in tensors], dim=1)


def _split(vector: torch.Tensor, like: Sequence[torch.Tensor], batch: int | None) -> list:
    # On the hot path of every product: one `split` instead of a slice per leaf.
    if len(like) == 1:
        return [vector.view_as(like[0])]
    sizes = [t.numel() // (1 if batch is None else batch) for t in like]
    chunks = vector.split(sizes, dim=-1)
    return [c.reshape(t.shape) for c, t in zip(chunks, like)]


@dataclass
class Condition:
    """The condition $F(\\theta, \\phi)$ (root) or $T(\\theta, \\phi)$ (fixed point), graph kept.

    `stationarity` is $\\lVert F\\rVert$ or $\\lVert T - \\theta\\rVert$ (the largest over a
    batch); `batch_stationarity` the per-problem values for a batch.
    """

    form: Form
    output: list[torch.Tensor]
    theta: list[torch.Tensor]
    phi: list[torch.Tensor]
    stationarity: float
    batch_size: int | None = None
    batch_stationarity: torch.Tensor | None = None

    def ravel(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return _flat(tensors, self.batch_size)

    def unravel(self, vector: torch.Tensor) -> list[torch.Tensor]:
        return _split(vector, self.theta, self.batch_size)

    def operator(self) -> LinearOperator:
        theta, output, batch = self.theta, self.output, self.batch_size
        fixed_point = self.form.fixed_point

        def vjp(v: torch.Tensor) -> torch.Tensor:
            try:
                grads = torch.autograd.grad(
                    output,
                    theta,
                    grad_outputs=_split(v, theta, batch),
                    retain_graph=True,
                    materialize_grads=True,
                )
            except RuntimeError as err:
                if "double backward" in str(err):
                    raise NoDoubleBackward(str(err)) from err
                raise
            return _flat(grads, batch)

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return v - vjp(v) if fixed_point else vjp(v)

        def batched(vs: torch.Tensor) -> torch.Tensor:
            k = vs.shape[0]
            grads = torch.autograd.grad(
                output,
                theta,
                grad_outputs=[g.reshape(k, *t.shape) for g, t in zip(_rows(vs, theta), theta)],
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
            flat = torch.cat(
                [
                    (
                        torch.zeros(k, t.numel(), dtype=vs.dtype, device=vs.device)
                        if g is None
                        else g.reshape(k, -1)
                    )
                    for g, t in zip(grads, theta)
                ],
                dim=1,
            )
            return vs - flat if fixed_point else flat

        first = theta[0]
        per_problem = sum(t.numel() for t in theta) // (1 if batch is None else batch)
        return LinearOperator(
            matvec=matvec,
            size=per_problem,
            dtype=first.dtype,
            device=first.device,
            symmetric=self.form.symmetric,
            batched_matvec=batched if batch is None else None,
            batch_size=batch,
        )

    def implicit_part(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[bool]]:
        """$\\mp(\\partial F/\\partial\\phi)^\\top x$ and which φ leaves it reached."""
        mixed, used = grad_or_zeros(
            self.output, self.phi, grad_outputs=self.unravel(x), retain_graph=False
        )
        if not self.form.fixed_point:
            mixed = [-m for m in mixed]
        return mixed, used


def _rows(vs: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, start = [], 0
    for t in like:
        out.append(vs[:, start : start + t.numel()])
        start += t.numel()
    return out


def build_condition(
    form: Form,
    theta: list[torch.Tensor],
    phi: list[torch.Tensor],
    theta_spec: TreeDef,
    phi_spec: TreeDef,
    *,
    call: str,
    batch_size: int | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Condition:
    """Evaluate the condition once with its graph kept, and check that it is finite.

    `reduce` (data-parallel) turns this process's gap into the global one before its norm."""
    batched = batch_size is not None
    theta_tree, phi_tree = unflatten(theta_spec, theta), unflatten(phi_spec, phi)
    if form.fixed_point:
        out = _invoke(form.fn, theta_tree, phi_tree, call=call, fn_name="update", batched=batched)
        leaves, out_spec = pytree.tree_flatten(out)
        if out_spec != theta_spec or any(
            not isinstance(o, torch.Tensor) or o.shape != t.shape for o, t in zip(leaves, theta)
        ):
            raise InputError(
                f"`{call}`: update(inner_params, outer_params) must return a tree with the "
                f"same structure and shapes as inner_params ({describe(theta_tree)}), got "
                f"{describe(out)}."
            )
        if not any(o.requires_grad for o in leaves):
            raise InputError(
                f"`{call}`: update(inner_params, outer_params) returned tensors with no gradient "
                "path to its inputs. If it computes a gradient internally, use "
                "torch.autograd.grad(..., create_graph=True) or torch.func.grad, and do not "
                "detach or use torch.no_grad() inside it."
            )
        output = list(leaves)
        gap = [(o - t).detach() for o, t in zip(output, theta)]
        what = "update(inner_params, outer_params)"
    else:
        f = call_scalar(
            form.fn, theta_tree, phi_tree, call=call, fn_name="inner_loss", batched=batched
        )
        grads = torch.autograd.grad(f, theta, create_graph=True, allow_unused=True)
        for i, g in enumerate(grads):
            if g is None:
                raise InputError(
                    f"`{call}`: inner_loss does not depend on inner_params leaf "
                    f"{leaf_path(theta_spec, i)}, so its Hessian is singular. Remove that leaf "
                    "from inner_params (pass it through a closure instead), or check the tree "
                    "structure."
                )
        output = list(grads)
        gap = [g.detach() for g in output]
        what = "the gradient of inner_loss w.r.t. inner_params"
    flat_gap = _flat(gap, batch_size)
    if reduce is not None:
        flat_gap = reduce(flat_gap.clone())
    norms = torch.linalg.vector_norm(flat_gap, dim=-1)
    if batched:
        values = norms.tolist()
        stationarity = max(values) if values else 0.0
    else:
        stationarity = float(norms)
    if not math.isfinite(stationarity):
        check_finite_leaves(theta, theta_spec, call=call, what="inner_params", error=InputError)
        check_finite_leaves(phi, phi_spec, call=call, what="outer_params", error=InputError)
        check_finite_leaves(output, theta_spec, call=call, what=what, error=InputError)
        if reduce is not None:
            # Every process saw the same non-finite global value; those whose own terms are
            # finite must stop too, or they would wait for the others in the next collective.
            raise InputError(
                f"`{call}`: {what} is not finite on another process of the data-parallel "
                "group (that process names the leaf)."
            )
    return Condition(form, output, theta, phi, stationarity, batch_size, norms if batched else None)


class FuncCondition(Condition):
    """The condition with its products formed by `torch.func` instead of a reused graph.

    `torch.compile`d functions have a backward that autograd cannot differentiate again
    (AOTAutograd). Under `torch.func` transforms TorchDynamo does not compile, so the loss is
    linearized eagerly, once, with `torch.func.vjp` of its gradient (or of the update map),
    and every product applies that linearization. A function returned by `torch.compile` is
    unwrapped to the original Python function first, so that running it under torch.func
    does not mark its code as uncompilable for the rest of the process. Slower than the
    graph-reusing path, which stays the default.
    """

    def _fn(self, theta_spec: TreeDef, phi_spec: TreeDef):
        form = self.form
        fn = uncompiled(form.fn)

        def condition(theta: list[torch.Tensor], phi: list[torch.Tensor]) -> list[torch.Tensor]:
            if form.fixed_point:
                out = fn(unflatten(theta_spec, theta), unflatten(phi_spec, phi))
                return list(pytree.tree_leaves(out))

            def loss(th: list[torch.Tensor]) -> torch.Tensor:
                return fn(unflatten(theta_spec, th), unflatten(phi_spec, phi))

            return list(torch.func.grad(loss)(theta))

        return condition

    def setup(self, theta_spec: TreeDef, phi_spec: TreeDef) -> None:
        condition = self._fn(theta_spec, phi_spec)
        theta = [t.detach() for t in self.theta]
        phi = [p.detach() for p in self.phi]
        _, self._vjp_theta = torch.func.vjp(lambda th: condition(th, phi), theta)
        _, self._vjp_phi = torch.func.vjp(lambda ph: condition(theta, ph), phi)

    def operator(self) -> LinearOperator:
        theta, fixed_point = self.theta, self.form.fixed_point

        def matvec(v: torch.Tensor) -> torch.Tensor:
            (out,) = self._vjp_theta(_split(v, theta, None))
            jv = _flat(out, None)
            return v - jv if fixed_point else jv

        first = theta[0]
        return LinearOperator(
            matvec=matvec,
            size=sum(t.numel() for t in theta),
            dtype=first.dtype,
            device=first.device,
            symmetric=self.form.symmetric,
        )

    def implicit_part(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[bool]]:
        (mixed,) = self._vjp_phi(self.unravel(x))
        mixed = list(mixed)
        if not self.form.fixed_point:
            mixed = [-m for m in mixed]
        # torch.func reports unused inputs as zeros: every leaf counts as reached.
        return mixed, [True] * len(mixed)


def func_condition(cond: Condition, theta_spec: TreeDef, phi_spec: TreeDef, *, call: str):
    """`cond` with its products formed by torch.func (for losses autograd cannot
    differentiate twice)."""
    if cond.batch_size is not None:
        raise InputError(
            f"`{call}`: {cond.form.name} cannot be differentiated twice by autograd (a "
            "torch.compile'd function?), and the torch.func fallback solves one problem at a "
            "time. Loop over the problems, or pass the uncompiled function."
        )
    out = FuncCondition(cond.form, cond.output, cond.theta, cond.phi, cond.stationarity, None, None)
    out.setup(theta_spec, phi_spec)
    return out
