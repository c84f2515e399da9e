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
-- is_mismatch: true when the label is known, the prediction is not among its accepted classes, severity >= severity_gate and (where the gate uses class thresholds) predicted_prob >= threshold; false when they agree or the model is not confident enough; NULL when the label is unknown.
-- severity: 1 - header_class_prob, 0-1, for ranking how strongly the pixels contradict the label; NULL when the label is unknown.
-- suggested_correction: for a mismatch, the value to write (body_part/projection: the predicted class; orientation: the rotation to apply to bring the image upright, in the orientation vocabulary); else NULL.
-- model: registry name of the model that made the prediction.
-- institution_name: InstitutionName of the image, for grouping.
-- manufacturer: Manufacturer of the image, for grouping.
-- modality: Modality of the image, for grouping.
-- study_month: YYYY-MM of the study, for grouping.
-- run_id: run that read the image.
-- severity_gate: the severity a flag needs: the labelled class's own gate (table label_gates) where the model has one, else the task's (table gates); 0 when neither exists.
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
        coalesce(t.threshold, 0.5) as threshold,
        coalesce(lg.min_severity, g.min_severity, 0.0) as min_severity,
        coalesce(g.class_thresholds, true) as use_thresholds
    from checked as c
    left join latest_predictions as p on p.uri = c.uri and p.task = c.field
    left join thresholds as t
        on t.model_sha256 = p.model_sha256 and t.task = p.task and t.class = p.predicted
    left join gates as g
        on g.model_sha256 = p.model_sha256 and g.task = p.task
    left join label_gates as lg
        on lg.model_sha256 = p.model_sha256 and lg.task = p.task and lg.class = c.header_class
),

final as (
    select
        -- ids
        s.uri,
        i.sop_instance_uid,
        s.field,
        -- label
        s.header_value,
        s.header_class,
        s.label_source,
        -- prediction
        s.predicted_class,
        s.predicted_prob,
        s.header_class_prob,
        s.threshold,
        -- verdict
        case
            when s.header_class is null or s.predicted_class is null then null
            else not list_contains(string_split(s.header_class, '|'), s.predicted_class)
                and (not s.use_thresholds or s.predicted_prob >= s.threshold)
                and 1.0 - s.header_class_prob >= s.min_severity
        end as is_mismatch,
        case when s.header_class_prob is null then null else greatest(0.0, 1.0 - s.header_class_prob) end as severity,
        case
            when s.header_class is null or s.predicted_class is null then null
            when list_contains(string_split(s.header_class, '|'), s.predicted_class) then null
            when s.use_thresholds and s.predicted_prob < s.threshold then null
            when 1.0 - s.header_class_prob < s.min_severity then null
            when s.field = 'orientation' then
                case s.predicted_class
                    when 'rot90cw' then 'rot90ccw'
                    when 'rot90ccw' then 'rot90cw'
                    when 'rot180' then 'rot180'
                    else 'upright'
                end
            else s.predicted_class
        end as suggested_correction,
        s.model,
        -- grouping
        i.institution_name,
        i.manufacturer,
        i.modality,
        i.study_month,
        i.run_id,
        s.min_severity as severity_gate
    from scored as s
    inner join latest_images as i on i.uri = s.uri
)

select * from final
