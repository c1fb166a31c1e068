"""Training: the callbacks that tune thresholds and write outputs, ``last.ckpt`` and exact resume, one run per folder."""
