"""The training stage: sampling, augmentation, losses, the loop, checkpoints, thermal pauses."""
