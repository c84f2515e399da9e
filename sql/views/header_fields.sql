-- table-description: what header_json keeps, as rows: one row per image (uri x etag) x kept top-level DICOM keyword. Only what this view shows is stored of a header; the keywords removed (DICOM PS3.15 Annex E basic profile, every person name, private tags, curves, overlays) never reach header_json (tasks/dicom_io.py is_identifier; the table is tasks/annex_e_basic_profile.csv).
-- uri: object URL.
-- etag: the object version (as in images).
-- sop_instance_uid: SOPInstanceUID (kept as a column of images, not in header_json, so that findings join with PACS).
-- keyword: the DICOM keyword of the element, e.g. Modality, BodyPartExamined, ViewPosition, Rows.
-- value: the element's value as text (multiple values joined by a backslash, at most 256 characters); for a sequence, its items as a JSON array of objects filtered the same way.
-- is_sequence: true when the element is a sequence (value is then a JSON array).
create or replace view header_fields as
with

images_with_header as (
    select
        uri,
        etag,
        sop_instance_uid,
        header_json
    from images
    where header_json is not null
),

fields as (
    select
        img.uri,
        img.etag,
        img.sop_instance_uid,
        k.keyword,
        img.header_json
    from images_with_header as img,
        unnest(json_keys(img.header_json)) as k (keyword)
),

final as (
    select
        uri,
        etag,
        sop_instance_uid,
        keyword,
        header_json ->> keyword as value,
        json_type(header_json -> keyword) = 'ARRAY' as is_sequence
    from fields
)

select * from final
