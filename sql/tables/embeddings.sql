-- table-description: one row per image version x model: the feature vector the model exposes as its embedding output (named in the registry's embedding block), the input of the lake-adaptation probes.
-- uri: object URL, as in images.
-- etag: object version, as in images.
-- model_sha256: sha256 of the ONNX file that produced the vector.
-- vector: float32, length = the registry's embedding size; for radlint-multihead-v4 1,280 numbers (5 KB): the model's own pooled features (its EfficientNet-Lite0 fine-tuned on radiographs; 2,560 before 2026-12-07, when 1,280 features of a grafted ImageNet EfficientNet-Lite0 followed; v3: 224 + 1,280) (embedding.probe_features says which columns each probe reads).
-- run_id: the audit run that computed the vector.
create table if not exists embeddings (
    uri varchar not null,
    etag varchar not null,
    model_sha256 varchar not null,
    vector float[] not null,
    run_id varchar not null
);
