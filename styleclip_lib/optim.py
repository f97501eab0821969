"""Optimisers used by the StyleCLIP training code.

:class:`Ranger` is the optimiser of the StyleCLIP latent-mapper training
(``mapper/training/ranger.py``, Ranger version 20.4.11 by L. Wright): three
published ideas stacked on one another, applied per parameter tensor:

1. **Gradient centralisation** (Yong et al. 2020, arXiv:2004.01461): for every
   parameter with more than ``1`` dimension (``3`` with ``gc_conv_only``), the
   gradient's mean over all axes but the first (the output axis) is subtracted,
   ``g ← g − mean_{1..}(g)``.  Biases and other vectors are left alone.

2. **RAdam** (Liu et al. 2020, arXiv:1908.03265) with Adam moments
   ``m ← β1·m + (1−β1)·g``, ``v ← β2·v + (1−β2)·g²`` and the length of the
   approximated simple moving average

       ρ∞ = 2/(1−β2) − 1,   ρt = ρ∞ − 2·t·β2^t / (1−β2^t).

   While ``ρt ≤ N_sma_threshhold`` the variance is not trusted and the update is
   bias-corrected momentum SGD, ``p ← p − lr·m/(1−β1^t)``; afterwards it is the
   rectified Adam step

       r  = sqrt((1−β2^t) · (ρt−4)(ρt−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρt)) / (1−β1^t)
       p ← p − lr · r · m / (sqrt(v) + eps)

   (``eps`` is added to ``sqrt(v)`` without bias correction, as in Ranger).
   ``weight_decay`` is decoupled: ``p ← p − weight_decay·lr·p`` before the step.

3. **Lookahead** (Zhang et al. 2019, arXiv:1907.08610): a slow copy of every
   parameter is taken at its first step; every ``k`` steps the slow weights move
   ``alpha`` of the way to the fast ones, ``slow ← slow + alpha·(p − slow)``, and
   the fast weights are reset to them.

Defaults are Ranger's (and thus StyleCLIP's): ``alpha=0.5, k=6,
N_sma_threshhold=5, betas=(0.95, 0.999), eps=1e-5, weight_decay=0, use_gc=True``.
The spelling ``N_sma_threshhold`` is Ranger's.  All per-parameter state
(``step``, ``exp_avg``, ``exp_avg_sq``, ``slow_buffer``) lives in
``optimizer.state``, so :meth:`~torch.optim.Optimizer.state_dict` /
``load_state_dict`` resume a run exactly (the reference keeps a step-size cache
outside the state; here the step size is recomputed, which gives the same numbers).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.optim.optimizer import Optimizer

__all__ = ["Ranger", "radam_step_size"]


def radam_step_size(step: int, beta1: float, beta2: float, threshold: float) -> tuple[float, bool]:
    """``(step_size, rectified)`` of RAdam at 1-based ``step`` (see the module docstring).

    ``rectified`` is False during the warm-up (ρt ≤ threshold), where the update is
    ``step_size · m`` instead of ``step_size · m / (sqrt(v) + eps)``.
    """
    beta2_t = beta2 ** step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2_t / (1.0 - beta2_t)
    bias1 = 1.0 - beta1 ** step
    if rho_t > threshold:
        r = (1.0 - beta2_t) * (rho_t - 4.0) / (rho_inf - 4.0) * (rho_t - 2.0) / rho_t * rho_inf / (rho_inf - 2.0)
        return math.sqrt(r) / bias1, True
    return 1.0 / bias1, False


class Ranger(Optimizer):
    """RAdam + Lookahead + gradient centralisation (see the module docstring).

    Args:
        params: iterable of parameters or parameter groups.
        lr: learning rate (StyleCLIP's mapper training uses 0.5).
        alpha: Lookahead slow-weight step, in [0, 1].
        k: Lookahead synchronisation period (steps), >= 1.
        N_sma_threshhold: RAdam warm-up threshold on ρt.
        betas: Adam moment coefficients.
        eps: added to ``sqrt(exp_avg_sq)``.
        weight_decay: decoupled weight decay.
        use_gc: gradient centralisation on/off.
        gc_conv_only: centralise only tensors with more than 3 dims (conv kernels).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, alpha: float = 0.5, k: int = 6, N_sma_threshhold: float = 5,
                 betas: tuple[float, float] = (0.95, 0.999), eps: float = 1e-5, weight_decay: float = 0,
                 use_gc: bool = True, gc_conv_only: bool = False):
        if not lr > 0:
            raise ValueError(f"Ranger: invalid learning rate {lr} (must be > 0)")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Ranger: invalid Lookahead alpha {alpha} (must be in [0, 1])")
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"Ranger: invalid Lookahead k {k!r} (must be an int >= 1)")
        if not eps > 0:
            raise ValueError(f"Ranger: invalid eps {eps} (must be > 0)")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Ranger: invalid betas {betas} (each must be in [0, 1))")
        if not weight_decay >= 0:
            raise ValueError(f"Ranger: invalid weight_decay {weight_decay} (must be >= 0)")
        defaults = dict(lr=lr, alpha=alpha, k=k, N_sma_threshhold=N_sma_threshhold, betas=tuple(betas), eps=eps,
                        weight_decay=weight_decay, use_gc=use_gc, gc_conv_only=gc_conv_only)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            gc_dims = 3 if group["gc_conv_only"] else 1
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Ranger does not support sparse gradients")
                # float32 arithmetic for half/bfloat16 parameters (as Ranger); float64 stays float64
                compute = p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32
                grad = p.grad.to(compute)
                if group["use_gc"] and grad.dim() > gc_dims:
                    grad = grad - grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True)
                p32 = p.to(compute)  # the parameter itself unless it is half precision
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p32, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p32, memory_format=torch.preserve_format)
                    state["slow_buffer"] = p.detach().clone(memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                t = state["step"]

                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                step_size, rectified = radam_step_size(t, beta1, beta2, group["N_sma_threshhold"])

                if group["weight_decay"] != 0:
                    p32.add_(p32, alpha=-group["weight_decay"] * group["lr"])
                if rectified:
                    p32.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size * group["lr"])
                else:
                    p32.add_(exp_avg, alpha=-step_size * group["lr"])
                if p32 is not p:
                    p.copy_(p32)

                if t % group["k"] == 0:  # Lookahead synchronisation
                    slow = state["slow_buffer"]
                    slow.add_(p - slow, alpha=group["alpha"])
                    p.copy_(slow)
        return loss
