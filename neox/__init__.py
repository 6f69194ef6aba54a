"""neox-pipeline: the library behind the pipeline (model, data, train, eval, registry, pipeline, runtime) and
the `neox` CLI. docs/architecture.md says who imports whom."""

import os

# A local Ray has no dashboard, so no State API: Ray Train's placement-group cleaner then warns every second
# that it cannot ask whether the controller lives (it has nothing to clean up there). Ray's documented log filter
# drops those lines where they are printed, in the driver; it is read when Ray is imported, hence here. (A worker
# setup hook that quieted the logger instead cost ~1 s per Ray worker start: no prestarted workers.)
os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", "Failed to query Ray Train Controller actor state")
