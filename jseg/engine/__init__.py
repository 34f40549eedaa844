"""Training and evaluation.

    trainer     train: the prepare step and the loop
    runlog      the run's log and metrics.jsonl, the loop's meter
    stop        SIGTERM / SIGINT: stop after the step with a checkpoint
    resume      the resumed checkpoint's config against today's; the run's seed and lineage
    workdir     one run per work dir (lock), checkpoint names and pruning
    optim       AdamW parameter groups, the lr schedule, gradient clipping, AdamW state
    amp         mixed precision (dynamic loss scaling)
    evaluator   predictions per image, evaluation over a split, NMF seed spread
    metrics     IoU / Dice / F-score from a confusion matrix, tables
    confusion   the confusion matrix as .npy and a normalised .png
    tensorboard TensorBoard event files (tensorboardX)
"""
