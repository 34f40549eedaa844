"""SegNeXt checkpoint layouts and the conversion to ours: flat dict of arrays in, flat dict out.

Our layout is the mmsegmentation 1.x segmentor state dict (arXiv 2209.08575;
keys `backbone.patch_embed1.proj.0.weight`, `backbone.block1.0.mlp.dwconv.weight`,
`decode_head.conv_seg.weight`, ...) without `num_batches_tracked`, because Jittor's
BatchNorm has no such buffer. The source layouts:

| format   | source                                 | differs from ours by                   |
|----------|----------------------------------------|----------------------------------------|
| mmseg    | mmsegmentation 1.x SegNeXt checkpoints | `*.num_batches_tracked` (dropped)      |
| official | Visual-Attention-Network/SegNeXt       | `mlp.dwconv.dwconv.*` -> `mlp.dwconv.*`|
|          |                                        | and num_batches_tracked (dropped)      |
| jseg     | Jittor/JSeg `.pkl` checkpoints         | `mlp.dwconv.dwconv.*` -> `mlp.dwconv.*`|
| imagenet | ImageNet-1k MSCAN backbones (official, | `backbone.` prefix added; classifier   |
|          | mmseg re-upload, Jittor/JSeg hub)      | `head.*` and nbt dropped; either name  |
|          |                                        | of the MLP's depthwise conv accepted   |

Each format is a rename table and a drop list. Every source key is either
renamed into one of `OUR_KEY_PATTERNS` (derived from `segnext_state_shapes`, the one key
table, which tests/checkpoint/test_convert.py checks against the built models) or dropped
for a stated reason; anything
else stops the conversion with the list of leftover keys, which is also how a
checkpoint of another architecture is rejected. `decode_head.hamburger.ham.bases`
(present only when a model was trained with rand_init=False) is kept: it is a
real SegNeXt buffer, and a model without it will report it as unexpected.

The way back, ours -> mmseg 1.x (`to_mmseg_state_dict`), keeps every key and adds each
BatchNorm's `num_batches_tracked`: the values the conversion read from the source
(`convert_state_dict` reports them, by their key in our naming), 0 for the others.
"""
import re
from dataclasses import dataclass

import numpy as np

__all__ = ["ConversionError", "FORMATS", "OUR_KEY_PATTERNS", "mscan_variants", "detect_format",
           "convert_state_dict", "check_against_model", "segnext_state_shapes",
           "infer_state_shapes", "describe_architecture", "is_our_key", "to_mmseg_state_dict"]


class ConversionError(ValueError):
    """A state dict cannot be converted or does not fit; the message lists the bad keys."""


def mscan_variants():
    """{"MSCAN-T": (embed_dims, depths), ...} from jseg.models.mscan.MSCAN_SETTINGS."""
    from jseg.models.mscan import MSCAN_SETTINGS  # imports Jittor: only when naming a model
    return {f"MSCAN-{k.upper()}": (tuple(v["embed_dims"]), tuple(v["depths"]))
            for k, v in MSCAN_SETTINGS.items()}


def is_our_key(key):
    return any(p.fullmatch(key) for p in OUR_KEY_PATTERNS)


# ---------------------------------------------------------------------------
# The formats: rename table and drop list

_NESTED_DWCONV = re.compile(r".*\.mlp\.dwconv\.dwconv\.(weight|bias)")  # official / Jittor/JSeg
_FLAT_DWCONV = re.compile(r".*\.mlp\.dwconv\.(weight|bias)")            # mmseg 1.x, ours
_SIGNATURE = re.compile(r"(backbone\.)?block[1-4]\.\d+\.attn\.spatial_gating_unit\.conv0_1\."
                        r"|decode_head\.hamburger\.")
_NBT_DROP = (re.compile(r".*\.num_batches_tracked"),
             "BatchNorm step counters (Jittor's BatchNorm has none)")


