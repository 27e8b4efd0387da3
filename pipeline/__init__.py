"""ParScale training: config, data, model, distributed training, checkpoints, jobs and the CLI."""

from .utils.known_warnings import quiet_known_warnings

quiet_known_warnings()
