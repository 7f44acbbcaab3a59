"""Ray Tune: YAML search spaces and training plans, ASHA, the best trial into the registry."""
