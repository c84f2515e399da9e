-- table-description: one row per Parquet part file loaded into this database; parts of a crashed run that are not listed here are loaded by the next run instead of re-reading their objects.
-- path: absolute path of the part file.
-- kind: table the part holds rows for (images, predictions, thumbnails, skipped).
-- loaded_at: when it was loaded (UTC).
create table if not exists loaded_parts (
    path varchar primary key,
    kind varchar not null,
    loaded_at timestamptz
);