@dataclass(frozen=True)
class Format:
    name: str
    source: str
    renames: tuple   # (regex, replacement), applied in order to every kept key
    drops: tuple     # (regex, reason): source keys left out on purpose
    dwconv: str      # naming the source must use: "nested", "flat" or "either"


FORMATS = {
    "mmseg": Format("mmseg", "mmsegmentation 1.x SegNeXt checkpoint",
                    renames=(), drops=(_NBT_DROP,), dwconv="flat"),
    "official": Format("official", "official SegNeXt (PyTorch) checkpoint",
                       renames=((re.compile(r"(.*\.mlp\.dwconv)\.dwconv\.(weight|bias)"),
                                 r"\1.\2"),),
                       drops=(_NBT_DROP,), dwconv="nested"),
    # Jittor/JSeg models are Jittor models: no num_batches_tracked, so none is dropped
    "jseg": Format("jseg", "Jittor/JSeg checkpoint",
                   renames=((re.compile(r"(.*\.mlp\.dwconv)\.dwconv\.(weight|bias)"), r"\1.\2"),),
                   drops=(), dwconv="nested"),
    "imagenet": Format("imagenet", "ImageNet-1k MSCAN backbone",
                       renames=((re.compile(r"(.*)"), r"backbone.\1"),
                                (re.compile(r"(.*\.mlp\.dwconv)\.dwconv\.(weight|bias)"),
                                 r"\1.\2")),
                       drops=(_NBT_DROP, (re.compile(r"head\.(weight|bias)"),
                                          "the ImageNet classifier (not part of the segmentor)")),
                       dwconv="either"),
}


def _listing(keys, limit=20):
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def detect_format(keys):
    """Tell the layout of a flat state dict from its keys; returns (format, reason).

    Raises ConversionError when the keys are not those of a SegNeXt / MSCAN model.
    """
    keys = list(keys)
    if not keys:
        raise ConversionError("the state dict is empty")
    if not any(_SIGNATURE.match(k) for k in keys):
        raise ConversionError(
            "not a SegNeXt/MSCAN checkpoint: no key looks like "
            "'[backbone.]block1.0.attn.spatial_gating_unit.conv0_1.*' or "
            f"'decode_head.hamburger.*' (first keys: {', '.join(keys[:5])})")
    nested = [k for k in keys if _NESTED_DWCONV.fullmatch(k)]
    flat = [k for k in keys if _FLAT_DWCONV.fullmatch(k)]
    nbt = [k for k in keys if k.endswith(".num_batches_tracked")]
    if nested and flat:
        raise ConversionError(
            f"mixed layouts: {len(nested)} keys use 'mlp.dwconv.dwconv.' (official, Jittor/JSeg) and "
            f"{len(flat)} use 'mlp.dwconv.' (mmseg), e.g. {nested[0]} and {flat[0]}")
    if any(k.startswith(("backbone.", "decode_head.")) for k in keys):
        if nested and nbt:
            return "official", (f"'mlp.dwconv.dwconv.' keys with {len(nbt)} num_batches_tracked "
                                "entries (a PyTorch model)")
        if nested:
            return "jseg", "'mlp.dwconv.dwconv.' keys without num_batches_tracked (a Jittor model)"
        return "mmseg", ("'mlp.dwconv.' keys" if flat else "no mlp.dwconv keys") + \
            " with 'backbone.'/'decode_head.' prefixes"
    naming = "'mlp.dwconv.dwconv.'" if nested else "'mlp.dwconv.'"
    return "imagenet", f"backbone keys without the 'backbone.' prefix ({naming} naming)"


