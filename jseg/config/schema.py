"""Every key a config may set: its type, default, one-line comment and range rule.

This is the one source of truth for configs: `load_config` validates against it and fills
its defaults, `describe_schema` prints it. Model keys mirror the constructor arguments of
jseg.models; each nested Section is a dotted prefix (model.backbone.depths, ...).
"""
from .types import (AnyOf, Choice, Field, ListOf, MapOf, Optional, Section, above, at_least,
                    between)

__all__ = ["SCHEMA", "DATASET_NUM_CLASSES"]

_PAIR = ListOf(int, 2)
_STAGES = 4  # MSCAN has four stages
_DROP_RATE = between(0, 1, "[)")  # 1 would drop everything

# Class counts of the dataset kinds (`data.type`); "custom" takes len(data.classes).
# The names are in jseg.data.palettes.CLASSES (config, the bottom layer, does not import
# jseg.data; tests/config/test_config.py checks that the two agree).
DATASET_NUM_CLASSES = {"ade20k": 150, "cityscapes": 19, "voc_aug": 21, "coco_stuff164k": 171,
                       "pascal_context59": 59, "isaid": 16}

SCHEMA = Section(
    "root",
    name=Field(Optional(str), None, "run name; null means the config file's name without .yaml"),
    work_dir=Field(Optional(str), None, "output folder; null means work_dirs/<name>"),
    seed=Field(Optional(int), None, "global random seed (weights, data order, NMF bases); null: not seeded"),
    device=Field(Choice("auto", "cpu", "cuda"), "auto", "auto: GPU when a usable one is present, else CPU"),
    # ---- model ---------------------------------------------------
    model=Section(
        "the segmentor",
        # ---- model.backbone --------------------------------------
        backbone=Section(
            "MSCAN encoder",
            type=Field(Choice("MSCAN"), "MSCAN", "encoder class"),
            in_channels=Field(int, 3, "input image channels", at_least(1)),
            embed_dims=Field(ListOf(int, _STAGES), [32, 64, 160, 256],
                             "channels of the four stages", at_least(1)),
            depths=Field(ListOf(int, _STAGES), [3, 3, 5, 2], "blocks per stage", at_least(1)),
            mlp_ratios=Field(ListOf(AnyOf(int, float), _STAGES), [8, 8, 4, 4],
                             "MLP hidden width / stage width", above(0)),
            drop_rate=Field(float, 0.0, "dropout inside the MLPs", _DROP_RATE),
            drop_path_rate=Field(float, 0.1, "stochastic depth at the last block (linear from 0)",
                                 _DROP_RATE),
            pretrained=Field(Optional(str), None,
                             "backbone weights: a file converted by weights_convert (imagenet "
                             "format, or a segmentor's backbone.* keys), zoo:mscan_t/s/b/l or a "
                             "URL; every MSCAN tensor must match unless pretrained_strict is "
                             "false"),
            pretrained_strict=Field(bool, True,
                                    "false: start training even when the pretrained file "
                                    "does not cover every MSCAN tensor (the rest stay random)"),
        ),
        # ---- model.decode_head -----------------------------------
        decode_head=Section(
            "LightHamHead decoder",
            type=Field(Choice("LightHamHead"), "LightHamHead", "decoder class"),
            in_channels=Field(ListOf(int), [64, 160, 256],
                              "channels of the selected stages: embed_dims[i] for i in in_index",
                              at_least(1)),
            in_index=Field(ListOf(int), [1, 2, 3], "which backbone stages feed the head (0-based)",
                           between(0, _STAGES, "[)")),
            channels=Field(int, 256, "width after `align`, input of conv_seg", at_least(1)),
            ham_channels=Field(int, 256, "width of squeeze and the Hamburger", at_least(1)),
            num_classes=Field(Optional(int), None,
                              "number of classes (logit channels); null: the dataset's "
                              "(len(data.classes), else the count of data.type)", at_least(1)),
            dropout_ratio=Field(float, 0.1, "channel-wise dropout before conv_seg", _DROP_RATE),
            norm_groups=Field(int, 32, "GroupNorm groups in squeeze / ham_out / align; divides "
                                       "ham_channels and channels", at_least(1)),
            align_corners=Field(bool, False, "bilinear resize convention"),
            ignore_index=Field(int, 255, "label value ignored by the loss and metrics; "
                                         "not a class id"),
            loss_weight=Field(float, 1.0, "weight of the cross-entropy loss", at_least(0)),
            class_weight=Field(Optional(ListOf(float)), None,
                               "per-class loss weights, length num_classes; null: all 1",
                               at_least(0)),
            # ---- model.decode_head.ham ---------------------------
            ham=Section(
                "NMF2D matrix decomposition",
                md_s=Field(int, 1, "number of groups S the channels are split into; divides "
                                   "ham_channels", at_least(1)),
                md_r=Field(int, 16, "rank R of the factorisation", at_least(1)),
                train_steps=Field(int, 6, "multiplicative-update steps in training", at_least(1)),
                eval_steps=Field(int, 7, "multiplicative-update steps in evaluation", at_least(1)),
                inv_t=Field(AnyOf(int, float), 100, "softmax temperature (upstream forces it to 1)",
                            above(0)),
                rand_init=Field(bool, True, "fresh random bases every forward (upstream); "
                                            "false: one fixed basis"),
                grad_mode=Field(Choice("full", "one_step"), "full",
                                "full: gradients through every NMF step (mmseg 1.x, official); "
                                "one_step: steps under no-grad (Jittor/JSeg / HamNet)"),
            ),
        ),
        # ---- model.test_cfg --------------------------------------
        test_cfg=Section(
            "inference",
            mode=Field(Choice("whole", "slide"), "whole", "whole image or sliding window"),
            crop_size=Field(Optional(_PAIR), None, "slide window (h, w)", at_least(1)),
            stride=Field(Optional(_PAIR), None, "slide step (h, w), at most crop_size",
                         at_least(1)),
            tta_ratios=Field(ListOf(float), [0.5, 0.75, 1.0, 1.25, 1.5, 1.75],
                             "test-time augmentation scales (with --tta)", above(0)),
            tta_flip=Field(bool, True, "add horizontal flips in test-time augmentation"),
        ),
    ),
    # ---- data ----------------------------------------------------
    data=Section(
        "dataset, augmentation and loading",
        type=Field(Choice(*DATASET_NUM_CLASSES, "custom"), "ade20k", "dataset kind"),
        data_root=Field(str, "data/ade/ADEChallengeData2016", "dataset folder"),
        classes=Field(Optional(ListOf(str)), None, "class names (custom); null: the dataset's own"),
        palette=Field(Optional(ListOf(ListOf(int, 3))), None, "RGB colour per class; null: the dataset's own"),
        img_suffix=Field(Optional(str), None, "image file suffix; null: the dataset's own"),
        seg_map_suffix=Field(Optional(str), None, "label file suffix; null: the dataset's own"),
        reduce_zero_label=Field(Optional(bool), None,
                                "label 0 -> 255 and others -1; null: the dataset's own"),
        # ---- data.train ------------------------------------------
        train=Section(
            "training split",
            img_dir=Field(str, "images/training", "images, relative to data_root"),
            ann_dir=Field(AnyOf(str, ListOf(str)), "annotations/training",
                          "labels, relative to data_root; a list pairs with a list of splits"),
            split=Field(Optional(AnyOf(str, ListOf(str))), None,
                        "file(s) listing sample names; null: every image in img_dir"),
        ),
        # ---- data.val --------------------------------------------
        val=Section(
            "validation split",
            img_dir=Field(str, "images/validation", "images, relative to data_root"),
            ann_dir=Field(Optional(str), "annotations/validation",
                          "labels, relative to data_root; null: unlabelled images (e.g. a "
                          "benchmark's test split): --task test writes predictions, no metrics"),
            split=Field(Optional(AnyOf(str, ListOf(str))), None,
                        "file(s) listing sample names; null: every image in img_dir"),
        ),
        batch_size=Field(int, 16, "global training batch (split across MPI ranks)", at_least(1)),
        num_workers=Field(int, 2, "data loading worker processes", at_least(0)),
        on_bad_sample=Field(Choice("fail", "skip"), "fail", "a corrupt training sample stops the run or is skipped"),
        img_scale=Field(_PAIR, [2048, 512],
                        "training resize scale (long, short) before ratio_range", at_least(1)),
        ratio_range=Field(ListOf(float, 2), [0.5, 2.0], "random rescale range [low, high]",
                          above(0)),
        crop_size=Field(_PAIR, [512, 512], "training crop (h, w)", at_least(1)),
        cat_max_ratio=Field(float, 0.75, "a crop may not be more than this share one class",
                            between(0, 1, "(]")),
        flip_prob=Field(float, 0.5, "horizontal flip probability", between(0, 1)),
        photometric_distortion=Field(bool, True, "random brightness/contrast/saturation/hue"),
        mean=Field(ListOf(float, 3), [123.675, 116.28, 103.53], "RGB mean"),
        std=Field(ListOf(float, 3), [58.395, 57.12, 57.375], "RGB std", above(0)),
        to_rgb=Field(bool, True, "convert the BGR image read by OpenCV to RGB"),
        test_scale=Field(_PAIR, [2048, 512], "test resize scale (long, short)", at_least(1)),
        test_keep_ratio=Field(bool, True, "keep aspect ratio when resizing for test"),
        size_divisor=Field(Optional(int), 32, "make test inputs a multiple of this; null: no",
                           at_least(1)),
        size_divisor_mode=Field(Choice("pad", "resize"), "pad",
                                "pad (mmseg 1.x) or resize (official, Jittor/JSeg) to "
                                "size_divisor"),
    ),
    # ---- optimizer -----------------------------------------------
    optimizer=Section(
        "AdamW",
        type=Field(Choice("adamw"), "adamw", "optimizer"),
        lr=Field(float, 6e-5, "base learning rate", above(0)),
        betas=Field(ListOf(float, 2), [0.9, 0.999], "Adam betas", between(0, 1, "[)")),
        eps=Field(float, 1e-8, "Adam epsilon", above(0)),
        weight_decay=Field(float, 0.01, "decoupled weight decay", at_least(0)),
        paramwise=MapOf(
            Section("multipliers for parameters whose name contains the key",
                    lr_mult=Field(float, 1.0, "learning-rate multiplier", at_least(0)),
                    decay_mult=Field(float, 1.0, "weight-decay multiplier", at_least(0))),
            # mmseg's SegNeXt configs also list pos_block (decay_mult 0), a PVT key that
            # matches no MSCAN parameter; it is left out
            {"norm": {"decay_mult": 0.0}, "head": {"lr_mult": 10.0}},
            "name substring -> {lr_mult, decay_mult}; longest key wins"),
        grad_clip=Field(Optional(float), None, "clip the gradient norm to this; null: no clipping",
                        above(0)),
    ),
    # ---- scheduler -----------------------------------------------
    scheduler=Section(
        "linear warm-up then poly decay, by iteration",
        warmup_iters=Field(int, 1500, "warm-up length; 0: no warm-up; longer than "
                           "train.max_iters: the run only warms up",
                           at_least(0)),
        # (0, 1]: mmengine's LinearLR, which the warm-up follows, refuses factors above 1 and
        # divides by zero at 0
        warmup_ratio=Field(float, 1e-6, "lr factor at iteration 0", between(0, 1, "(]")),
        power=Field(float, 1.0, "poly exponent", at_least(0)),
        min_lr=Field(float, 0.0, "lr at the end, at most optimizer.lr", at_least(0)),
    ),
    # ---- train ---------------------------------------------------
    train=Section(
        "training loop",
        max_iters=Field(int, 160000, "training iterations", at_least(1)),
        log_interval=Field(int, 50, "iterations between log lines", at_least(1)),
        eval_interval=Field(int, 16000, "iterations between evaluations; 0: only at the end",
                            at_least(0)),
        checkpoint_interval=Field(int, 16000, "iterations between checkpoints", at_least(1)),
        keep_checkpoints=Field(int, 3, "how many recent checkpoints to keep; 0: keep every one",
                               at_least(0)),
        amp=Field(bool, False, "mixed precision: fp16 compute, fp32 weights, dynamic loss "
                  "scaling (CUDA only; see jseg/engine/amp.py)"),
        tensorboard=Field(bool, False, "also write TensorBoard event files to "
                          "work_dir/tensorboard: losses, lr, metrics, per-class values and "
                          "sample predictions (needs tensorboardX; jseg/engine/tensorboard.py)"),
        tensorboard_samples=Field(int, 4, "validation images drawn (image | label | "
                                  "prediction) into TensorBoard per evaluation", at_least(0)),
    ),
    # ---- evaluation ----------------------------------------------
    evaluation=Section(
        "metrics of --task val / test and of the evaluations during training",
        # the names of mmseg's IoUMetric(iou_metrics=...); jseg.engine.metrics.METRICS
        metrics=Field(ListOf(Choice("mIoU", "mDice", "mFscore")), ["mIoU"],
                      "metrics in the table, the summary and metrics.jsonl: mIoU (IoU, Acc; "
                      "always there), mDice (Dice), mFscore (Fscore, Precision, Recall)"),
        confusion_matrix=Field(bool, True,
                               "write the confusion matrix (counts, .npy) and its row-"
                               "normalised heat map (.png) into work_dir: "
                               "confusion_matrix.{npy,png} for val / test, "
                               "confusion_matrix_iter_<8-digit iteration>.* in training"),
    ),
)
