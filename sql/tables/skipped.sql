-- table-description: one row per object version that could not be audited.
-- uri: object URL.
-- etag: object version; a changed object is tried again.
-- size_bytes: object size in bytes.
-- reason: code: not_dicom, truncated, no_pixel_data, unsupported_transfer_syntax, unsupported_photometric, too_large, read_error, fetch_error (storage failed after retries; retried by the next run).
-- detail: the error message, at most 500 characters.
-- skipped_at: when the object was tried (UTC).
-- run_id: the audit run that tried it.
create table if not exists skipped (
    uri varchar not null,
    etag varchar not null,
    size_bytes bigint,
    reason varchar not null,
    detail varchar,
    skipped_at timestamptz,
    run_id varchar not null
);
