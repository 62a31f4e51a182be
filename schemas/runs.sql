-- One row per run of a stage (ingest, encode, regrade, ...): who ran what, when, and what came of it.
-- Written only by the catalog writer (one process at a time, `catalog.lock`). A killed run keeps
-- status "running" (finished NULL) until the next run of its stage takes the stage lock and marks it "killed".
CREATE TABLE runs (
    run_id    VARCHAR   NOT NULL PRIMARY KEY, -- "<stage>-<UTC yyyymmddThhmmss>-<8 hex>", also the staging folder name
    stage     VARCHAR   NOT NULL,             -- "ingest", later "encode", "regrade", ...
    started   TIMESTAMP NOT NULL,             -- UTC
    finished  TIMESTAMP,                      -- UTC; NULL while running or after a crash
    status    VARCHAR   NOT NULL,             -- "running" | "ok" | "partial" (some inputs rejected) | "failed" | "killed"
    args      JSON      NOT NULL,             -- the run's settings (ingest: site, address, workers, slicing; never a path)
    counts    JSON                            -- stage summary: scans seen/ingested/skipped, slices, errors
);
