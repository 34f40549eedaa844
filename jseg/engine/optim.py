"""AdamW with the references' parameter groups, and the warm-up + poly schedule.

Parameter groups (mmengine's rule): for each parameter, the longest key of
`optimizer.paramwise` contained in its name (ties: alphabetical) sets its
lr_mult and decay_mult. For SegNeXt, `norm` matches the block and stage norms
(not the StemConv BNs, layer scales or biases) and `head` every decode_head
parameter. Parameters with equal multipliers share one group.

Schedule (mmseg 1.x): LinearLR from warmup_ratio to 1 over warmup_iters, then
PolyLR from warmup_iters to max_iters. The poly part restarts its progress at
warmup_iters (as mmseg 1.x; the 0.x / JSeg formula multiplies the two instead).
"""
import jittor as jt

__all__ = ["param_groups", "build_optimizer", "lr_at", "set_lr"]


def _multipliers(name, paramwise):
    for key in sorted(sorted(paramwise), key=len, reverse=True):
        if key in name:
            return paramwise[key]["lr_mult"], paramwise[key]["decay_mult"]
    return 1.0, 1.0


def param_groups(model, opt_cfg):
    """Group trainable parameters by (lr_mult, decay_mult).

    Returns a list of dicts {params, names, lr_mult, decay_mult} in a fixed order.
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


def lr_at(iteration, sched_cfg, max_iters, base_lr):
    """Learning rate at 0-based `iteration` for a base lr (before a group's lr_mult)."""
    warmup = sched_cfg["warmup_iters"]
    if iteration < warmup:
        start = sched_cfg["warmup_ratio"]
        return base_lr * (start + (1.0 - start) * iteration / warmup)
    span = max(max_iters - warmup, 1)
    progress = min(iteration - warmup, span) / span
    min_lr = sched_cfg["min_lr"]
    return (base_lr - min_lr) * (1.0 - progress) ** sched_cfg["power"] + min_lr


def set_lr(optimizer, lr):
    """Set every group's lr to lr * its lr_mult (a group's own lr overrides optimizer.lr)."""
    optimizer.lr = lr
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
