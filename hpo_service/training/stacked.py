"""Several copies of one model stacked along a leading member dimension and run under ``vmap``.

The pieces that make a ``transformers`` encoder ``vmap``-able with per-member dropout: dropout
modules whose probability is a (stacked) buffer, an eager attention function that reads it, and
a prebuilt 4-D additive mask (so the mask helpers take no data-dependent branch). SDPA's
backward does not run under ``vmap``; eager attention does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.optim.adamw import adamw
from transformers import AttentionInterface

ATTENTION = "hpo_member_eager"


def member_dropout(x: torch.Tensor, p: torch.Tensor | float, training: bool) -> torch.Tensor:
    """Inverted dropout whose ``p`` may be a tensor (one member's slice under ``vmap``)."""
    if not training:
        return x
    # One multiplication of x (and of its gradient) by kept / (1 - p), scaled in place (an
    # in-place comparison has no batching rule: vmap would loop over the members).
    scale = (torch.rand_like(x, dtype=torch.float32) >= p).to(x.dtype).div_(1 - p)
    return x * scale


class MemberDropout(nn.Module):
    """``nn.Dropout`` with ``p`` as a buffer, so each stacked member keeps its own rate."""

    def __init__(self, p: float) -> None:
        super().__init__()
        # Not in the state dict: a member's saved state is its model's, which has no such buffer.
        self.register_buffer("p", torch.tensor(float(p)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return member_dropout(x, self.p, self.training)


def member_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: torch.Tensor | float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``transformers``' eager attention with a tensor dropout rate (``module.dropout.p``)."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1)
    weights = member_dropout(weights, dropout, module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


AttentionInterface.register(ATTENTION, member_attention)


def make_stackable(model: nn.Module) -> nn.Module:
    """Swap ``model``'s dropouts for :class:`MemberDropout` and its attention for
    :func:`member_attention`, in place; returns ``model``."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Dropout):
                setattr(module, name, MemberDropout(child.p))
    model.set_attn_implementation(ATTENTION)
    return model


def additive_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` 1/0 padding mask → ``[B, 1, 1, L]`` float mask: 0 to attend, a large negative
    to ignore; the model's mask helpers return a 4-D mask as is."""
    keep = attention_mask[:, None, None, :].to(torch.float32)
    return (1.0 - keep) * torch.finfo(torch.float32).min


class Stack:
    """Members' parameters and buffers stacked as ``[members, ...]`` tensors, plus a function
    that runs the model for every member on its own batch.

    ``params`` holds each ``nn.Linear`` weight as ``[members, in, out]`` (the model sees its
    transpose, ``[members, out, in]``): the weight gradient of a batched matmul comes in that
    layout, so autograd keeps it as is instead of copying it, transposed, into the weight's
    (a strided copy of every weight gradient each step: 15% of a fused BERT-base step on the
    CPU). Optimizer and clipping are elementwise and per member, so the layout is theirs too."""

    def __init__(self, models: list[nn.Module]) -> None:
        self.base = copy.deepcopy(models[0]).to("meta")  # the structure only; no weights
        self.transposed = {
            f"{name}.weight"
            for name, module in self.base.named_modules()
            if isinstance(module, nn.Linear)
        }
        params, self.buffers = stack_module_state(models)  # type: ignore[arg-type]
        self.params = {k: self._stored(k, v).requires_grad_() for k, v in params.items()}

    def _stored(self, name: str, stacked: torch.Tensor) -> torch.Tensor:
        """``stacked`` (the model's layout) in ``params``' layout, detached."""
        stacked = stacked.detach()
        return stacked.mT.contiguous() if name in self.transposed else stacked

    def stored(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """One member's tensor of parameter ``name`` in ``params``' layout from the model's, or
        back (a transpose is its own inverse)."""
        return tensor.mT if name in self.transposed else tensor

    def member_state(self, index: int) -> dict[str, torch.Tensor]:
        """Member ``index``'s ``state_dict`` as the unstacked model's (copies, on the CPU)."""
        params = self.model_params()
        return {
            name: cpu_copy((params[name] if name in params else self.buffers[name])[index])
            for name in self.base.state_dict()
        }

    def model_params(self) -> dict[str, torch.Tensor]:
        """``params`` in the model's layout (views)."""
        return {k: v.mT if k in self.transposed else v for k, v in self.params.items()}

    def logits(self, inputs: dict[str, torch.Tensor], train: bool) -> torch.Tensor:
        """Logits ``[members, B, labels]`` for inputs shaped ``[members, B, L]``."""
        self.base.train(train)
        run = vmap(_forward(self.base), in_dims=(0, 0, 0), randomness="different")
        return run(self.model_params(), self.buffers, inputs)

    def member_logits(self, index: int) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        """Evaluation logits of one member for an unstacked batch."""
        params = {k: v[index] for k, v in self.model_params().items()}
        buffers = {k: v[index] for k, v in self.buffers.items()}

        def logits(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            self.base.eval()
            return _forward(self.base)(params, buffers, inputs)

        return logits

    def keep(self, indices: list[int]) -> None:
        """Keep only the members at ``indices`` (the others' tensors are freed)."""
        self.params = {k: _take(v, indices).requires_grad_() for k, v in self.params.items()}
        self.buffers = {k: _take(v, indices) for k, v in self.buffers.items()}

    def extend(self, model: nn.Module) -> None:
        """Append one member."""
        params, buffers = stack_module_state([model])  # type: ignore[arg-type]
        self.params = {
            k: torch.cat([v.detach(), self._stored(k, params[k]).to(v.device)]).requires_grad_()
            for k, v in self.params.items()
        }
        self.buffers = {k: torch.cat([v, buffers[k].to(v.device)]) for k, v in self.buffers.items()}


def cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy on the CPU (of a view too: a saved state shares no memory with
    tensors that training goes on updating)."""
    return tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)


def _take(tensor: torch.Tensor, indices: list[int]) -> torch.Tensor:
    index = torch.tensor(indices, device=tensor.device, dtype=torch.long)
    return tensor.detach().index_select(0, index)  # a copy: the old stack can be freed


def _forward(base: nn.Module) -> Callable[..., torch.Tensor]:
    def forward(
        params: dict[str, torch.Tensor],
        buffers: dict[str, torch.Tensor],
        inputs: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        kwargs = dict(inputs)
        kwargs["attention_mask"] = additive_mask(kwargs["attention_mask"])
        return functional_call(base, (params, buffers), (), kwargs).logits

    return forward


class StackedAdamW:
    """AdamW over stacked ``[members, ...]`` parameters with per-member learning rate, weight
    decay, epsilon and step count: torch's fused AdamW kernel (``torch.optim.adamw.adamw``, as
    :func:`hpo_service.training.engine.make_optimizer` uses) on each member's slice, so each
    member gets the update it would get alone. ``decays(name)`` says whether a parameter gets
    weight decay."""

    def __init__(self, decays: Callable[[str], bool], betas: tuple[float, float] = (0.9, 0.999)):
        self.decays = decays
        self.betas = betas
        self.exp_avg: dict[str, torch.Tensor] = {}
        self.exp_avg_sq: dict[str, torch.Tensor] = {}
        self.weight_decay: list[float] = []
        self.eps: list[float] = []
        self.steps: list[dict[str, torch.Tensor]] = []  # per member and parameter, as torch's

    def add_member(
        self,
        params: dict[str, torch.Tensor],
        weight_decay: float,
        eps: float,
        moments: dict[str, dict[str, torch.Tensor]] | None = None,
        steps: int = 0,
    ) -> None:
        """State for a member appended last to ``params`` (already stacked): fresh, or
        ``moments`` (``{"exp_avg": {name: tensor}, "exp_avg_sq": ...}`` in ``params``' layout)
        after ``steps`` updates."""
        for key, state in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
            for name, param in params.items():
                first = torch.zeros_like(param[-1:])
                if moments is not None:  # a copy in the parameter's layout: adamw updates it
                    first.copy_(moments[key][name][None])
                state[name] = torch.cat([state[name], first]) if name in state else first
        self.weight_decay.append(weight_decay)
        self.eps.append(eps)
        self.steps.append(
            {
                name: torch.full((), float(steps), device=param.device)
                for name, param in params.items()
            }
        )

    def moments(self, index: int) -> dict[str, dict[str, torch.Tensor]]:
        """Member ``index``'s first and second moments (copies, on the CPU)."""
        return {
            "exp_avg": {n: cpu_copy(v[index]) for n, v in self.exp_avg.items()},
            "exp_avg_sq": {n: cpu_copy(v[index]) for n, v in self.exp_avg_sq.items()},
        }

    def keep(self, indices: list[int]) -> None:
        """Keep only the members at ``indices``."""
        for state in (self.exp_avg, self.exp_avg_sq):
            for name, value in state.items():
                state[name] = _take(value, indices)
        self.weight_decay = [self.weight_decay[i] for i in indices]
        self.eps = [self.eps[i] for i in indices]
        self.steps = [self.steps[i] for i in indices]

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], lrs: list[float]) -> None:
        """One update of every member with its learning rate ``lrs[i]`` (``param.grad`` set)."""
        names = [name for name, param in params.items() if param.grad is not None]
        groups = [[n for n in names if self.decays(n)], [n for n in names if not self.decays(n)]]
        for i, lr in enumerate(lrs):
            for group, weight_decay in zip(groups, (self.weight_decay[i], 0.0), strict=True):
                adamw(
                    [params[n][i] for n in group],
                    [params[n].grad[i] for n in group],  # type: ignore[index]
                    [self.exp_avg[n][i] for n in group],
                    [self.exp_avg_sq[n][i] for n in group],
                    [],
                    [self.steps[i][n] for n in group],
                    fused=True,
                    amsgrad=False,
                    beta1=self.betas[0],
                    beta2=self.betas[1],
                    lr=lr,
                    weight_decay=weight_decay,
                    eps=self.eps[i],
                    maximize=False,
                )


@torch.no_grad()
def clip_per_member(params: dict[str, torch.Tensor], max_norms: list[float]) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for each member's slice of the gradients (members with
    ``max_norm <= 0`` are not clipped); returns each member's gradient norm before clipping."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2, dim=1) for g in grads])
    total = torch.linalg.vector_norm(norms, 2, dim=0)
    limit = torch.tensor(max_norms, dtype=total.dtype, device=total.device)
    coef = torch.where(limit > 0, torch.clamp(limit / (total + 1e-6), max=1.0), 1.0)
    for grad in grads:
        grad.mul_(coef.view((-1,) + (1,) * (grad.dim() - 1)))
    return total
