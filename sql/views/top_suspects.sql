-- table-description: mismatches ranked by severity, most certain first; one row per flagged image x field.
-- rank: 1 = the label the pixels contradict most strongly (ties broken by predicted_prob, then uri).
-- uri: object URL.
-- sop_instance_uid: SOPInstanceUID.
-- field: body_part, projection or orientation.
-- header_value: raw header (or label file) text.
-- header_class: the label in the vocabulary.
-- predicted_class: the model's class.
-- predicted_prob: probability of predicted_class.
-- severity: 1 - probability of the labelled class under the view that decided the flag (findings.severity).
-- flag_basis: which view decided the flag: lake, generic or both (findings.flag_basis).
-- lake_label_prob: the lake probe's probability of the labelled class; NULL where no probe scored the image.
-- suggested_correction: the value to write (orientation: the rotation to apply).
-- institution_name: InstitutionName.
-- study_month: YYYY-MM of the study.
create or replace view top_suspects as
with

flagged as (
    select * from findings where is_mismatch
),

final as (
    select
        row_number() over (order by severity desc nulls last, predicted_prob desc, uri, field) as rank,
        uri,
        sop_instance_uid,
        field,
        header_value,
        header_class,
        predicted_class,
        predicted_prob,
        severity,
        suggested_correction,
        flag_basis,
        lake_label_prob,
        institution_name,
        study_month
    from flagged
)

select * from final
