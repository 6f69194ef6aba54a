"""neox-pipeline: the library behind the pipeline (model, data, train, eval, registry, pipeline, runtime) and
the `neox` CLI. docs/architecture.md says who imports whom."""
