-- table-description: key/value settings of this database; one row per key.
-- key: setting name (schema_version, patient_salt_id, created_at).
-- value: setting value as text.
create table if not exists meta (
    key varchar primary key,
    value varchar
);
