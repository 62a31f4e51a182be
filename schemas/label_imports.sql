-- One row per imported label file (`latentstore labels import`): what was read, from where, when.
-- A file whose bytes and source were imported before is not imported again (same file_sha256 + source).
CREATE TABLE label_imports (
    import_id   VARCHAR   NOT NULL PRIMARY KEY, -- "labels-<UTC yyyymmddThhmmss>-<8 hex>"
    source      VARCHAR   NOT NULL,             -- --source NAME (default: the file's stem): one label set
    format      VARCHAR   NOT NULL,             -- verse-wide | grades-json | manifest | long (synth ground_truth.csv is long)
    file_sha256 VARCHAR   NOT NULL,             -- of the file's bytes: the version
    imported_at TIMESTAMP NOT NULL,             -- UTC
    rows        INTEGER   NOT NULL,             -- label rows stored
    matched     INTEGER   NOT NULL,             -- of those, rows whose scan and level are in the store's slices now
    rejected    INTEGER   NOT NULL,             -- malformed rows, named with their line numbers in `rejects`
    rejects     JSON      NOT NULL              -- ["line 7: grade 7 outside 0-3", ...] (first 100)
);
