-- table-description: one row per image version x model: the model's pooled feature vector (ONNX output named in the registry's embedding block), the input of the lake-adaptation probes.
-- uri: object URL, as in images.
-- etag: object version, as in images.
-- model_sha256: sha256 of the ONNX file that produced the vector.
-- vector: the pooled features, float32, length = the registry's embedding size (224 for radlint-multihead-v3).
-- run_id: the audit run that computed the vector.
create table if not exists embeddings (
    uri varchar not null,
    etag varchar not null,
    model_sha256 varchar not null,
    vector float[] not null,
    run_id varchar not null
);
