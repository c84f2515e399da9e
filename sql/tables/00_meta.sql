-- table-description: key/value settings of this database; one row per key.
-- key: setting name (schema_version, created_at, migrated_at).
-- value: setting value as text.
create table if not exists meta (
    key varchar primary key,
    value varchar
);
