-- One row per rejected input: a file, a scan or a single vertebra level that a run could not use.
-- The run goes on with the rest; `latentstore sql "SELECT reason, count(*) FROM errors GROUP BY 1"`.
CREATE TABLE errors (
    run_id  VARCHAR   NOT NULL, -- the run that met the problem (runs.run_id)
    source  VARCHAR   NOT NULL, -- the file or DICOM series folder, relative to the archive root
    scan_id VARCHAR,            -- the scan it belongs to, when known
    level   SMALLINT,           -- the VerSe label number when only one vertebra was rejected, else NULL
    stage   VARCHAR   NOT NULL, -- where it failed: "scan", "load", "cut", "publish", ...
    reason  VARCHAR   NOT NULL, -- one readable line; never patient data
    time    TIMESTAMP NOT NULL  -- UTC, when it was recorded
);
