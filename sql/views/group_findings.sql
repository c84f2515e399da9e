-- table-description: one row per field x grouping dimension x group value x labelled class (groups of at least 2 labelled images): how often the generic model disagrees with the group's labels. A systematic error (one site's protocol mapped to the wrong body part for every image) is learnt as truth by the lake probe, so it shows here, once, instead of as per-image flags; so does a kind of film the generic model does not know. Review flagged groups first.
-- field: body_part, projection or orientation.
-- dimension: what the images are grouped by: institution_name, manufacturer, series_description, protocol_name, or header_value (the raw label text).
-- group_value: the value of that dimension shared by the group's images.
-- header_class: the labelled class (normalized) shared by the group's images.
-- predicted_class: the generic model's most common class among the group's disagreeing images; NULL when none disagrees.
-- n_images: images in the group (latest version of each uri, label known, predicted).
-- n_disagree: images whose generic prediction is not among the label's accepted classes.
-- share_disagree: n_disagree / n_images.
-- n_flagged: images of the group flagged one by one in findings (is_mismatch).
-- n_lake_explained: disagreeing images that the lake probe flagged one by one (flag_basis lake or both): scattered errors the lake already lists, not a group property.
-- is_flagged: true when the group has at least 5 images, the generic model disagrees with at least half of its labels, and at most half of those disagreements are lake-probe flags: a group to review as a whole (a systematic label error, or films the model does not know). Groups whose disagreements are scattered label errors, each already flagged, are not.
create or replace view group_findings as
with

base as (
    select
        f.field,
        f.header_class,
        f.header_value,
        f.predicted_class,
        f.is_mismatch,
        coalesce(f.flag_basis in ('lake', 'both'), false) as lake_flagged,
        not list_contains(string_split(f.header_class, '|'), f.predicted_class) as disagrees,
        i.institution_name,
        i.manufacturer,
        i.series_description,
        i.protocol_name
    from findings as f
    inner join images as i on i.uri = f.uri and i.run_id = f.run_id
    where f.header_class is not null and f.predicted_class is not null
),

long as (
    select field, 'institution_name' as dimension, institution_name as group_value, * exclude (field)
    from base
    union all
    select field, 'manufacturer', manufacturer, * exclude (field) from base
    union all
    select field, 'series_description', series_description, * exclude (field) from base
    union all
    select field, 'protocol_name', protocol_name, * exclude (field) from base
    union all
    select field, 'header_value', header_value, * exclude (field) from base
),

grouped as (
    select
        field,
        dimension,
        group_value,
        header_class,
        mode(predicted_class) filter (where disagrees) as predicted_class,
        count(*) as n_images,
        count(*) filter (where disagrees) as n_disagree,
        count(*) filter (where is_mismatch) as n_flagged,
        count(*) filter (where disagrees and lake_flagged) as n_lake_explained
    from long
    where group_value is not null and trim(group_value) <> ''
    group by field, dimension, group_value, header_class
    having count(*) >= 2
)

select
    field,
    dimension,
    group_value,
    header_class,
    predicted_class,
    n_images,
    n_disagree,
    n_disagree / n_images as share_disagree,
    n_flagged,
    n_lake_explained,
    n_images >= 5 and n_disagree / n_images >= 0.5 and n_lake_explained <= n_disagree / 2 as is_flagged
from grouped
