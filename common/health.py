"""The checkpoint rule, shared by the online (main.py) and offline (memory/train.py) loops:

    a checkpoint is only written from a completed update whose tensors are all finite,
    so a good checkpoint is never replaced by a bad one.

An update is *skipped* (no optimiser step, weights untouched) when a loss, a gradient norm or a
distribution parameter is non-finite; acting with a non-finite policy counts the same way. After
`nan_patience` bad ones in a row the run stops and keeps its last checkpoint. An update *diverges*
when a step blows the weights up (their norm more than doubles and their RMS grows by over 0.1 in
one step: never in healthy training, where a step moves weights by about lr << their size); the
step is done by then, so the run stops at once. `Health` tracks this; `checkpoint.save` refuses
non-finite tensors; `close_all` runs a loop's clean-up without one failure hiding another.
"""
from __future__ import annotations

import math
import sys

import torch

from common import parallel
from common.cli import fail

# the key to lower when a network diverges
LEARNING_RATE = {"world model": "wm.lr", "actor": "ac.actor_lr", "critic": "ac.critic_lr"}


class Diverged(RuntimeError):
    """A step blew a network's weights up; its message is one line."""

    def __init__(self, network: str, before: float, after: float):
        lr = LEARNING_RATE.get(network, "its learning rate")
        super().__init__(f"the {network} diverged: one update grew its weight norm from "
                         f"{before:.3g} to {after:.3g} (lower {lr})")


def first_nonfinite(tree, name: str = "") -> str | None:
    """The dotted name of the first floating tensor in `tree` (dicts, lists, tensors) holding a
    nan or inf, or None when all are finite."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        if torch.is_tensor(tree) and (tree.is_floating_point() or tree.is_complex()):
            return None if bool(torch.isfinite(tree).all()) else name
        if isinstance(tree, float) and not math.isfinite(tree):
            return name
        return None
    for key, value in items:
        found = first_nonfinite(value, f"{name}.{key}" if name else str(key))
        if found is not None:
            return found
    return None


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with PyTorch's fused kernel: one pass over all weights instead of about ten per
    tensor (a CPU step of the DreamerV3-S world model: 14 ms instead of 85 ms). Its values equal
    the per-tensor loop's to rounding (tests/test_reliability.py)."""
    return torch.optim.AdamW(params, fused=True, **kwargs)


def load_optimizer(opt, state: dict) -> None:
    """opt.load_state_dict(state), keeping opt's own kernel choice (`fused`, `foreach`): loading
    takes every group setting from the checkpoint, so one saved before `adamw` would switch the
    optimiser back to the per-tensor loop."""
    kernels = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in opt.param_groups]
    # set before loading: where loading puts the step counts (the parameters' device for the fused
    # kernel, else the CPU) follows the groups' `fused` flag
    groups = [{**saved, **kept} for saved, kept in zip(state["param_groups"], kernels)]
    opt.load_state_dict({**state, "param_groups": groups})


def optimizer_step(opt, params: list, clip: float):
    """Average the gradients over ranks, clip them, and step when their norm is finite (else the
    weights stay untouched). Returns (gradient norm, weight norms (before, after) or None when
    skipped), as device tensors: the caller checks them with `check_growth` at its next sync."""
    parallel.average_gradients(params)
    norm = torch.nn.utils.clip_grad_norm_(params, clip)
    if not torch.isfinite(norm):
        return norm.detach(), None
    before = torch.nn.utils.get_total_norm(params).detach()
    opt.step()
    return norm.detach(), (before, torch.nn.utils.get_total_norm(params).detach())


def check_growth(network: str, norms, count: int) -> None:
    """Raise Diverged when one step took the weight norm from norms[0] to norms[1] beyond the
    rule of the module docstring (count: number of weights of the network)."""
    if norms is None:
        return
    before, after = (float(n) for n in norms)
    if not math.isfinite(after) or after > 2 * before + 0.1 * math.sqrt(count):
        raise Diverged(network, before, after)


class Health:
    """Counts bad (skipped) updates in a row and says whether the weights may be saved now."""

    def __init__(self, patience: int, logdir, unit: str = "step"):
        self.patience, self.logdir, self.unit = patience, logdir, unit
        self.bad, self.busy = 0, False

    def begin(self) -> None:
        """An update starts: until `end`, the weights are those of no completed update."""
        self.busy = True

    def end(self, ok: bool, at: int) -> None:
        """The update begun at `unit` `at` ended: a good one clears the count of bad ones."""
        self.busy = False
        if ok:
            self.bad = 0
        else:
            self.fault(at)

    def fault(self, at: int, what: str = "non-finite loss", then: str = "update skipped"):
        """One more bad update or act in a row: a warning, and after `patience` in a row the run
        stops (exit 2) with its last good checkpoint. A good act clears nothing: only a good
        update makes the weights saveable again."""
        self.bad += 1
        print(f"warning: {what} at {self.unit} {at}: {then} ({self.bad} in a row)",
              file=sys.stderr)
        if self.bad >= self.patience:
            fail(f"{self.bad} non-finite updates or actions in a row at {self.unit} {at}: stopped;"
                 f" the last good checkpoint in {self.logdir} is kept")

    @property
    def saveable(self) -> bool:
        """Between updates, and the last one was good."""
        return not self.busy and self.bad == 0


def close_all(steps, error: BaseException | None) -> None:
    """Run every clean-up step (None: skip) even if some fail. While the loop fails with `error`
    (other than a Ctrl-C / SIGTERM), their own errors are dropped: the first error is the one to
    report, and a full disk would otherwise chain one traceback per step. Else the first
    clean-up error is raised after all steps ran."""
    first = None
    for step in steps:
        try:
            if step is not None:
                step()
        except Exception as e:  # noqa: BLE001 - re-raised below unless another error is on its way
            first = first or e
    if first is not None and error is None:
        raise first


def may_save(health: Health, error: BaseException | None) -> bool:
    """After the loop: save unless mid-update or after a bad update, or after a failed write
    (OSError: the disk cannot be trusted with a new checkpoint; the last one stays)."""
    return health.saveable and not isinstance(error, OSError)
