"""The trainer: DeepSpeed ZeRO over the megatron-core TP model, one loop for stage 1 (dense) and
stage 2 (ParScale), with schedules, checkpoints, exact resume, evaluation and metrics."""
