-- One row per (slice, model): the semantic latent z_sem of a stored slice under one DAE.
-- Written by `latentstore encode` (Parquet dataset `latents/model_id=<id>/`, Hive-partitioned by model;
-- file metadata: model_id, preprocess_hash); the catalog's view `latents` adds the `model_id` column.
CREATE TABLE latents (
    slice_id BIGINT     NOT NULL, -- the slice (slices.slice_id), also the FAISS id
    z_sem    FLOAT[512] NOT NULL  -- the semantic encoder's output, float32
);
