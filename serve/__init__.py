"""HTTP serving on Ray Serve: `serve.app` (deployments, FastAPI app, `build_app`), `serve.models`
(registry version → predictor, pure PyTorch), `serve.schemas`, `serve.breaker`, `serve.client`
and `serve.cli` (`tunestack serve`). Deploy with `tunestack serve` or `serve run serve/config.yaml`."""
