"""The offline pipeline: generation, feature tables, fitting, calibration, export, policy, evaluation."""
