-- table-description: per-label severity gates of each model, copied from models/registry.yaml (tasks.<task>.gate.by_label); one row per model x task x labelled class. Where a row exists for a finding's labelled class it replaces the task's gate (table gates).
-- model: registry name of the model.
-- model_sha256: sha256 of the ONNX file.
-- task: body_part, projection or orientation.
-- class: the labelled class (a single vocabulary class; labels that accept several classes use the task's gate).
-- min_severity: a disagreement with a label of this class is flagged only when 1 - p(labelled class) is at least this; chosen on validation data so that the flags on such labels reach the gate's target precision.
create table if not exists label_gates (
    model varchar not null,
    model_sha256 varchar not null,
    task varchar not null,
    class varchar not null,
    min_severity float not null
);
