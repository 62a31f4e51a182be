-- One row per calibration of a hyperplane's distance to the Genant scale (written by `latentstore fit`).
-- score = polyval(coefficients, distance) (highest power first); grade = clip(round(score), 0, 3).
-- linear: through the mean distances of G0 (-> 0) and G3 (-> 3), as the paper; poly1 / poly3: least squares
-- of the grade on the distance over G0, G2 and G3 (G1 never calibrates).
CREATE TABLE calibrations (
    calibration_version INTEGER   NOT NULL PRIMARY KEY, -- 1, 2, ... over the store
    hyperplane_version  INTEGER   NOT NULL, -- hyperplanes.hyperplane_version
    model_id            VARCHAR   NOT NULL,
    kind                VARCHAR   NOT NULL, -- linear | poly1 | poly3
    coefficients        DOUBLE[]  NOT NULL, -- numpy.polyval order
    boot_coefficients   DOUBLE[][] NOT NULL, -- the same calibration of each bootstrap hyperplane
    grade_means         JSON      NOT NULL, -- {"0": mean distance of G0, "2": ..., "3": ...} and counts
    metrics             JSON      NOT NULL, -- on the labelled set: grade accuracy, macro-F1 (G0/G2/G3), ...
    created             TIMESTAMP NOT NULL
);
