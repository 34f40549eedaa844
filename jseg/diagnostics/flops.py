"""Parameter and MAC counting for jseg models.

MACs (multiply-accumulates) count what dominates the cost and what the SegNeXt paper's
figures count: every convolution (out_channels * H_out * W_out * in_channels / groups * kh * kw,
biases not counted) and every batched matmul of the NMF in the decode head at its eval step
count. Norms, activations, element-wise products, softmax and resizing are not counted.

How: the model runs one eval-mode forward on a zero input while every conv and NMF2D module
records its input and output shapes. Jittor executes lazily, and nothing here asks for a
value, so the forward only builds a graph: no kernel runs and no feature map is allocated,
even for a large model at 2048x1024.
"""
from jittor import nn

__all__ = ["count_parameters", "count_macs", "nmf_macs", "model_complexity"]


def _buffer_ids(model):
    """ids of Vars that are state but not parameters: BN running stats and NMF fixed bases."""
    from jseg.models.ham_head import NMF2D

    ids = set()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm):
            ids.update((id(m.running_mean), id(m.running_var)))
        elif isinstance(m, NMF2D) and "bases" in m.__dict__:
            ids.add(id(m.bases))
    return ids


def count_parameters(model) -> int:
    """Number of learnable parameters (BatchNorm running statistics and NMF bases excluded)."""
    buffers = _buffer_ids(model)
    return sum(p.numel() for p in model.parameters() if id(p) not in buffers)


def nmf_macs(nmf, input_shape, steps) -> int:
    """MACs of NMF2D on a (B, C, H, W) input with `steps` multiplicative-update steps.

    With X (D, N), bases (D, R), coef (N, R) per group: the init X^T bases (NDR); each step
    a coef update (NDR + DRR + NRR) and a bases update (DNR + NRR + DRR); compute_coef
    (NDR + DRR + NRR); the reconstruction bases coef^T (DRN). Times B*S groups.
    """
    B, C, H, W = input_shape
    S, R = nmf.S, nmf.R
    D, N = C // S, H * W
    coef_update = N * D * R + D * R * R + N * R * R
    bases_update = D * N * R + N * R * R + D * R * R
    per_group = N * D * R + steps * (coef_update + bases_update) + coef_update + D * R * N
    return B * S * per_group


def _conv_macs(conv, output_shape) -> int:
    B, C_out, H_out, W_out = output_shape
    kh, kw = conv.kernel_size
    return B * C_out * H_out * W_out * (conv.in_channels // conv.groups) * kh * kw


def _named_modules(model):
    """(dotted name, module) pairs in definition order."""
    out = []
    stack = []

    def enter(parents, key, module, n_children):
        stack.append(str(key))
        out.append((".".join(stack[1:]), module))

    def leave(parents, key, module, n_children):
        stack.pop()

    model.dfs([], None, enter, leave)
    return out


def count_macs(model, input_shape):
    """MACs of one eval-mode forward at `input_shape` (B, C, H, W).

    The forward is `model.encode_decode` for a segmentor, `model(x)` otherwise. Returns
    {'total': int, 'by_module': {dotted module name: int}} (convs and NMF2D modules only).
    The model's train/eval mode is restored afterwards.
    """
    import jittor as jt
    from jseg.ops import disabled
    from jseg.models.ham_head import NMF2D

    by_module = {}
    patched = []

    def record(name, module):
        original = module.execute

        def execute(*args, **kwargs):
            out = original(*args, **kwargs)
            if isinstance(module, NMF2D):
                macs = nmf_macs(module, tuple(args[0].shape), module.eval_steps)
            else:
                macs = _conv_macs(module, tuple(out.shape))
            by_module[name] = by_module.get(name, 0) + macs
            return out

        # An instance attribute shadows the class's execute; deleted again below.
        module.execute = execute
        patched.append(module)

    was_training = model.is_training()
    for name, module in _named_modules(model):
        if isinstance(module, (nn.Conv2d, NMF2D)):
            record(name, module)
    model.eval()
    try:
        # module by module: the fused CPU kernels would skip the conv modules' execute
        with jt.no_grad(), disabled():
            x = jt.zeros(tuple(input_shape), "float32")
            forward = getattr(model, "encode_decode", model)
            forward(x)  # builds the lazy graph only; never executed
    finally:
        for module in patched:
            del module.__dict__["execute"]
        if was_training:
            model.train()
    return {"total": sum(by_module.values()), "by_module": by_module}


def model_complexity(model, input_shape):
    """{'params': int, 'macs': int, 'macs_by_part': {top-level child: int}} at `input_shape`."""
    macs = count_macs(model, input_shape)
    by_part = {}
    for name, value in macs["by_module"].items():
        part = name.split(".")[0]
        by_part[part] = by_part.get(part, 0) + value
    return {"params": count_parameters(model), "macs": macs["total"], "macs_by_part": by_part}
