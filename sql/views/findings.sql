-- table-description: one row per image (latest version of each uri) x checked field; projection rows only for chest images. The label comes from the --labels table when it has one, else from the header.
-- uri: object URL.
-- sop_instance_uid: SOPInstanceUID.
-- field: body_part, projection or orientation.
-- header_value: the raw text the label came from (header element or label file); NULL when there is none.
-- header_class: the label normalized to the vocabulary (several accepted classes joined by |); for orientation 'upright' is assumed when nothing says otherwise; NULL when unknown.
-- label_source: where header_class came from: labels_file, the header element (BodyPartExamined, ViewPosition, PatientOrientation, series_description, protocol_name, study_description) or assumed.
-- predicted_class: the model's most probable class.
-- predicted_prob: probability of predicted_class (0-1).
-- header_class_prob: the model's probability of the labelled class (sum over accepted classes); NULL when header_class is NULL.
-- threshold: the per-class threshold of predicted_class from the model registry; it applies only where the task's gate says class_thresholds (table gates).
-- is_mismatch: the flag. Where the lake probe scored the image (lake_method lake_oof or lake_fit): its most probable class is not among the label's accepted classes, the blended severity lake_weight x (1 - lake_label_prob) + (1 - lake_weight) x (1 - header_class_prob) (lake_weight as in its column) >= lake_gate, and what the task's lake_rule adds (both: generic_is_mismatch too; disagree: the generic model's class is not the label either; lake: nothing). Elsewhere the generic model decides (generic_is_mismatch). NULL when the label is unknown.
-- severity: for ranking, 0-1: where the lake probe scored the image the blended severity lake_weight x (1 - lake_label_prob) + (1 - lake_weight) x (1 - header_class_prob) (lake_weight as in its column), else 1 - header_class_prob; NULL when the label is unknown.
-- suggested_correction: for a mismatch, the value to write (body_part/projection: the deciding basis's most probable class; orientation: the rotation to apply to bring the image upright, in the orientation vocabulary); else NULL.
-- model: registry name of the model that made the prediction.
-- institution_name: InstitutionName of the image, for grouping.
-- manufacturer: Manufacturer of the image, for grouping.
-- modality: Modality of the image, for grouping.
-- study_month: YYYY-MM of the study, for grouping.
-- run_id: run that read the image.
-- severity_gate: the severity the generic model's flag needs: the labelled class's own gate (table label_gates) where the model has one, else the task's (table gates); 0 when neither exists.
-- lake_label_prob: the lake probe's probability of the labelled class (sum over accepted classes); NULL where no probe scored the image or the label is unknown.
-- lake_predicted_class: the lake probe's most probable class; NULL where no probe scored the image.
-- lake_method: how the lake probability was made (table lake_predictions): lake_oof, lake_fit, or generic (no probe: the generic model decides); NULL before the first adaptation.
-- lake_fallback_reason: why lake_method is generic (no_embedding, too_few_images, one_class, class_too_rare, too_few_samples); else NULL.
-- generic_is_mismatch: the generic model's own verdict (label known, prediction not among its classes, past the task's severity gate and, where used, the class threshold); shown beside the flag for transparency.
-- flag_basis: for a mismatch, which view decided it: both (the lake probe flagged and the generic model agrees), lake (the lake probe alone), generic (no lake probe for this image; the generic model alone); NULL when not flagged.
-- lake_gate: the severity a lake-probe flag needs (table gates): lake_confusable_min_severity where the label's classes and the probe's class all lie in one set of lake_confusable (PA labelled, AP seen), else lake_min_severity; 0.5 when unset.
-- lake_rule: what else a lake-probe flag needs (table gates): both, lake or disagree; both when unset.
-- lake_weight: the lake probe's share of the blended severity for this image: the task's lake_weight (table gates; 1 when unset) x n / (n + lake_prior_images), n = the lake's images with this label, so a probe that saw few of them counts less; where the task's lake_distrust_scale is set, also x min(1, generic_distrust / lake_distrust_scale), so the generic model keeps its say on kinds of film whose lake labels it agrees with.
-- generic_distrust: how often the generic model disagrees with the labels of this image's look-alikes in the lake (table lake_predictions; 0-1); NULL where not computed.
create or replace view findings as
with

latest_images as (
    select *
    from images
    qualify row_number() over (partition by uri order by audited_at desc, run_id desc) = 1
),

latest_predictions as (
    select p.*
    from predictions as p
    inner join latest_images as i on p.uri = i.uri and p.etag = i.etag
    qualify row_number() over (partition by p.uri, p.task order by p.predicted_at desc, p.run_id desc) = 1
),

external_labels as (
    select
        coalesce(l_uri.uri, l_sop.uri) as uri_key,
        i.uri,
        coalesce(l_uri.body_part, l_sop.body_part) as body_part,
        coalesce(l_uri.projection, l_sop.projection) as projection,
        coalesce(l_uri.orientation, l_sop.orientation) as orientation
    from latest_images as i
    left join (
        select * from labels where uri is not null
        qualify row_number() over (partition by uri order by loaded_at desc) = 1
    ) as l_uri on l_uri.uri = i.uri
    left join (
        select * from labels where sop_instance_uid is not null
        qualify row_number() over (partition by sop_instance_uid order by loaded_at desc) = 1
    ) as l_sop on l_sop.sop_instance_uid = i.sop_instance_uid
),

labelled as (
    select
        i.*,
        e.body_part as ext_body_part,
        e.projection as ext_projection,
        e.orientation as ext_orientation
    from latest_images as i
    left join external_labels as e on e.uri = i.uri
),

fields as (
    select
        uri,
        'body_part' as field,
        case
            when ext_body_part is not null then ext_body_part
            when label_body_part_source = 'BodyPartExamined' then body_part_examined
            when label_body_part_source = 'series_description' then series_description
            when label_body_part_source = 'protocol_name' then protocol_name
            when label_body_part_source = 'study_description' then study_description
            else body_part_examined
        end as header_value,
        coalesce(ext_body_part, label_body_part) as header_class,
        case when ext_body_part is not null then 'labels_file' else label_body_part_source end as label_source
    from labelled
    union all
    select
        uri,
        'projection' as field,
        case
            when ext_projection is not null then ext_projection
            when label_projection_source = 'ViewPosition' then view_position
            when label_projection_source = 'series_description' then series_description
            when label_projection_source = 'protocol_name' then protocol_name
            when label_projection_source = 'study_description' then study_description
            else view_position
        end as header_value,
        coalesce(ext_projection, label_projection) as header_class,
        case when ext_projection is not null then 'labels_file' else label_projection_source end as label_source
    from labelled
    union all
    select
        uri,
        'orientation' as field,
        coalesce(ext_orientation, patient_orientation) as header_value,
        coalesce(ext_orientation, label_orientation, 'upright') as header_class,
        case
            when ext_orientation is not null then 'labels_file'
            when label_orientation is not null then 'PatientOrientation'
            else 'assumed'
        end as label_source
    from labelled
),

body_part_final as (
    select
        l.uri,
        coalesce(l.ext_body_part, l.label_body_part) as body_part_label,
        bp.predicted as body_part_predicted,
        bp.probability >= coalesce(t.threshold, 0.5) as body_part_confident
    from labelled as l
    left join latest_predictions as bp on bp.uri = l.uri and bp.task = 'body_part'
    left join thresholds as t
        on t.model_sha256 = bp.model_sha256 and t.task = 'body_part' and t.class = bp.predicted
),

checked as (
    select f.*
    from fields as f
    inner join body_part_final as b on b.uri = f.uri
    where
        f.field <> 'projection'
        -- projection is checked for chest images only: by label, or by a confident prediction when unlabelled
        or (b.body_part_label is not null and list_contains(string_split(b.body_part_label, '|'), 'chest'))
        or (b.body_part_label is null and b.body_part_predicted = 'chest' and b.body_part_confident)
),

scored as (
    select
        c.uri,
        c.field,
        c.header_value,
        c.header_class,
        c.label_source,
        p.predicted as predicted_class,
        p.probability as predicted_prob,
        p.model,
        case
            when c.header_class is null or p.probabilities is null then null
            else list_sum(list_transform(string_split(c.header_class, '|'), lambda x: coalesce(p.probabilities[x], 0.0)))
        end as header_class_prob,
        not list_contains(string_split(c.header_class, '|'), p.predicted) as generic_disagrees,
        coalesce(t.threshold, 0.5) as threshold,
        coalesce(lg.min_severity, g.min_severity, 0.0) as min_severity,
        coalesce(g.class_thresholds, true) as use_thresholds,
        coalesce(g.lake_min_severity, 0.5) as lake_gate,
        coalesce(g.lake_rule, 'both') as lake_rule,
        coalesce(g.lake_weight, 1.0) as lake_weight,
        coalesce(g.lake_prior_images, 0.0) as lake_prior_images,
        g.lake_distrust_scale,
        g.lake_confusable,
        g.lake_confusable_min_severity
    from checked as c
    left join latest_predictions as p on p.uri = c.uri and p.task = c.field
    left join thresholds as t
        on t.model_sha256 = p.model_sha256 and t.task = p.task and t.class = p.predicted
    left join gates as g
        on g.model_sha256 = p.model_sha256 and g.task = p.task
    left join label_gates as lg
        on lg.model_sha256 = p.model_sha256 and lg.task = p.task and lg.class = c.header_class
),

adapted as (
    select
        s.* replace (
            -- a claim between classes the probe confuses easily (PA and AP) must pass a stricter gate
            case
                when s.lake_confusable_min_severity is not null
                    and len(list_filter(coalesce(s.lake_confusable, []), lambda c:
                        list_has_all(string_split(c, '|'), string_split(s.header_class, '|'))
                        and list_contains(string_split(c, '|'), lp.predicted))) > 0
                    then s.lake_confusable_min_severity
                else s.lake_gate
            end as lake_gate
        ),
        lp.method as lake_method,
        lp.fallback_reason as lake_fallback_reason,
        lp.predicted as lake_predicted_class,
        -- a probe that saw few images of this label is trusted less: its share shrinks toward the generic model
        -- and, where the task says so, a generic model that agrees with this kind of film's labels keeps more of its say
        s.lake_weight * n_label / (n_label + s.lake_prior_images)
        * case
            when s.lake_distrust_scale is null or lp.generic_distrust is null then 1.0
            else least(1.0, lp.generic_distrust / s.lake_distrust_scale)
        end as lake_weight_eff,
        lp.generic_distrust,
        coalesce(lp.method in ('lake_oof', 'lake_fit') and lp.probabilities is not null, false) as lake_ok,
        case
            when s.header_class is null or lp.probabilities is null then null
            else list_sum(list_transform(string_split(s.header_class, '|'), lambda x: coalesce(lp.probabilities[x], 0.0)))
        end as lake_label_prob,
        not list_contains(string_split(s.header_class, '|'), lp.predicted) as lake_disagrees,
        -- the generic model's verdict (the rule before lake adaptation)
        case
            when s.header_class is null or s.predicted_class is null then null
            else s.generic_disagrees
                and (not s.use_thresholds or s.predicted_prob >= s.threshold)
                and 1.0 - s.header_class_prob >= s.min_severity
        end as generic_is_mismatch
    from (
        select *, count(*) over (partition by field, header_class) as n_label from scored
    ) as s
    inner join latest_images as i on i.uri = s.uri
    left join lake_predictions as lp on lp.uri = s.uri and lp.etag = i.etag and lp.task = s.field
),

severities as (
    select
        a.*,
        -- where the lake probe scored the image, the two views' severities blended; else the generic model's
        case
            when a.lake_ok and a.lake_label_prob is not null then
                greatest(0.0, a.lake_weight_eff * (1.0 - a.lake_label_prob) + (1.0 - a.lake_weight_eff) * (1.0 - a.header_class_prob))
            when a.header_class_prob is null then null
            else greatest(0.0, 1.0 - a.header_class_prob)
        end as severity
    from adapted as a
),

decided as (
    select
        s.*,
        -- where the lake probe scored the image it decides; elsewhere the generic model does
        case
            when s.header_class is null or s.predicted_class is null then null
            when s.lake_ok then
                s.lake_disagrees
                and s.severity >= s.lake_gate
                and case s.lake_rule
                    when 'lake' then true
                    when 'disagree' then s.generic_disagrees
                    else s.generic_is_mismatch
                end
            else s.generic_is_mismatch
        end as is_mismatch
    from severities as s
),

final as (
    select
        -- ids
        d.uri,
        i.sop_instance_uid,
        d.field,
        -- label
        d.header_value,
        d.header_class,
        d.label_source,
        -- prediction
        d.predicted_class,
        d.predicted_prob,
        d.header_class_prob,
        d.threshold,
        -- verdict
        d.is_mismatch,
        d.severity,
        case
            when not coalesce(d.is_mismatch, false) then null
            when d.field = 'orientation' then
                case case when d.lake_ok then d.lake_predicted_class else d.predicted_class end
                    when 'rot90cw' then 'rot90ccw'
                    when 'rot90ccw' then 'rot90cw'
                    when 'rot180' then 'rot180'
                    else 'upright'
                end
            when d.lake_ok then d.lake_predicted_class
            else d.predicted_class
        end as suggested_correction,
        d.model,
        -- grouping
        i.institution_name,
        i.manufacturer,
        i.modality,
        i.study_month,
        i.run_id,
        d.min_severity as severity_gate,
        -- lake adaptation
        d.lake_label_prob,
        d.lake_predicted_class,
        d.lake_method,
        d.lake_fallback_reason,
        d.generic_is_mismatch,
        case
            when not coalesce(d.is_mismatch, false) then null
            when d.lake_ok and d.generic_is_mismatch then 'both'
            when d.lake_ok then 'lake'
            else 'generic'
        end as flag_basis,
        d.lake_gate,
        d.lake_rule,
        d.lake_weight_eff as lake_weight,
        d.generic_distrust
    from decided as d
    inner join latest_images as i on i.uri = d.uri
)

select * from final
