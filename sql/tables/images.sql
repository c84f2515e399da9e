-- table-description: one row per DICOM object read (uri x etag); an object that changes in the lake gets a new row.
-- uri: full object URL (s3://bucket/key or file:///path).
-- etag: the store's ETag, or size-mtime where the store has none; with uri it identifies one version of the object.
-- size_bytes: object size in bytes.
-- sop_instance_uid: SOPInstanceUID (0008,0018); NULL when absent.
-- study_instance_uid: StudyInstanceUID (0020,000D).
-- series_instance_uid: SeriesInstanceUID (0020,000E).
-- patient_key: salted SHA-256 of PatientID (24 hex chars); the raw PatientID is never stored; NULL when absent.
-- modality: Modality (0008,0060), e.g. CR, DX.
-- body_part_examined: BodyPartExamined (0018,0015) as written.
-- view_position: ViewPosition (0018,5101) as written.
-- patient_orientation: PatientOrientation (0020,0020) as written, values joined by a backslash.
-- series_description: SeriesDescription (0008,103E).
-- protocol_name: ProtocolName (0018,1030).
-- study_description: StudyDescription (0008,1030).
-- institution_name: InstitutionName (0008,0080).
-- manufacturer: Manufacturer (0008,0070).
-- rows: Rows (0028,0010), pixels.
-- columns: Columns (0028,0011), pixels.
-- photometric_interpretation: PhotometricInterpretation (0028,0004).
-- transfer_syntax_uid: TransferSyntaxUID (0002,0010).
-- bits_stored: BitsStored (0028,0101).
-- number_of_frames: NumberOfFrames (0028,0008), 1 when absent; only the first frame is classified.
-- study_month: YYYY-MM of StudyDate (else ContentDate, AcquisitionDate); the full date is not stored.
-- label_body_part: header body part normalized to the body_part vocabulary; several accepted classes joined by |; NULL when unknown.
-- label_body_part_source: header element the body-part label came from (BodyPartExamined, series_description, protocol_name, study_description).
-- label_projection: header projection normalized to PA/AP/LATERAL (PA|AP for "frontal"); NULL when unknown.
-- label_projection_source: header element the projection label came from (ViewPosition or a description).
-- label_orientation: rotation of the stored image implied by PatientOrientation; NULL when absent or not interpretable.
-- label_orientation_source: PatientOrientation when label_orientation is set, else NULL.
-- header_json: public header elements as a JSON object {keyword: text}, a sequence as a list of such objects; never kept, at any depth: the attributes DICOM PS3.15 Annex E's basic profile removes, replaces or cleans (tasks/annex_e_basic_profile.csv), person names (VR PN), private tags, curves, overlays, bulk data (view header_fields lists what is kept).
-- audited_at: when the object was read (UTC).
-- run_id: the audit run that read the object.
create table if not exists images (
    uri varchar not null,
    etag varchar not null,
    size_bytes bigint,
    sop_instance_uid varchar,
    study_instance_uid varchar,
    series_instance_uid varchar,
    patient_key varchar,
    modality varchar,
    body_part_examined varchar,
    view_position varchar,
    patient_orientation varchar,
    series_description varchar,
    protocol_name varchar,
    study_description varchar,
    institution_name varchar,
    manufacturer varchar,
    "rows" integer,
    "columns" integer,
    photometric_interpretation varchar,
    transfer_syntax_uid varchar,
    bits_stored integer,
    number_of_frames integer,
    study_month varchar,
    label_body_part varchar,
    label_body_part_source varchar,
    label_projection varchar,
    label_projection_source varchar,
    label_orientation varchar,
    label_orientation_source varchar,
    header_json json,
    audited_at timestamptz,
    run_id varchar not null
);
