"""jseg.config: every shipped YAML validates, typos, bad types, out-of-range values and
keys that disagree fail with a hint, _base_ inheritance merges as documented, overrides
and dumps round-trip."""
import glob
import os
import textwrap

import pytest

from conftest import DEMO_CONFIG, TINY_OVERRIDES
from jseg.config import (DATASET_NUM_CLASSES, SCHEMA, Config, ConfigError, Field, MapOf,
                         describe_schema, dump_config, load_config)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALL_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
SEGNEXT_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "segnext", "*.yaml")))


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def leaf_paths(node=SCHEMA, prefix=()):
    """Every dotted key of the schema except inside free-key maps."""
    for key, child in node.children.items():
        if isinstance(child, Field):
            yield prefix + (key,)
        elif not isinstance(child, MapOf):
            yield from leaf_paths(child, prefix + (key,))


def nested(keys, value):
    for k in reversed(keys):
        value = {k: value}
    return value


def test_configs_exist_for_every_variant_and_dataset():
    names = {os.path.basename(p) for p in SEGNEXT_CONFIGS}
    for v in "tsbl":
        for d in ("ade20k-512x512", "cityscapes-1024x1024", "voc-aug-512x512",
                  "coco-stuff164k-512x512", "pascal-context59-480x480", "isaid-896x896"):
            assert f"segnext_mscan-{v}_{d}.yaml" in names


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    dumped = tmp_path / "resolved.yaml"
    dump_config(cfg, dumped)
    again = load_config(dumped)
    assert again == cfg, "dump -> load changed the config"


@pytest.mark.parametrize("variant,classes,channels,md_r,dpr", [
    ("t", 150, 256, 16, 0.1), ("s", 150, 256, 16, 0.1),
    ("b", 150, 512, 16, 0.1), ("l", 150, 1024, 16, 0.3)])
def test_variant_values_follow_mmseg(variant, classes, channels, md_r, dpr):
    cfg = load_config(os.path.join(ROOT, f"configs/segnext/segnext_mscan-{variant}_ade20k-512x512.yaml"))
    head = cfg.model.decode_head
    assert (head.num_classes, head.channels, head.ham_channels, head.ham.md_r) == \
        (classes, channels, channels, md_r)
    assert cfg.model.backbone.drop_path_rate == dpr
    assert head.in_channels == cfg.model.backbone.embed_dims[1:]
    assert cfg.optimizer.lr == 6e-5 and cfg.scheduler.warmup_iters == 1500
    assert cfg.train.max_iters == 160000 and cfg.data.batch_size == 16


def test_dataset_specific_values():
    city = load_config(os.path.join(ROOT, "configs/segnext/segnext_mscan-t_cityscapes-1024x1024.yaml"))
    assert city.model.test_cfg.mode == "slide"
    assert city.model.test_cfg.crop_size == [1024, 1024] and city.model.test_cfg.stride == [768, 768]
    assert city.model.decode_head.num_classes == 19 and city.data.batch_size == 8
    counts = {"coco-stuff164k-512x512": 171, "voc-aug-512x512": 21,
              "pascal-context59-480x480": 59, "isaid-896x896": 16}
    for name, n in counts.items():
        cfg = load_config(os.path.join(ROOT, f"configs/segnext/segnext_mscan-s_{name}.yaml"))
        assert cfg.model.decode_head.num_classes == n, (name, cfg.model.decode_head.num_classes, n)


@pytest.mark.parametrize("keys", list(leaf_paths()), ids=".".join)
def test_a_typo_anywhere_fails_with_a_suggestion(keys, tmp_path):
    typo = keys[-1] + keys[-1][-1]  # one letter doubled
    import yaml
    path = write(tmp_path / "bad.yaml", yaml.safe_dump(nested(keys[:-1] + (typo,), 1)))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    dotted = ".".join(keys[:-1] + (typo,))
    assert f"unknown key '{dotted}' in {path}" in msg, msg
    assert f"(did you mean '{keys[-1]}'?)" in msg, msg


