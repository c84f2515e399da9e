-- table-description: key/value settings of this database; one row per key.
-- key: setting name (schema_version, created_at, migrated_at, tables_sha256 and views_sha256: digests of the sql/tables and sql/views files last applied).
-- value: setting value as text.
create table if not exists meta (
    key varchar primary key,
    value varchar
);
