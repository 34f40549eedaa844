"""YAML configs: `_base_` inheritance, one schema with defaults, validation, overrides.

    schema    every key a config may set (type, default, comment, range): read this first
    types     the schema's building blocks (Field, Section, MapOf, rules), ConfigError
    loading   YAML and `_base_`, validation, overrides, defaults, Config, dump / describe
    checks    keys that must agree with each other (head vs backbone, classes, slide, schedule)

    cfg = load_config("configs/segnext/segnext_mscan-t_ade20k-512x512.yaml",
                      overrides=["train.max_iters=2000", "data.batch_size=8"])
    cfg.model.decode_head.num_classes  # 150
"""
from .loading import Config, FrozenList, config_to_yaml, describe_schema, dump_config, load_config
from .schema import DATASET_NUM_CLASSES, SCHEMA
from .types import (AnyOf, Choice, ConfigError, Field, ListOf, MapOf, Optional, Section, above,
                    at_least, between)

__all__ = ["ConfigError", "Config", "FrozenList", "SCHEMA", "DATASET_NUM_CLASSES", "load_config",
           "dump_config", "config_to_yaml", "describe_schema", "Field", "Section", "MapOf",
           "ListOf", "Choice", "Optional", "AnyOf", "at_least", "above", "between"]
