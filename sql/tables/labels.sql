-- table-description: external labels from --labels files (RIS as source of truth); one row per key (a later load replaces a key's row when its labels changed). They override header labels.
-- uri: object URL the label is for; NULL when keyed by sop_instance_uid.
-- sop_instance_uid: SOPInstanceUID the label is for; NULL when keyed by uri.
-- body_part: body_part class(es), | separated; NULL when the file gives none.
-- projection: PA, AP or LATERAL; NULL when the file gives none.
-- orientation: upright, rot90cw, rot180 or rot90ccw; NULL when the file gives none.
-- source_file: path of the label file.
-- loaded_at: when the key's current labels were loaded (UTC); the latest load of a key wins.
create table if not exists labels (
    uri varchar,
    sop_instance_uid varchar,
    body_part varchar,
    projection varchar,
    orientation varchar,
    source_file varchar,
    loaded_at timestamptz
);
