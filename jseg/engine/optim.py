"""AdamW with the references' parameter groups, the warm-up + poly schedule, and
gradient clipping.

Parameter groups (mmengine's rule, `param_groups`): the longest key of `optimizer.paramwise`
contained in a parameter's name (ties: alphabetical) sets its lr_mult and decay_mult. The
schedule (`LrSchedule`) is mmseg 1.x's LinearLR + PolyLR, bit for bit per group; clipping
(`clip_grad_norm`) sums the global norm in float64. Training loop use:

    schedule = LrSchedule(cfg.scheduler, max_iters, initial_lrs(optimizer, cfg.optimizer.lr))
    for it in range(start_iter, max_iters):
        set_lr(optimizer, schedule.values(it))
        ... optimizer.backward(loss)
        clip_grad_norm(optimizer, cfg.optimizer.grad_clip)  # if clipping
        optimizer.step()
"""
import functools
import math

import jittor as jt

from jseg.checkpoint import CheckpointError

__all__ = ["param_groups", "build_optimizer", "LrSchedule", "initial_lrs", "lr_at", "set_lr",
           "grad_norm", "clip_grad_norm", "optimizer_state", "restore_optimizer"]


def _multipliers(name, paramwise):
    for key in sorted(sorted(paramwise), key=len, reverse=True):
        if key in name:
            return paramwise[key]["lr_mult"], paramwise[key]["decay_mult"]
    return 1.0, 1.0


def param_groups(model, opt_cfg):
    """Group trainable parameters by (lr_mult, decay_mult).

    For each parameter, the longest key of `optimizer.paramwise` contained in its name
    (ties: alphabetical) sets its lr_mult and decay_mult (mmengine's rule). For SegNeXt,
    `norm` matches the block and stage norms (not the StemConv BNs, layer scales or biases)
    and `head` every decode_head parameter. Parameters with equal multipliers share one
    group. Returns a list of dicts {params, names, lr_mult, decay_mult} in a fixed order.
    """
    groups = {}
    for name, p in model.named_parameters():
        if p.is_stop_grad():
            continue  # BN running statistics and other buffers
        mults = _multipliers(name, opt_cfg["paramwise"])
        group = groups.setdefault(mults, {"params": [], "names": [],
                                          "lr_mult": mults[0], "decay_mult": mults[1]})
        group["params"].append(p)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model, opt_cfg):
    """Jittor AdamW over `param_groups`; each group carries its own lr and weight decay
    (Jittor's AdamW matches torch.optim.AdamW's update)."""
    groups = param_groups(model, opt_cfg)
    for g in groups:
        g["lr"] = opt_cfg["lr"] * g["lr_mult"]
        g["weight_decay"] = opt_cfg["weight_decay"] * g["decay_mult"]
    return jt.optim.AdamW(groups, lr=opt_cfg["lr"], eps=opt_cfg["eps"],
                          betas=tuple(opt_cfg["betas"]), weight_decay=opt_cfg["weight_decay"])


class LrSchedule:
    """Each param group's lr per 0-based iteration, exactly as mmengine's chained
    `LinearLR(start_factor=warmup_ratio, begin=0, end=W)` + `PolyLR(power, eta_min=min_lr,
    begin=W, end=M)` (by_epoch=False) set it, bit for bit.

    mmengine steps its schedulers once when they are built (global step 0) and once after
    every iteration, so iteration i trains with the values after global step s = i. Each
    scheduler is recursive: it rewrites the group's current value, and its own counter
    k = s - begin runs over [0, end - begin), so its `total_iters = end - begin - 1` (the
    last k it sees, where LinearLR reaches factor 1 and PolyLR reaches eta_min; a closed
    form over end - begin steps is off by one everywhere). With W = warmup_iters,
    M = max_iters, r = warmup_ratio, eta = min_lr:

        LinearLR, s in [0, W), T = W - 1:
            k = 0: lr = lr * r
            k > 0: lr = lr * (1 + (1 - r) / (T*r + (k-1)*(1 - r)))
        PolyLR, s in [W, M), T = M - W - 1:
            k = 0: lr unchanged
            k > 0: lr = (lr - eta) * (1 - 1/(T - k + 1))**power + eta

    so lr(0) = lr0 * r, lr(W - 1) = lr0 (up to rounding, W >= 2) and lr(M - 1) = eta
    exactly. eta is absolute, not scaled by the group's lr_mult: every group ends at min_lr.
    Edge cases as mmengine: W = 0 has no LinearLR (poly from lr0); W = 1 only multiplies by
    r at step 0, and PolyLR then decays from lr0 * r. W >= M (short debugging runs;
    mmengine refuses to build a PolyLR with end <= begin): the warm-up part only.

    The float expressions keep mmengine's order, so the values are identical, not close.
    Sequential calls advance the cached state by one step; a call for an earlier iteration
    recomputes from iteration 0 (160k steps take a fraction of a second).
    """

    def __init__(self, sched_cfg, max_iters, initial_lrs):
        self.warmup_iters = sched_cfg["warmup_iters"]
        self.warmup_ratio = sched_cfg["warmup_ratio"]
        self.power = sched_cfg["power"]
        self.min_lr = sched_cfg["min_lr"]
        self.max_iters = max_iters
        if self.warmup_iters < 0:
            raise ValueError(f"scheduler.warmup_iters={self.warmup_iters} must be >= 0")
        if self.warmup_iters > 0 and not 0 < self.warmup_ratio <= 1:
            raise ValueError(f"scheduler.warmup_ratio={self.warmup_ratio} must be in (0, 1]")
        lrs = list(initial_lrs)
        if self.warmup_iters > 0:  # LinearLR's step 0; PolyLR's step 0 leaves lr unchanged
            lrs = [lr * self.warmup_ratio for lr in lrs]
        self._first = lrs
        self._step, self._lrs = 0, lrs

    def values(self, iteration):
        """The list of group lrs used during 0-based `iteration` (< max_iters)."""
        if not 0 <= iteration < self.max_iters:
            raise ValueError(f"iteration {iteration} is outside [0, max_iters={self.max_iters})")
        if iteration < self._step:
            self._step, self._lrs = 0, self._first
        step, lrs = self._step, self._lrs
        warmup, ratio, power, eta = self.warmup_iters, self.warmup_ratio, self.power, self.min_lr
        delta = 1.0 - ratio  # mmengine's end_factor - start_factor, end_factor = 1.0
        while step < iteration:
            step += 1
            if step < warmup:
                factor = 1. + delta / ((warmup - 1) * ratio + (step - 1) * delta)
                lrs = [lr * factor for lr in lrs]
            elif step > warmup:  # step == warmup is PolyLR's k = 0: unchanged
                factor = (1 - 1 / ((self.max_iters - warmup - 1) - (step - warmup) + 1)) ** power
                lrs = [(lr - eta) * factor + eta for lr in lrs]
        self._step, self._lrs = step, lrs
        return list(lrs)