def convert_state_dict(state, fmt):
    """Convert a flat state dict in layout `fmt` to ours; returns (converted, report).

    report = {"mapped": int, "renamed": int, "dropped": {reason: [source keys]},
    "num_batches_tracked": {key in our naming: int}} (the dropped BatchNorm step counters
    that hold an integer, for `to_mmseg_state_dict`).
    Raises ConversionError listing every key that is neither mapped nor dropped.
    """
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    keys = list(state)
    nested = [k for k in keys if _NESTED_DWCONV.fullmatch(k)]
    flat = [k for k in keys if _FLAT_DWCONV.fullmatch(k)]
    if spec.dwconv == "nested" and flat:
        raise ConversionError(f"{len(flat)} keys use mmseg's 'mlp.dwconv.' naming, which a "
                              f"{spec.source} does not have (e.g. {flat[0]}); try --format mmseg")
    if spec.dwconv == "flat" and nested:
        raise ConversionError(f"{len(nested)} keys use the official and Jittor/JSeg "
                              "'mlp.dwconv.dwconv.' "
                              f"naming, which a {spec.source} does not have (e.g. {nested[0]}); "
                              "try --format official or jseg")
    if nested and flat:
        raise ConversionError(f"mixed 'mlp.dwconv.dwconv.' and 'mlp.dwconv.' keys "
                              f"(e.g. {nested[0]} and {flat[0]})")
    if fmt == "imagenet":
        prefixed = [k for k in keys if k.startswith(("backbone.", "decode_head."))]
        if prefixed:
            raise ConversionError(f"an ImageNet backbone has no 'backbone.'/'decode_head.' "
                                  f"prefixes, but {len(prefixed)} keys do (e.g. {prefixed[0]}); "
                                  "try --format auto")

    def rename(key):
        for pattern, replacement in spec.renames:
            match = pattern.fullmatch(key)
            key = match.expand(replacement) if match else key
        return key

    converted, dropped, leftover, renamed, counters = {}, {}, [], 0, {}
    for key, value in state.items():
        reason = next((why for pattern, why in spec.drops if pattern.fullmatch(key)), None)
        if reason is not None:
            dropped.setdefault(reason, []).append(key)
            count = _step_count(value) if reason == _NBT_DROP[1] else None
            if count is not None:
                counters[rename(key)] = count
            continue
        target = rename(key)
        if not is_our_key(target):
            leftover.append(key)
            continue
        if target in converted:
            raise ConversionError(f"two source keys map to {target}")
        renamed += target != key
        converted[target] = value
    if leftover:
        hint = ""
        if fmt == "jseg" and any(k.endswith(".num_batches_tracked") for k in leftover):
            hint = (" Jittor/JSeg checkpoints have no num_batches_tracked; a PyTorch checkpoint in "
                    "official naming needs --format official.")
        raise ConversionError(
            f"{len(leftover)} of {len(keys)} keys are neither SegNeXt keys of a {spec.source} "
            f"nor dropped on purpose: {_listing(leftover)}.{hint} Is this a checkpoint of "
            "another architecture or layout?")
    return converted, {"mapped": len(converted), "renamed": renamed, "dropped": dropped,
                       "num_batches_tracked": counters}


def _step_count(value):
    """A num_batches_tracked value as an int; None if it is not one integer (then it is
    dropped unrecorded: mmseg's BatchNorm does not use it, see to_mmseg_state_dict)."""
    value = value if hasattr(value, "dtype") else None
    if value is None or value.dtype.kind not in "iu" or value.size != 1:
        return None
    return int(value.reshape(()))


