"""Pure algorithms the phases share: models, losses, metrics, PEFT, parallelism, compression; no Ray, no MLflow."""
