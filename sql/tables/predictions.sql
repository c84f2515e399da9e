-- table-description: one row per image version x task x model.
-- uri: object URL, as in images.
-- etag: object version, as in images.
-- sop_instance_uid: SOPInstanceUID of the image.
-- task: body_part, projection or orientation.
-- predicted: the most probable class of the task.
-- probability: probability of the predicted class (0-1, softmax).
-- probabilities: every class of the task -> probability; sums to 1.
-- model: registry name of the model.
-- model_sha256: sha256 of the ONNX file that produced the row.
-- predicted_at: when the prediction was made (UTC).
-- run_id: the audit run that made the prediction.
create table if not exists predictions (
    uri varchar not null,
    etag varchar not null,
    sop_instance_uid varchar,
    task varchar not null,
    predicted varchar not null,
    probability float not null,
    probabilities map(varchar, float) not null,
    model varchar not null,
    model_sha256 varchar not null,
    predicted_at timestamptz,
    run_id varchar not null
);
