-- One row per rejected input: a file, a scan or a single vertebra level that a run could not use.
-- The run goes on with the rest; `latentstore sql "SELECT reason, count(*) FROM errors GROUP BY 1"`.
CREATE TABLE errors (
    run_id  VARCHAR   NOT NULL, -- the run that met the problem (runs.run_id)
    source  VARCHAR   NOT NULL, -- pseudonym "file-<16 hex>" of the file or series folder (`latentstore locate`)
    scan_id VARCHAR,            -- the scan's pseudonym, when known
    level   SMALLINT,           -- the VerSe label number when only one vertebra was rejected, else NULL
    stage   VARCHAR   NOT NULL, -- where it failed: "scan", "load", "cut", "publish", ...
    reason  VARCHAR   NOT NULL, -- one readable line; never patient data
    time    TIMESTAMP NOT NULL, -- UTC, when it was recorded
    seq     INTEGER             -- the row's number within its run (journal order): loads are exactly once
);
