"""TensorFlow's RMSProp, the optimizer the EfficientNet papers trained with.

`torch.optim.RMSprop` differs from `tf.compat.v1.train.RMSPropOptimizer` in three ways that
matter with the paper's settings (decay 0.9, momentum 0.9, eps 1e-3):

- eps goes *inside* the square root (TF: g / sqrt(ms + eps); torch: g / (sqrt(ms) + eps)),
  so with eps 1e-3 TF's denominator is never below ~0.03 where torch's can reach 1e-3;
- the squared average starts at ones, not zeros, so the first steps are small rather than
  ~1/sqrt(1 - decay) times the gradient's sign;
- the learning rate is folded into the momentum buffer (buf = m * buf + lr * g / rms), so a
  learning-rate change takes effect gradually instead of rescaling the whole buffer.

Weight decay is L2 added to the gradient, as the official code adds it to the loss. The
semantics are those of timm's `RMSpropTF` defaults, which a test checks step by step.
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer


class RMSpropTF(Optimizer):
    """RMSProp with TensorFlow semantics.

    alpha: decay of the squared-gradient average (TF `decay`, paper 0.9).
    momentum: paper 0.9. eps: inside the sqrt (paper 1e-3). weight_decay: L2 on the gradient.
    """

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.9, eps: float = 1e-3,
                 momentum: float = 0.9, weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or momentum < 0 or weight_decay < 0 or not 0 <= alpha < 1:
            raise ValueError(f"invalid RMSpropTF settings lr={lr} alpha={alpha} eps={eps} "
                             f"momentum={momentum} weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, momentum=momentum,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
            momentum, weight_decay = group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["square_avg"] = torch.ones_like(p)
                    if momentum > 0:
                        state["momentum_buffer"] = torch.zeros_like(p)
                state["step"] += 1
                if weight_decay:
                    grad = grad.add(p, alpha=weight_decay)
                square_avg = state["square_avg"]
                # TF's order of operations: ms += (1 - decay) * (g^2 - ms)
                square_avg.add_(grad * grad - square_avg, alpha=1 - alpha)
                rms = square_avg.add(eps).sqrt_()
                if momentum > 0:
                    buf = state["momentum_buffer"]
                    buf.mul_(momentum).addcdiv_(grad, rms, value=lr)
                    p.sub_(buf)
                else:
                    p.addcdiv_(grad, rms, value=-lr)
        return loss
