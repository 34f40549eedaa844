"""Data: the benchmark datasets and a custom kind, mmseg-style transforms, loaders, demo data.

    from jseg.data import build_dataset, build_train_loader, build_val_loader
    loader = build_train_loader(cfg)            # cfg from jseg.config.load_config
    for batch in loader.iter_from(start_iter):  # {"img": (n,3,H,W) f32, "seg": (n,H,W) i32, ...}
        ...
"""
from .datasets import (DATASETS, DataError, DatasetInfo, SegDataset, build_dataset,
                       dataset_settings, read_image, read_label)
from .loader import (TrainLoader, ValLoader, build_train_loader, build_val_loader,
                     get_dist_info, sample_rng)
from .palettes import CLASSES, DEMO_CLASSES, DEMO_PALETTE, PALETTES, colorize, overlay
from .transforms import (Compose, Normalize, Pad, PhotoMetricDistortion, RandomCrop, RandomFlip,
                         RandomResize, Resize, ResizeToMultiple, build_test_pipeline,
                         build_train_pipeline, build_tta_pipelines, restore_prediction)

__all__ = [
    "DATASETS", "DataError", "DatasetInfo", "SegDataset", "build_dataset", "dataset_settings",
    "read_image", "read_label",
    "TrainLoader", "ValLoader", "build_train_loader", "build_val_loader", "get_dist_info",
    "sample_rng",
    "CLASSES", "PALETTES", "DEMO_CLASSES", "DEMO_PALETTE", "colorize", "overlay",
    "Compose", "Normalize", "Pad", "PhotoMetricDistortion", "RandomCrop", "RandomFlip",
    "RandomResize", "Resize", "ResizeToMultiple", "build_train_pipeline", "build_test_pipeline",
    "build_tta_pipelines", "restore_prediction",
]
