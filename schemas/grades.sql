-- One row per (latent, calibration): a graded vertebra. Written by `latentstore grade` / `regrade`,
-- incrementally: only latents without a grade for the current calibration. The view `current_grades`
-- holds each model's grades under its latest calibration.
CREATE TABLE grades (
    slice_id            BIGINT    NOT NULL, -- slices.slice_id
    model_id            VARCHAR   NOT NULL, -- the DAE whose z_sem was graded
    hyperplane_version  INTEGER   NOT NULL,
    calibration_version INTEGER   NOT NULL,
    distance            FLOAT     NOT NULL, -- signed distance to the hyperplane (standardised z_sem; > 0: fracture side)
    score               FLOAT     NOT NULL, -- continuous Genant score (calibrated distance)
    score_sd            FLOAT     NOT NULL, -- its spread over the bootstrap hyperplanes (uncertainty)
    grade               TINYINT   NOT NULL, -- round(score) clipped to 0..3
    ood                 BOOLEAN   NOT NULL, -- z_sem unlike the reference latents: read the grade with care
    ood_distance        FLOAT     NOT NULL, -- Mahalanobis distance to the reference (threshold in hyperplanes)
    run_id              VARCHAR   NOT NULL, -- runs.run_id of the grade / regrade run
    graded_at           TIMESTAMP NOT NULL  -- UTC
);
