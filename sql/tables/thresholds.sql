-- table-description: per-class mismatch thresholds of each model, copied from models/registry.yaml; one row per model x task x class.
-- model: registry name of the model.
-- model_sha256: sha256 of the ONNX file.
-- task: body_part, projection or orientation.
-- class: class name.
-- threshold: a prediction of this class contradicts a label only when its probability is at least this (chosen on validation data for the registry's target precision).
create table if not exists thresholds (
    model varchar not null,
    model_sha256 varchar not null,
    task varchar not null,
    class varchar not null,
    threshold float not null
);
