-- from schema v1: sql/tables/00_meta.sql
create table if not exists meta (
    key varchar primary key,
    value varchar
);
-- from schema v1: sql/tables/images.sql
create table if not exists images (
    uri varchar not null,
    etag varchar not null,
    size_bytes bigint,
    sop_instance_uid varchar,
    study_instance_uid varchar,
    series_instance_uid varchar,
    patient_key varchar,
    modality varchar,
    body_part_examined varchar,
    view_position varchar,
    patient_orientation varchar,
    series_description varchar,
    protocol_name varchar,
    study_description varchar,
    institution_name varchar,
    manufacturer varchar,
    "rows" integer,
    "columns" integer,
    photometric_interpretation varchar,
    transfer_syntax_uid varchar,
    bits_stored integer,
    number_of_frames integer,
    study_month varchar,
    label_body_part varchar,
    label_body_part_source varchar,
    label_projection varchar,
    label_projection_source varchar,
    label_orientation varchar,
    label_orientation_source varchar,
    header_json json,
    audited_at timestamptz,
    run_id varchar not null
);
-- from schema v1: sql/tables/predictions.sql
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
-- from schema v1: sql/tables/skipped.sql
create table if not exists skipped (
    uri varchar not null,
    etag varchar not null,
    size_bytes bigint,
    reason varchar not null,
    detail varchar,
    skipped_at timestamptz,
    run_id varchar not null
);
-- from schema v1: sql/tables/runs.sql
create table if not exists runs (
    run_id varchar primary key,
    started_at timestamptz,
    finished_at timestamptz,
    lake varchar,
    status varchar,
    n_listed bigint,
    n_new bigint,
    n_images bigint,
    n_skipped bigint,
    n_predictions bigint,
    n_shards integer,
    n_failed_shards integer,
    models json,
    wall_seconds double
);
-- from schema v1: sql/tables/labels.sql
create table if not exists labels (
    uri varchar,
    sop_instance_uid varchar,
    body_part varchar,
    projection varchar,
    orientation varchar,
    source_file varchar,
    loaded_at timestamptz
);
-- from schema v1: sql/tables/thresholds.sql
create table if not exists thresholds (
    model varchar not null,
    model_sha256 varchar not null,
    task varchar not null,
    class varchar not null,
    threshold float not null
);
