-- z_sem of the labelled slices, per model and version of its latents (`parts_hash`: sha256 of the sorted
-- part file names, as in latent_stats). A fit reads its labelled latents from here: slice ids are hashes, so
-- a few thousand labels among a million latents touch every row group, and reading them from the Parquet
-- decodes all of it. Filled by the pass over all latents that computes latent_stats (for every slice with a
-- label then) and by the first fit that meets labels imported since; a new version of the latents replaces
-- the model's rows. A cache: deleting its rows loses nothing.
CREATE TABLE labelled_latents (
    model_id   VARCHAR    NOT NULL,
    parts_hash VARCHAR    NOT NULL,
    slice_id   BIGINT     NOT NULL,
    z_sem      FLOAT[512] NOT NULL
);
