-- One row per `latentstore fit`: the hyperplane of a linear fracture classifier (G0 vs G2/G3) in a model's
-- z_sem space, with everything needed to score a latent again: the normalisation, the bootstrap refits
-- (uncertainty) and the out-of-distribution reference. Arrays, never pickles. Versions only grow.
-- distance(z) = normal . (z - z_mean) / z_std + bias  =  normal_raw . z + bias_raw
CREATE TABLE hyperplanes (
    hyperplane_version INTEGER   NOT NULL PRIMARY KEY, -- 1, 2, ... over the store
    model_id        VARCHAR   NOT NULL, -- the DAE whose latents were fitted
    classifier      VARCHAR   NOT NULL, -- logistic | svm
    c               DOUBLE    NOT NULL, -- inverse regularisation strength (scikit-learn's C)
    backend         VARCHAR   NOT NULL, -- scikit-learn | cuml
    label_query     VARCHAR   NOT NULL, -- the SQL predicate that selected the labels (--labels)
    label_hash      VARCHAR   NOT NULL, -- sha256 of the selected (slice_id, grade, fracture) rows: the label set's version
    n_labelled      INTEGER   NOT NULL, -- labelled latents that trained the classifier
    n_fractured     INTEGER   NOT NULL, -- of those, G2/G3 (or fracture = true without a grade)
    n_latents       INTEGER   NOT NULL, -- the model's latents in the store behind z_mean / z_std
    z_mean          FLOAT[]   NOT NULL, -- DiffAE's normalisation: per-dimension mean of the model's latents
    z_std           FLOAT[]   NOT NULL, -- ... and standard deviation
    normal          FLOAT[]   NOT NULL, -- unit normal in standardised space (points towards fracture)
    bias            DOUBLE    NOT NULL, -- offset in standardised space
    normal_raw      FLOAT[]   NOT NULL, -- the same hyperplane on raw z_sem
    bias_raw        DOUBLE    NOT NULL,
    boot_normals    FLOAT[][] NOT NULL, -- bootstrap refits (patients resampled): unit normals, standardised
    boot_biases     DOUBLE[]  NOT NULL,
    ood_mean        FLOAT[]   NOT NULL, -- out-of-distribution reference (standardised space): mean,
    ood_components  FLOAT[][] NOT NULL, -- top principal axes of the reference latents,
    ood_variances   DOUBLE[]  NOT NULL, -- their variances,
    ood_residual    DOUBLE    NOT NULL, -- mean variance off those axes (probabilistic PCA),
    ood_threshold   DOUBLE    NOT NULL, -- Mahalanobis distance above which a latent is flagged (held-out quantile)
    metrics         JSON      NOT NULL, -- train AUC, cross-validated AUC, counts per grade, seconds, ...
    created         TIMESTAMP NOT NULL  -- UTC
);
