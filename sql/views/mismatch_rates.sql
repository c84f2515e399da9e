-- table-description: mismatch rates by field and grouping dimension; one row per field x dimension x group value (dimensions: institution_name, manufacturer, modality, study_month).
-- field: body_part, projection or orientation.
-- dimension: the grouping column: institution_name, manufacturer, modality or study_month.
-- group_value: the value of that column; '(unknown)' when the header has none. For manufacturer the vendor: upper case, punctuation as spaces, trailing company suffixes (Co., Ltd., Inc., Corp., Corporation, GmbH, AG ...) removed, so that 'FUJIFILM Corporation' and 'Fujifilm Co., Ltd.' are one group.
-- n_checked: findings with both a label and a prediction (is_mismatch not NULL).
-- n_mismatch: findings flagged as mismatches.
-- mismatch_rate: n_mismatch / n_checked (0-1); NULL when nothing was checked.
create or replace view mismatch_rates as
with

checked as (
    select * from findings where is_mismatch is not null
),

vendors as (
    select
        *,
        nullif(
            regexp_replace(
                trim(regexp_replace(upper(manufacturer), '[^\p{L}\p{N}]+', ' ', 'g')),
                '( (CO|COMPANY|LTD|LIMITED|INC|INCORPORATED|CORP|CORPORATION|GMBH|AG|SA|NV|BV|LLC|PLC|KK|SPA|SRL))+$',
                ''
            ),
            ''
        ) as vendor
    from checked
),

long as (
    select field, 'institution_name' as dimension, coalesce(institution_name, '(unknown)') as group_value, is_mismatch from checked
    union all
    select field, 'manufacturer', coalesce(vendor, '(unknown)'), is_mismatch from vendors
    union all
    select field, 'modality', coalesce(modality, '(unknown)'), is_mismatch from checked
    union all
    select field, 'study_month', coalesce(study_month, '(unknown)'), is_mismatch from checked
),

final as (
    select
        field,
        dimension,
        group_value,
        count(*) as n_checked,
        count(*) filter (where is_mismatch) as n_mismatch,
        count(*) filter (where is_mismatch) / nullif(count(*), 0) as mismatch_rate
    from long
    group by field, dimension, group_value
)

select * from final
