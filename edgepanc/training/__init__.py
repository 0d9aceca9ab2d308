"""The training stage behind ``edgepanc train``.

One concept per module; the public entry point is :func:`edgepanc.training.runner.run_training`.

- ``config``: :class:`TrainConfig`, every CLI flag, and the identity a resume must match.
- ``dataset``: each case preprocessed once per run and kept in memory.
- ``sampling`` / ``augmentation``: class-balanced cases, lesion-heavy patch centres, one affine
  interpolation per patch plus intensity augmentation.
- ``losses``: batch soft Dice + cross-entropy, lesion-patch subtype cross-entropy.
- ``schedule``: linear warm-up, cosine decay; the teacher-forcing share per step.
- ``teacher``: reference lesion masks shifted, grown or shrunk for teacher forcing.
- ``loop``: :class:`Trainer` (AMP, clipping, thermal pauses, validation, checkpoints, bundle).
- ``epoch_plan``: which epochs run (epoch count, time budget, early stopping) and validate.
- ``train_state``: what the loop carries between epochs: counters, best score, history.
- ``run_checkpoints``: ``last.pt``, ``best.pt`` and the bundle of a run; resuming from them.
- ``validation``: the runtime's sliding window, scored on the original grid.
- ``head_refit``: after the last epoch, the subtype head refitted on the runtime's tiles.
- ``selection``: held-out selection cases that choose the checkpoint and the refit.
- ``lesion_classifier``: a forest on features of the predicted lesion (scikit-learn, fit only).
- ``checkpoint``, ``logs``, ``distributed``, ``kfold``, ``runner``.
"""
