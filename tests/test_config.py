"""jseg.config: every shipped YAML validates, typos and bad types fail with a hint,
_base_ inheritance merges as documented, overrides and dumps round-trip."""
import glob
import os
import textwrap

import pytest

from jseg.config import (SCHEMA, Config, ConfigError, Field, MapOf, describe_schema,
                         dump_config, load_config)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
          decode_head: {num_classes: 5}
        optimizer:
          paramwise: {head: {lr_mult: 10.0}}
        """)
    write(tmp_path / "base" / "b.yaml", "train: {max_iters: 7}\n")
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
    write(tmp_path / "a.yaml", "train: {max_iters: 1}\n")
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
    cfg = load_config(path, overrides=["train.max_iters=20", "model.backbone.depths=[1,1,1,1]",
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
