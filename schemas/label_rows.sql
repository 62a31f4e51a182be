-- Every label row of every import (history). The view `labels` holds the current ones: the latest
-- import of each source. Scans are pseudonyms (the same HMAC ingest uses): raw names are never stored.
CREATE TABLE label_rows (
    import_id   VARCHAR   NOT NULL, -- label_imports.import_id
    source      VARCHAR   NOT NULL, -- label_imports.source
    scan_id     VARCHAR   NOT NULL, -- slices.scan_id (pseudonym)
    level       SMALLINT  NOT NULL, -- VerSe label number
    level_name  VARCHAR   NOT NULL, -- "L1"
    grade       SMALLINT,           -- Genant 0-3; NULL when the source gives only fracture yes/no
    fracture    BOOLEAN   NOT NULL, -- as given, else grade >= 1 (Genant counts G1 as a mild fracture)
    height_loss DOUBLE,             -- fraction, when the source gives it (synth ground truth)
    split       VARCHAR,            -- train | val | test, when the source gives it
    line        INTEGER   NOT NULL  -- line (or entry) of the row in the file
);
