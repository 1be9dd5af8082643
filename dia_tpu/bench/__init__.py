"""`dia-tpu bench`: speed measured against the device's own limits: training steps (`train`), speech generation
(`generate`); the limits themselves, measured in the same process (`limits`)."""
