-- table-description: per-task severity gates of each model, copied from models/registry.yaml; one row per model x task.
-- model: registry name of the model.
-- model_sha256: sha256 of the ONNX file.
-- task: body_part, projection or orientation.
-- min_severity: a disagreement is flagged only when 1 - p(labelled class) is at least this; chosen on validation data so that flags reach target_precision at the stated error prevalence.
-- target_precision: the precision the gate was chosen for.
-- prevalence: the label-error rate assumed when choosing it.
create table if not exists gates (
    model varchar not null,
    model_sha256 varchar not null,
    task varchar not null,
    min_severity float not null,
    target_precision float,
    prevalence float
);
