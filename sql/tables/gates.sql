-- table-description: per-task severity gates of each model, copied from models/registry.yaml; one row per model x task.
-- model: registry name of the model.
-- model_sha256: sha256 of the ONNX file.
-- task: body_part, projection or orientation.
-- min_severity: a disagreement is flagged only when 1 - p(labelled class) is at least this; chosen on validation data so that flags reach target_precision at the stated error prevalence.
-- target_precision: the precision the gate was chosen for.
-- prevalence: the label-error rate assumed when choosing it.
-- class_thresholds: true when a flag also needs p(predicted class) >= that class's threshold (table thresholds); false when the severity gate alone decides (whichever reached more validation recall at the target precision); NULL (databases before schema 3) counts as true.
-- lake_min_severity: where the lake-adaptation probe scored the image, a disagreement is flagged when 1 - p_lake(labelled class) is at least this (chosen on planted-error lakes the model did not train on); NULL: 0.5.
-- lake_rule: how a lake-probe verdict becomes a flag where the probe scored the image: both (the generic model's own rule must flag it too), lake (the probe alone decides), disagree (the probe flags and the generic model's most probable class is not the label); NULL: both.
-- lake_weight: where the lake probe scored the image, the severity a lake-probe flag is gated on is lake_weight x (1 - p_lake(label)) + (1 - lake_weight) x (1 - p_generic(label)); chosen with lake_min_severity; NULL: 1 (the probe alone).
-- lake_prior_images: shrinkage of lake_weight for labels the lake has few images of: the weight applied is lake_weight x n / (n + lake_prior_images), n = images with that label; NULL: 0 (none).
-- lake_distrust_scale: where set, the lake probe's share also follows lake_predictions.generic_distrust: it is multiplied by min(1, generic_distrust / lake_distrust_scale), so the generic model keeps its say on kinds of film whose lake labels it agrees with and the probe decides where it does not; NULL: off.
-- lake_confusable: sets of classes the lake probe tells apart less surely than the rest, each written as its classes joined by '|' (for projection 'PA|AP'); NULL or empty: none.
-- lake_confusable_min_severity: replaces lake_min_severity for a lake-probe flag whose labelled class and the probe's class both lie in one set of lake_confusable (for projection: a PA label the probe calls AP needs this, a PA label it calls LATERAL the usual gate); chosen with the other lake gates; NULL: lake_min_severity for every flag.
create table if not exists gates (
    model varchar not null,
    model_sha256 varchar not null,
    task varchar not null,
    min_severity float not null,
    target_precision float,
    prevalence float,
    class_thresholds boolean,
    lake_min_severity float,
    lake_rule varchar,
    lake_weight float,
    lake_prior_images float,
    lake_distrust_scale float,
    lake_confusable varchar[],
    lake_confusable_min_severity float
);
