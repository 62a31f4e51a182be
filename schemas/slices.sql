-- One row per vertebra: a 96x96 sagittal CT slice centred on the vertebral body, 1 mm pixels.
-- Written by `latentstore ingest` (Parquet dataset `slices/`, one part file per scan named by
-- content_hash + slicing_hash; `slices/_staging/` is never read); read by train, encode and `slices show`.
CREATE TABLE slices (
    slice_id      BIGINT      NOT NULL, -- stable 63-bit id: hash(content_hash, level, slicing_hash); also the FAISS id
    scan_id       VARCHAR     NOT NULL, -- pseudonym "scan-<16 hex>": HMAC(salt, site, raw scan name); `latentstore locate` maps it back
    patient_key   VARCHAR     NOT NULL, -- HMAC(salt, site, patient identifier); never the identifier itself
    site          VARCHAR     NOT NULL, -- the archive's site (--site, else derived once per archive): part of both keys
    level         SMALLINT    NOT NULL, -- VerSe label number (20 = L1)
    level_name    VARCHAR     NOT NULL, -- "L1"
    source_uri    VARCHAR     NOT NULL, -- pseudonym "file-<16 hex>" of the CT file or DICOM series folder (never a path)
    source_format VARCHAR     NOT NULL, -- "nifti" | "dicom"
    content_hash  VARCHAR     NOT NULL, -- sha256 of the CT file; DICOM: of its files' sha256 digests (ScanSource.content_hash)
    centroid_mm   DOUBLE[3]   NOT NULL, -- vertebral-body centroid, world RAS+ coordinates in mm
    spacing_mm    DOUBLE[3]   NOT NULL, -- voxel spacing of the source volume in mm, array-axis order
    slicing       VARCHAR     NOT NULL, -- slicing parameters as JSON (spacing, size, thickness, ...)
    slicing_hash  VARCHAR     NOT NULL, -- sha256 of `slicing`, part of slice_id
    image         SMALLINT[9216] NOT NULL -- 96x96 HU, row-major; row 0 superior, column 0 anterior
);
