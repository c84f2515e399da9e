-- table-description: the lake-adaptation stage's probabilities, one row per current image x task, replaced on every run (refitted over all current images). Body part and projection come from probes fitted out-of-fold on the lake's own labels (folds grouped by patient); orientation from a probe trained on the lake's images turned by known quarter turns. Where no probe could be fitted the row says so and carries the generic model's probabilities.
-- uri: object URL, as in images.
-- etag: object version the probabilities belong to.
-- task: body_part, projection or orientation.
-- predicted: the most probable class under this row's probabilities.
-- probability: probability of predicted (0-1).
-- probabilities: every class of the task -> probability (classes the probe could not learn are 0).
-- method: lake_oof (out-of-fold probe: the image's own label was not used to score it), lake_fit (probe fitted on other images; the image was not in its training data), generic (fallback: the generic model's probabilities).
-- fallback_reason: why method is generic (no_embedding, too_few_images, one_class, class_too_rare, too_few_samples); NULL otherwise.
-- model_sha256: the model whose embeddings and probabilities the probe used.
-- fitted_run_id: the audit run that fitted the probe.
-- fitted_at: when the probe was fitted (UTC).
-- generic_distrust: how often the generic model disagrees with the labels of this image's look-alikes in the lake: the median of 1 - p_generic(label) over its 15 nearest labelled images (cosine on the task's probe features, the image itself left out); near 0 where the generic model knows this kind of film, high on a kind it never saw or a group labelled wrong throughout. NULL where it could not be computed (no embedding, too few labelled images).
create table if not exists lake_predictions (
    uri varchar not null,
    etag varchar not null,
    task varchar not null,
    predicted varchar,
    probability float,
    probabilities map(varchar, float),
    method varchar not null,
    fallback_reason varchar,
    model_sha256 varchar not null,
    fitted_run_id varchar not null,
    fitted_at timestamptz,
    generic_distrust float
);
