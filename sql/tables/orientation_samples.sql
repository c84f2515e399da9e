-- table-description: for a deterministic sample of the lake's images (a fixed share of each run's new objects, chosen by a hash of the uri), the embedding of the stored image turned by a known quarter turn (the columns the orientation and body-part probes read); the self-supervised orientation probe learns from them what each turn looks like on this lake.
-- uri: object URL, as in images.
-- etag: object version, as in images.
-- model_sha256: sha256 of the ONNX file that produced the vector.
-- turn: the quarter turn applied to the stored image before inference, in the orientation vocabulary (rot90cw, rot180, rot90ccw); the unturned image is the embeddings row.
-- vector: the turned image's embedding columns named by the registry's embedding.turned.columns (the model's whole embedding where the registry names no turned file; rows from before it named one hold the whole embedding; rows of any other width, written under other turned columns, are neither read nor counted as sampled, so new objects refill the sample), float32.
-- run_id: the audit run that computed the vector.
create table if not exists orientation_samples (
    uri varchar not null,
    etag varchar not null,
    model_sha256 varchar not null,
    turn varchar not null,
    vector float[] not null,
    run_id varchar not null
);
