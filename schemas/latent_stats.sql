-- The reference statistics of one model's latents in the store, computed once per version of the latents
-- (the set of published part files, whose names are content hashes) and reused by every `fit` until new
-- latents are published: DiffAE's normalisation and the out-of-distribution reference (see hyperplanes.sql).
CREATE TABLE latent_stats (
    model_id       VARCHAR   NOT NULL,
    parts_hash     VARCHAR   NOT NULL, -- sha256 of the sorted part file names of latents/model_id=<id>/
    n_latents      INTEGER   NOT NULL,
    z_mean         FLOAT[]   NOT NULL,
    z_std          FLOAT[]   NOT NULL,
    ood_mean       FLOAT[]   NOT NULL,
    ood_components FLOAT[][] NOT NULL,
    ood_variances  DOUBLE[]  NOT NULL,
    ood_residual   DOUBLE    NOT NULL,
    ood_threshold  DOUBLE    NOT NULL,
    seconds        DOUBLE    NOT NULL, -- what computing them took
    created        TIMESTAMP NOT NULL
);
