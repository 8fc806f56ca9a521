"""Thin torch trainer on the shards (THA1 networks). The only subpackage that imports torch.

Modules (each imports torch; this package file does not):

* :mod:`mmdsynth.train.data`: ``ShardDataset`` over ``open_split``, the resumable
  ``StepBatchSampler``, ``make_loader``, ``to_float`` / ``to_uint8`` (value conventions).
* :mod:`mmdsynth.train.models`: ``FaceMorpher``, ``TwoAlgoFaceRotator``, ``Combiner``,
  ``ModelConfig`` and the ``tha1`` / ``tiny`` presets.
* :mod:`mmdsynth.train.metrics`: L1, RMSE, PSNR, SSIM; the VGG16 perceptual loss.
* :mod:`mmdsynth.train.config`: the TOML configuration, key by key.
* :mod:`mmdsynth.train.trainer`: ``Trainer`` (checkpoints, resume, validation, DDP),
  ``evaluate_checkpoint``.
* :mod:`mmdsynth.train.checkpoint`: the checkpoint format, atomic writes.
* :mod:`mmdsynth.train.infer`: THA1 input checks and the ``Poser`` chain.
* :mod:`mmdsynth.train.bench`: ``mmdsynth bench train``.

``python -m mmdsynth.train CONFIG.toml`` is ``mmdsynth train`` (for torchrun).
"""