def test_typo_error_reads_as_documented(tmp_path):
    path = write(tmp_path / "x.yaml", """
        model:
          backbone:
            embed_dim: [32, 64, 160, 256]
        """)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"unknown key 'model.backbone.embed_dim' in {path} "
                              "(did you mean 'embed_dims'?)")


def test_typo_in_a_base_names_the_base_file(tmp_path):
    base = write(tmp_path / "_base_" / "b.yaml", "train:\n  max_iter: 10\n")
    child = write(tmp_path / "c.yaml", "_base_: _base_/b.yaml\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.max_iter' in .*b\.yaml "
                                          r"\(did you mean 'max_iters'\?\)"):
        load_config(child)
    assert os.path.exists(base)


@pytest.mark.parametrize("text,key,expected", [
    ("train:\n  max_iters: 1k\n", "train.max_iters", "int"),
    ("model:\n  backbone:\n    depths: [3, 3, 5]\n", "model.backbone.depths", "list of int, length 4"),
    ("model:\n  test_cfg:\n    mode: sliding\n", "model.test_cfg.mode", "'whole' | 'slide'"),
    ("model:\n  decode_head:\n    align_corners: 1\n", "model.decode_head.align_corners", "bool"),
    ("train: 5\n", "train", "mapping"),
    ("seed: 1.5\n", "seed", "int or null"),
])
def test_wrong_types_name_file_key_and_expectation(tmp_path, text, key, expected):
    path = write(tmp_path / "t.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert f"'{key}' in {path}" in msg and expected in msg, msg


def test_base_inheritance_merges_dicts_and_replaces_lists(tmp_path):
    write(tmp_path / "base" / "a.yaml", """
        model:
          backbone: {depths: [1, 1, 1, 1], embed_dims: [8, 16, 32, 64]}
          decode_head: {num_classes: 5, in_channels: [16, 32, 64]}
        data: {type: custom, classes: [a, b, c, d, e]}
        optimizer:
          paramwise: {head: {lr_mult: 10.0}}
        """)
    write(tmp_path / "base" / "b.yaml", "train: {max_iters: 7}\nscheduler: {warmup_iters: 0}\n")
    child = write(tmp_path / "child.yaml", """
        _base_: [base/a.yaml, base/b.yaml]
        model:
          backbone: {depths: [2, 2, 2, 2]}
        train: {log_interval: 3}
        """)
    cfg = load_config(child)
    assert cfg.model.backbone.depths == [2, 2, 2, 2]            # list replaced
    assert cfg.model.backbone.embed_dims == [8, 16, 32, 64]     # sibling kept
    assert cfg.model.decode_head.num_classes == 5
    assert cfg.train.max_iters == 7 and cfg.train.log_interval == 3
    assert cfg.train.eval_interval == 16000                     # schema default
    assert cfg.optimizer.paramwise == {"head": {"lr_mult": 10.0, "decay_mult": 1.0}}
    assert cfg.name == "child" and cfg.work_dir == os.path.join("work_dirs", "child")


def test_later_base_wins(tmp_path):
    write(tmp_path / "a.yaml", "train: {max_iters: 1}\nscheduler: {warmup_iters: 0}\n")
    write(tmp_path / "b.yaml", "train: {max_iters: 2}\n")
    assert load_config(write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\n")).train.max_iters == 2


def test_circular_base_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match=r"circular _base_ .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml")


def test_missing_base_and_missing_file_are_errors(tmp_path):
    child = write(tmp_path / "c.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*nowhere\.yaml "
                                          r"\(the _base_ 'nowhere.yaml' of .*c\.yaml\)"):
        load_config(child)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_bad_yaml_and_non_mapping_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot parse .*bad\.yaml line \d+: "):
        load_config(write(tmp_path / "bad.yaml", "train:\n  max_iters: [1,\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="_base_ .* must be a path or a list"):
        load_config(write(tmp_path / "b.yaml", "_base_: 3\n"))


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    path = SEGNEXT_CONFIGS[0]
    cfg = load_config(path, overrides=["train.max_iters=20", "scheduler.warmup_iters=2",
                                       "model.backbone.depths=[1,1,1,1]",
                                       "optimizer.lr=1e-4", "seed=3", "work_dir=/tmp/x",
                                       "optimizer.paramwise.head.lr_mult=5"])
    assert cfg.train.max_iters == 20 and cfg.model.backbone.depths == [1, 1, 1, 1]
    assert cfg.optimizer.lr == 1e-4 and cfg.seed == 3 and cfg.work_dir == "/tmp/x"
    assert cfg.optimizer.paramwise.head.lr_mult == 5
    with pytest.raises(ConfigError, match=r"unknown key 'train.max_iter' in the command-line "
                                          r"override 'train.max_iter=5' \(did you mean 'max_iters'\?\)"):
        load_config(path, overrides=["train.max_iter=5"])
    with pytest.raises(ConfigError, match="wrong type for 'train.max_iters'.*expected int"):
        load_config(path, overrides=["train.max_iters=many"])
    with pytest.raises(ConfigError, match="must look like KEY=VALUE"):
        load_config(path, overrides=["train.max_iters"])


def test_scientific_notation_without_dot_is_a_float(tmp_path):
    cfg = load_config(write(tmp_path / "f.yaml", "optimizer: {lr: 6e-5, eps: 1e-8}\n"))
    assert cfg.optimizer.lr == 6e-5 and isinstance(cfg.optimizer.lr, float)


def test_config_attribute_access_and_copy():
    import copy
    cfg = load_config(SEGNEXT_CONFIGS[0])
    assert isinstance(cfg.model, Config) and cfg.model["backbone"] is cfg.model.backbone
    clone = copy.deepcopy(cfg)
    clone.train.max_iters = 1
    assert cfg.train.max_iters != 1
    with pytest.raises(AttributeError, match="no key 'nope'"):
        cfg.nope


def test_schema_documents_every_field():
    lines = describe_schema()
    assert len(lines) >= 60
    assert all("  # " in line and not line.endswith("# ") for line in lines)


# ---------------------------------------------------------------------------
# Range rules and keys that must agree: absurd values fail at load, in one line that names
# the dotted key(s), instead of crashing (or going silently wrong) later.

SLIDE_64 = ["model.test_cfg.mode=slide", "model.test_cfg.crop_size=[64,64]"]

ABSURD = {  # case -> (overrides of the demo config, keys the message must name)
    "batch_size_0": (["data.batch_size=0"], ["data.batch_size"]),
    "batch_size_negative": (["data.batch_size=-2"], ["data.batch_size"]),
    "num_classes_0": (["model.decode_head.num_classes=0"], ["model.decode_head.num_classes"]),
    "log_interval_0": (["train.log_interval=0"], ["train.log_interval"]),
    "checkpoint_interval_0": (["train.checkpoint_interval=0"], ["train.checkpoint_interval"]),
    "slide_stride_0": (SLIDE_64 + ["model.test_cfg.stride=[0,32]"], ["model.test_cfg.stride"]),
    "slide_stride_above_crop": (SLIDE_64 + ["model.test_cfg.stride=[96,32]"],
                                ["model.test_cfg.stride", "model.test_cfg.crop_size"]),
    "slide_without_windows": (["model.test_cfg.mode=slide"], ["model.test_cfg.crop_size"]),
    "std_0": (["data.std=[58.4,0,57.4]"], ["data.std"]),
    "crop_size_0": (["data.crop_size=[0,0]"], ["data.crop_size"]),
    "ratio_range_negative": (["data.ratio_range=[-0.5,2.0]"], ["data.ratio_range"]),
    "ratio_range_reversed": (["data.ratio_range=[2.0,0.5]"], ["data.ratio_range"]),
    "in_index_out_of_range": (["model.decode_head.in_index=[1,2,4]"],
                              ["model.decode_head.in_index"]),
    "in_index_twice": (["model.decode_head.in_index=[1,1,3]"], ["model.decode_head.in_index"]),
    "embed_dims_not_the_head": (["model.backbone.embed_dims=[8,16,32,64]"],
                                ["model.backbone.embed_dims", "model.decode_head.in_channels"]),
    "in_channels_too_few": (["model.decode_head.in_channels=[160,256]"],
                            ["model.decode_head.in_channels", "model.backbone.embed_dims"]),
    "class_weight_length": (["model.decode_head.class_weight=[1.0,2.0]"],
                            ["model.decode_head.class_weight", "model.decode_head.num_classes"]),
    "norm_groups_not_dividing": (["model.decode_head.norm_groups=7"],
                                 ["model.decode_head.norm_groups",
                                  "model.decode_head.ham_channels"]),
    "md_s_not_dividing": (["model.decode_head.ham.md_s=3"],
                          ["model.decode_head.ham.md_s", "model.decode_head.ham_channels"]),
    "ignore_index_a_class": (["model.decode_head.ignore_index=2"],
                             ["model.decode_head.ignore_index", "model.decode_head.num_classes"]),
    "num_classes_below_dataset": (["model.decode_head.num_classes=5"],
                                  ["model.decode_head.num_classes", "data.classes"]),
    "num_classes_of_another_dataset": (["data.type=cityscapes", "data.classes=null"],
                                       ["model.decode_head.num_classes", "data.type"]),
    "custom_without_classes": (["data.classes=null"], ["data.classes"]),
    "lr_negative": (["optimizer.lr=-1e-3"], ["optimizer.lr"]),
    "lr_nan": (["optimizer.lr=.nan"], ["optimizer.lr"]),
    "betas_1": (["optimizer.betas=[0.9,1.0]"], ["optimizer.betas"]),
    "lr_mult_negative": (["optimizer.paramwise.head.lr_mult=-1"],
                         ["optimizer.paramwise.head.lr_mult"]),
    "min_lr_above_lr": (["scheduler.min_lr=0.1"], ["scheduler.min_lr", "optimizer.lr"]),
    "max_iters_negative": (["train.max_iters=-1"], ["train.max_iters"]),
    "warmup_ratio_0": (["scheduler.warmup_ratio=0"], ["scheduler.warmup_ratio"]),
    "md_r_0": (["model.decode_head.ham.md_r=0"], ["model.decode_head.ham.md_r"]),
    "drop_path_rate_1": (["model.backbone.drop_path_rate=1.0"], ["model.backbone.drop_path_rate"]),
    "flip_prob_above_1": (["data.flip_prob=1.5"], ["data.flip_prob"]),
    "keep_checkpoints_negative": (["train.keep_checkpoints=-1"], ["train.keep_checkpoints"]),
}


@pytest.mark.parametrize("overrides,keys", list(ABSURD.values()), ids=list(ABSURD))
def test_absurd_values_fail_at_load_naming_the_keys(overrides, keys):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO_CONFIG, overrides)
    msg = str(err.value)
    missing = [k for k in keys if k not in msg]
    assert not missing and "\n" not in msg, f"keys {missing} not named in one line: {msg}"


def test_range_error_reads_as_documented(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO_CONFIG, ["data.batch_size=0"])
    want = "'data.batch_size' in the command-line override 'data.batch_size=0' must be >= 1, got 0"
    assert str(err.value) == want, f"{str(err.value)!r} != {want!r}"
    path = write(tmp_path / "r.yaml", "data:\n  crop_size: [512, 0]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    want = f"'data.crop_size' in {path} must have each entry >= 1, got [512, 0]"
    assert str(err.value) == want, f"{str(err.value)!r} != {want!r}"


def test_unknown_metric_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO_CONFIG, ["evaluation.metrics=[mIoU,mF1]"])
    want = ("wrong type for 'evaluation.metrics' in the command-line override "
            "'evaluation.metrics=[mIoU,mF1]': expected list of 'mIoU' | 'mDice' | 'mFscore', "
            "got list ['mIoU', 'mF1'] (entry 1 'mF1' is not 'mIoU' | 'mDice' | 'mFscore')")
    assert str(err.value) == want, f"{str(err.value)!r} != {want!r}"
    path = write(tmp_path / "m.yaml", "evaluation:\n  metrics: mDice\n")
    with pytest.raises(ConfigError, match=r"'evaluation.metrics' in .*m\.yaml: expected list"):
        load_config(path)
    cfg = load_config(DEMO_CONFIG, ["evaluation.metrics=[mIoU,mDice,mFscore]"])
    assert cfg.evaluation.metrics == ["mIoU", "mDice", "mFscore"], cfg.evaluation
    assert load_config(DEMO_CONFIG).evaluation == {"metrics": ["mIoU"], "confusion_matrix": True}


def test_evaluation_metric_names_are_the_metrics_module_s():
    from jseg.engine.metrics import METRICS
    choices = SCHEMA.children["evaluation"].children["metrics"].type.item.choices
    assert tuple(choices) == METRICS, (choices, METRICS)


def test_mismatch_error_names_both_keys_and_the_fix():
    with pytest.raises(ConfigError) as err:
        load_config(DEMO_CONFIG, ["model.decode_head.in_channels=[64,160,512]"])
    want = ("model.decode_head.in_channels [64, 160, 512] does not match model.backbone.embed_dims "
            "[32, 64, 160, 256] at in_index [1, 2, 3] (expected [64, 160, 256]) in "
            f"{DEMO_CONFIG} with its command-line overrides; "
            "set model.decode_head.in_channels=[64,160,256]")
    assert str(err.value) == want, f"{str(err.value)!r} != {want!r}"


@pytest.mark.parametrize("extra", [[], ["train.max_iters=2"],
                                   SLIDE_64 + ["model.test_cfg.stride=[64,64]"]],
                         ids=["tiny", "warm-up-only run", "stride equal to the crop"])
def test_edge_values_that_are_allowed(extra):
    cfg = load_config(DEMO_CONFIG, TINY_OVERRIDES + extra)  # the test suite's tiny model too
    warmup, max_iters = cfg.scheduler.warmup_iters, cfg.train.max_iters
    assert warmup <= max_iters, f"warmup_iters {warmup} > max_iters {max_iters}"


@pytest.mark.parametrize("kind", sorted(DATASET_NUM_CLASSES))
def test_num_classes_defaults_to_the_datasets(kind):
    base = {"cityscapes": "cityscapes_1024x1024"}.get(kind, kind)
    cfg = load_config(os.path.join(ROOT, "configs", "_base_", "datasets", f"{base}.yaml"))
    got, want = cfg.model.decode_head.num_classes, DATASET_NUM_CLASSES[kind]
    assert (cfg.data.type, got) == (kind, want), f"{kind}: num_classes {got} != {want}"


def test_class_count_table_agrees_with_the_data_layer():
    from jseg.data.palettes import CLASSES
    got = {kind: len(names) for kind, names in CLASSES.items()}
    assert got == DATASET_NUM_CLASSES, f"jseg.data {got} != jseg.config {DATASET_NUM_CLASSES}"
    choices = SCHEMA.children["data"].children["type"].type.choices
    assert set(choices) == set(DATASET_NUM_CLASSES) | {"custom"}, choices


def test_a_file_that_is_not_utf8_is_one_clear_error(tmp_path):
    path = tmp_path / "utf16.yaml"
    path.write_bytes(b"\xff\xfed\x00a\x00t\x00a\x00:\x00")  # UTF-16 with its byte-order mark
    with pytest.raises(ConfigError) as err:
        load_config(path)
    want = f"{path} is not UTF-8 text: byte 0xff at position 0 (line 1); save the file as UTF-8"
    assert str(err.value) == want, f"{str(err.value)!r} != {want!r}"
    child = write(tmp_path / "child.yaml", "_base_: utf16.yaml\n")
    with pytest.raises(ConfigError, match=r"utf16\.yaml \(the _base_ 'utf16.yaml' of "
                                          r".*child\.yaml\) is not UTF-8 text"):
        load_config(child)


def test_schema_description_shows_the_rules():
    lines = describe_schema()
    for want in ("data.batch_size: int (>= 1) = 16  # ",
                 "model.backbone.depths: list of int, length 4 (each >= 1) = [3, 3, 5, 2]  # ",
                 "scheduler.warmup_ratio: float (in (0, 1]) = 1e-06  # "):
        assert any(line.startswith(want) for line in lines), f"no line starts with {want!r}"


def test_dump_writes_through_the_atomic_writer(tmp_path, monkeypatch):
    import jseg.config.loading
    calls = []
    real = jseg.config.loading.atomic_write
    monkeypatch.setattr(jseg.config.loading, "atomic_write",
                        lambda path, mode: calls.append((str(path), mode)) or real(path, mode))
    cfg = load_config(DEMO_CONFIG)
    dump_config(cfg, tmp_path / "sub" / "resolved.yaml")
    want = [(str(tmp_path / "sub" / "resolved.yaml"), "w")]
    assert calls == want, f"{calls} != {want}"
    assert load_config(tmp_path / "sub" / "resolved.yaml") == cfg
    assert os.listdir(tmp_path / "sub") == ["resolved.yaml"], os.listdir(tmp_path / "sub")


def test_model_constructors_default_to_the_schema(tmp_path):
    """One default per fact: every constructor argument a config key sets defaults to the
    schema's value (an empty config resolves to the ADE20K defaults)."""
    import inspect
    from jseg.models import NMF2D, MSCAN, EncoderDecoder, Hamburger, LightHamHead

    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    model = load_config(str(empty)).model

    def defaults(cls):
        return {k: p.default for k, p in inspect.signature(cls).parameters.items()
                if p.default is not inspect.Parameter.empty}

    def as_schema(value):
        return list(value) if isinstance(value, tuple) else value

    pairs = [(MSCAN, model.backbone, {}), (LightHamHead, model.decode_head, {}),
             (NMF2D, model.decode_head.ham, {}), (EncoderDecoder, model.test_cfg,
                                                  {"test_mode": "mode"}),
             (Hamburger, model.decode_head, {})]
    differ = []
    for cls, section, renames in pairs:
        for arg, default in defaults(cls).items():
            key = renames.get(arg, arg)
            if key in section and as_schema(default) != section[key]:
                differ.append(f"{cls.__name__}({arg}={default!r}) vs schema {section[key]!r}")
    assert not differ, differ


def test_a_loaded_config_is_read_only():
    import pickle
    cfg = load_config(DEMO_CONFIG)
    for change in (lambda: setattr(cfg.train, "max_iters", 5),
                   lambda: cfg.train.__setitem__("max_iters", 5),
                   lambda: cfg.model.backbone.depths.append(1),
                   lambda: cfg.model.backbone.depths.__setitem__(0, 9),
                   lambda: cfg.data.update(batch_size=1)):
        with pytest.raises(TypeError, match="read-only"):
            change()
    assert cfg.train.max_iters == 400 and cfg.model.backbone.depths == [3, 3, 5, 2]
    again = pickle.loads(pickle.dumps(cfg))
    assert again == cfg and isinstance(again, type(cfg))
    with pytest.raises(TypeError, match="read-only"):
        again.seed = 1
    import copy
    editable = copy.deepcopy(cfg)  # (test_config_attribute_access_and_copy edits one too)
    editable.model.backbone.depths.append(1)
    assert cfg.model.backbone.depths == [3, 3, 5, 2]