def to_mmseg_state_dict(state, num_batches_tracked=None):
    """Our flat state dict -> mmsegmentation 1.x's (the inverse of the "mmseg" format).

    The keys stay as they are (ours are mmseg's); after every BatchNorm's running_var comes
    its `num_batches_tracked`, an int64 scalar: the value in `num_batches_tracked` (key ->
    int, as convert_state_dict reports it and the converter keeps it in the meta), else 0.
    The value is only a step counter: mmseg's BatchNorm (momentum 0.1, as in every SegNeXt
    config) does not read it, in training or at eval, so 0 for weights trained here changes
    nothing; the recorded values make mmseg -> jseg -> mmseg give back identical tensors.

    Returns (mmseg_state, report), report = {"mapped": int, "recorded": int, "zero": int}
    (counters taken from `num_batches_tracked` / set to 0). Raises ConversionError listing
    keys that are not keys of our layout, and counters that belong to no BatchNorm.
    """
    if num_batches_tracked is not None and not isinstance(num_batches_tracked, dict):
        raise ConversionError("recorded num_batches_tracked values must be a dict of key -> "
                              f"int, got a {type(num_batches_tracked).__name__}")
    counters = dict(num_batches_tracked or {})
    leftover = [k for k in state if not is_our_key(k)]
    if leftover:
        hint = ""
        if any(k.endswith(".num_batches_tracked") or ".mlp.dwconv.dwconv." in k
               for k in leftover):
            hint = (" (num_batches_tracked or 'mlp.dwconv.dwconv.' keys: a PyTorch or Jittor/JSeg "
                    "checkpoint; convert it to ours with weights_convert/convert.py first)")
        raise ConversionError(f"{len(leftover)} of {len(state)} keys are not keys of our "
                              f"SegNeXt layout: {_listing(leftover)}{hint}")
    norms = [k[:-len("running_var")] for k in state if k.endswith(".running_var")]
    stray = [k for k in counters if not (k.endswith(".num_batches_tracked") and
                                         k[:-len("num_batches_tracked")] in norms)]
    bad = [k for k, v in counters.items()
           if isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if stray or bad:
        parts = ([f"{len(stray)} for no BatchNorm of the state dict ({_listing(stray)})"]
                 if stray else []) + \
            ([f"{len(bad)} not a non-negative int ({_listing(bad)})"] if bad else [])
        raise ConversionError("recorded num_batches_tracked values do not fit: " + "; ".join(parts))
    out, recorded = {}, 0
    for key, value in state.items():
        out[key] = value
        if key.endswith(".running_var"):
            nbt = key[:-len("running_var")] + "num_batches_tracked"
            recorded += nbt in counters
            out[nbt] = np.array(counters.get(nbt, 0), dtype=np.int64)
    return out, {"mapped": len(state), "recorded": recorded, "zero": len(norms) - recorded}


# ---------------------------------------------------------------------------
# Shapes: the full key -> shape table of a SegNeXt, and checks against it

def segnext_state_shapes(embed_dims, depths, mlp_ratios=(8, 8, 4, 4), head=None,
                         hidden_dims=None):
    """Every key of a SegNeXt state dict in our layout with its shape.

    head: None for the backbone alone, or dict(ham_channels=, channels=, num_classes=)
    (optionally bases=(S, D, R) for a model with rand_init=False); the head reads
    stages 2-4. hidden_dims overrides int(C * mlp_ratio) per stage.
    """
    shapes = {}

    def conv(name, cout, cin, kh, kw, bias=True):
        shapes[f"{name}.weight"] = (cout, cin, kh, kw)
        if bias:
            shapes[f"{name}.bias"] = (cout,)

    def norm(name, c, running=True):
        for part in ("weight", "bias") + (("running_mean", "running_var") if running else ()):
            shapes[f"{name}.{part}"] = (c,)

    c1 = embed_dims[0]
    conv("backbone.patch_embed1.proj.0", c1 // 2, 3, 3, 3)
    norm("backbone.patch_embed1.proj.1", c1 // 2)
    conv("backbone.patch_embed1.proj.3", c1, c1 // 2, 3, 3)
    norm("backbone.patch_embed1.proj.4", c1)
    for i in range(1, 4):
        conv(f"backbone.patch_embed{i + 1}.proj", embed_dims[i], embed_dims[i - 1], 3, 3)
        norm(f"backbone.patch_embed{i + 1}.norm", embed_dims[i])
    for i, (c, depth) in enumerate(zip(embed_dims, depths)):
        hidden = hidden_dims[i] if hidden_dims else int(c * mlp_ratios[i])
        for j in range(depth):
            p = f"backbone.block{i + 1}.{j}"
            norm(f"{p}.norm1", c)
            conv(f"{p}.attn.proj_1", c, c, 1, 1)
            sgu = f"{p}.attn.spatial_gating_unit"
            conv(f"{sgu}.conv0", c, 1, 5, 5)
            for n, k in ((0, 7), (1, 11), (2, 21)):
                conv(f"{sgu}.conv{n}_1", c, 1, 1, k)
                conv(f"{sgu}.conv{n}_2", c, 1, k, 1)
            conv(f"{sgu}.conv3", c, c, 1, 1)
            conv(f"{p}.attn.proj_2", c, c, 1, 1)
            norm(f"{p}.norm2", c)
            conv(f"{p}.mlp.fc1", hidden, c, 1, 1)
            conv(f"{p}.mlp.dwconv", hidden, 1, 3, 3)
            conv(f"{p}.mlp.fc2", c, hidden, 1, 1)
            shapes[f"{p}.layer_scale_1"] = (c,)
            shapes[f"{p}.layer_scale_2"] = (c,)
        norm(f"backbone.norm{i + 1}", c, running=False)
    if head is not None:
        ham, ch, ncls = head["ham_channels"], head["channels"], head["num_classes"]
        conv("decode_head.squeeze.conv", ham, sum(embed_dims[1:]), 1, 1, bias=False)
        norm("decode_head.squeeze.gn", ham, running=False)
        conv("decode_head.hamburger.ham_in.conv", ham, ham, 1, 1)
        conv("decode_head.hamburger.ham_out.conv", ham, ham, 1, 1, bias=False)
        norm("decode_head.hamburger.ham_out.gn", ham, running=False)
        conv("decode_head.align.conv", ch, ham, 1, 1, bias=False)
        norm("decode_head.align.gn", ch, running=False)
        conv("decode_head.conv_seg", ncls, ch, 1, 1)
        if head.get("bases") is not None:
            shapes["decode_head.hamburger.ham.bases"] = tuple(head["bases"])
    return shapes


# Every key of ours as a pattern: segnext_state_shapes of a model with all the parts, the
# block index and stage number of repeated parts generalised.
_GENERAL = ((re.compile(r"backbone\.block[1-4]\.\d+\."), r"backbone\.block[1-4]\.\d+\."),
            (re.compile(r"backbone\.patch_embed[2-4]\."), r"backbone\.patch_embed[2-4]\."),
            (re.compile(r"backbone\.norm[1-4]\."), r"backbone\.norm[1-4]\."))


def _key_pattern(key):
    for literal, general in _GENERAL:
        if (m := literal.match(key)):
            return general + re.escape(key[m.end():])
    return re.escape(key)


OUR_KEY_PATTERNS = tuple(re.compile(p) for p in dict.fromkeys(
    _key_pattern(k) for k in segnext_state_shapes(
        (2, 2, 2, 2), (1, 1, 1, 1), head=dict(ham_channels=2, channels=2, num_classes=2,
                                              bases=(1, 2, 2)))))


def _dim(state, key, axis, what):
    """One dimension of state[key]; values may be arrays or shape tuples."""
    if key not in state:
        raise ConversionError(f"cannot tell the {what}: {key} is missing")
    shape = state[key] if isinstance(state[key], tuple) else state[key].shape
    if len(shape) <= axis:
        raise ConversionError(f"cannot tell the {what}: {key} has shape {tuple(shape)}")
    return int(shape[axis])


def _architecture(state):
    """(embed_dims, depths, hidden_dims, head or None) read off a state dict in our layout."""
    embed_dims = [_dim(state, "backbone.patch_embed1.proj.3.weight", 0, "stage-1 width")]
    embed_dims += [_dim(state, f"backbone.patch_embed{i}.proj.weight", 0, f"stage-{i} width")
                   for i in range(2, 5)]
    depths = []
    for i in range(1, 5):
        found = {int(m.group(1)) for k in state
                 if (m := re.match(rf"backbone\.block{i}\.(\d+)\.", k))}
        depths.append(max(found) + 1 if found else 0)
    hidden = [_dim(state, f"backbone.block{i}.0.mlp.fc1.weight", 0, f"stage-{i} MLP width")
              if depths[i - 1] else 0 for i in range(1, 5)]
    head = None
    if any(k.startswith("decode_head.") for k in state):
        head = {"ham_channels": _dim(state, "decode_head.squeeze.conv.weight", 0, "ham channels"),
                "channels": _dim(state, "decode_head.align.conv.weight", 0, "head channels"),
                "num_classes": _dim(state, "decode_head.conv_seg.weight", 0, "class count")}
        bases = state.get("decode_head.hamburger.ham.bases")
        if bases is not None:
            head["bases"] = bases if isinstance(bases, tuple) else tuple(bases.shape)
    return tuple(embed_dims), tuple(depths), tuple(hidden), head


def infer_state_shapes(state):
    """The shapes a complete SegNeXt with this state dict's widths and depths would have.

    Checking a converted dict against these (`check_against_model`) finds missing
    blocks, stray keys and inconsistent widths without building a model.
    """
    embed_dims, depths, hidden, head = _architecture(state)
    return segnext_state_shapes(embed_dims, depths, head=head, hidden_dims=hidden)


def describe_architecture(state):
    """One line naming the variant and head of a state dict in our layout (values may
    be arrays or shape tuples)."""
    embed_dims, depths, hidden, head = _architecture(state)
    name = next((n for n, v in mscan_variants().items() if v == (embed_dims, depths)),
                "custom MSCAN")
    text = f"{name} (embed_dims {embed_dims}, depths {depths})"
    if head is None:
        return text + ", backbone only"
    return (text + f", LightHamHead with {head['num_classes']} classes, "
            f"ham_channels {head['ham_channels']}, channels {head['channels']}")


def check_against_model(converted, expected_shapes, what="the model"):
    """Raise ConversionError unless `converted` has exactly the keys and shapes expected.

    The error lists missing, unexpected and mis-shaped keys; when only the class
    count of decode_head.conv_seg differs, it says so in one sentence.
    """
    missing = [k for k in expected_shapes if k not in converted]
    unexpected = [k for k in converted if k not in expected_shapes]
    misshaped = {k: (tuple(converted[k].shape), tuple(expected_shapes[k]))
                 for k in expected_shapes
                 if k in converted and tuple(converted[k].shape) != tuple(expected_shapes[k])}
    if not (missing or unexpected or misshaped):
        return
    seg = misshaped.get("decode_head.conv_seg.bias")
    class_note = ""
    if seg is not None:
        class_note = (f"checkpoint has {seg[0][0]} classes, {what} has {seg[1][0]}: use the "
                      "config of the dataset the checkpoint was trained on")
        only_classes = not (missing or unexpected) and set(misshaped) <= {
            "decode_head.conv_seg.weight", "decode_head.conv_seg.bias"} and all(
            c[1:] == m[1:] for c, m in misshaped.values())
        if only_classes:
            raise ConversionError(class_note)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_listing(missing)})")
    if unexpected:
        hint = (" - a model trained with rand_init=False" if
                "decode_head.hamburger.ham.bases" in unexpected else "")
        parts.append(f"{len(unexpected)} unexpected ({_listing(unexpected)}{hint})")
    if misshaped:
        shown = sorted(misshaped.items())[:20]
        parts.append(f"{len(misshaped)} with the wrong shape (" + ", ".join(
            f"{k}: checkpoint {c} vs {m}" for k, (c, m) in shown)
            + (" ..." if len(misshaped) > 20 else "") + ")")
    message = f"the converted weights do not fit {what}: " + "; ".join(parts)
    try:
        ours, theirs = describe_architecture(converted), describe_architecture(expected_shapes)
        if ours != theirs:
            message = (f"the checkpoint is {ours} but {what} builds {theirs}. " + message)
    except ConversionError:
        pass  # one side is too incomplete to describe; the lists say what is wrong
    if class_note:
        message += f"; {class_note}"
    raise ConversionError(message)