def initial_lrs(optimizer, base_lr):
    """Each group's lr before scheduling: base_lr * lr_mult (mmengine's optimizer
    constructor). Use this, not the groups' current "lr", which a schedule has changed."""
    return [base_lr * g.get("lr_mult", 1.0) for g in optimizer.param_groups]


@functools.lru_cache(maxsize=4)
def _one_group_schedule(warmup_iters, warmup_ratio, power, min_lr, max_iters, base_lr):
    return LrSchedule({"warmup_iters": warmup_iters, "warmup_ratio": warmup_ratio,
                       "power": power, "min_lr": min_lr}, max_iters, [base_lr])


def lr_at(iteration, sched_cfg, max_iters, base_lr):
    """The lr of a group with lr_mult 1 during 0-based `iteration` (for logging); the
    schedule is cached, so sequential calls are cheap."""
    schedule = _one_group_schedule(sched_cfg["warmup_iters"], sched_cfg["warmup_ratio"],
                                   sched_cfg["power"], sched_cfg["min_lr"], max_iters, base_lr)
    return schedule.values(iteration)[0]


def set_lr(optimizer, lrs):
    """Set group i's lr to lrs[i] (e.g. `LrSchedule.values(it)`). `optimizer.lr` becomes the
    lr of the first group with lr_mult 1 (else of the first group)."""
    groups = optimizer.param_groups
    if isinstance(lrs, (int, float)) or len(lrs) != len(groups):
        raise ValueError(f"set_lr needs one lr per param group ({len(groups)}), got {lrs!r}; "
                         "pass LrSchedule(...).values(iteration)")
    for group, lr in zip(groups, lrs):
        group["lr"] = lr
    base = next((g for g in groups if g.get("lr_mult", 1.0) == 1.0), groups[0])
    optimizer.lr = base["lr"]


def grad_norm(grads):
    """Global L2 norm of a list of Vars, summed in float64 (one sync)."""
    if not grads:
        return 0.0
    squares = [(g.float64() * g.float64()).sum() for g in grads]
    total = sum(squares[1:], squares[0])  # not sum(squares): in Jittor 0 + a float64 Var is float32
    return math.sqrt(float(total.item()))


def clip_grad_norm(optimizer, max_norm):
    """Scale the stored gradients so that their global L2 norm is at most max_norm
    (torch's `clip_grad_norm_`: coef = max_norm / (norm + 1e-6), applied when < 1).
    Call between `optimizer.backward(loss)` and `optimizer.step()`. Returns the norm
    before clipping. The norm is summed in float64: Jittor's own
    `Optimizer.clip_grad_norm` sums in float32, which on CPU underestimates the norm of
    long gradient vectors (7% at 49M elements)."""
    pairs = []
    for group in optimizer.param_groups:
        if "grads" not in group:
            raise RuntimeError("clip_grad_norm found no gradients: call "
                               "optimizer.backward(loss) before it")
        pairs += [(p, g) for p, g in zip(group["params"], group["grads"]) if not p.is_stop_grad()]
    total = grad_norm([g for _, g in pairs])
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for _, g in pairs:
            g.update(g * coef)
    return total


def optimizer_state(optimizer):
    """The AdamW state as arrays, for a checkpoint: {n_step, m: {name: array}, v: {...}}."""
    state = {"n_step": int(optimizer.n_step), "m": {}, "v": {}}
    for g in optimizer.param_groups:
        for name, m, v in zip(g["names"], g["m"], g["values"]):
            state["m"][name] = m.numpy()
            state["v"][name] = v.numpy()
    return state


def restore_optimizer(optimizer, state, source):
    """Put `optimizer_state`'s output (read from `source`) back; CheckpointError if it was
    written for another model."""
    names = [n for g in optimizer.param_groups for n in g["names"]]
    missing = [n for n in names if n not in state["m"] or n not in state["v"]]
    if missing:
        raise CheckpointError(f"optimizer state in {source} lacks {len(missing)} parameters "
                            f"(e.g. {missing[:3]}); it was written for another model")
    for g in optimizer.param_groups:
        for name, m, v in zip(g["names"], g["m"], g["values"]):
            m.update(jt.array(state["m"][name]))
            v.update(jt.array(state["v"][name]))
    optimizer.n_step = int(state["n_step"])
