-- table-description: one row per audit run.
-- run_id: run identifier (UTC timestamp plus random suffix); also the Parquet partition name.
-- started_at: when the run started (UTC).
-- finished_at: when the run finished (UTC); NULL while running or after a crash.
-- lake: the lake URL audited.
-- status: completed, incomplete (some shards failed; re-run to finish), running, or interrupted (Ctrl-C, or found running by a later audit after a crash).
-- n_listed: objects listed in the lake.
-- n_new: objects not yet audited with these model versions, i.e. read in this run.
-- n_images: images rows added, including those loaded from parts an interrupted run left (their run_id is that run's).
-- n_skipped: skipped rows added, including those loaded from parts an interrupted run left.
-- n_predictions: predictions rows added, including those loaded from parts an interrupted run left.
-- n_shards: shards submitted.
-- n_failed_shards: shards that failed after retries.
-- models: JSON list of {name, sha256} of the models used.
-- wall_seconds: run wall time in seconds.
create table if not exists runs (
    run_id varchar primary key,
    started_at timestamptz,
    finished_at timestamptz,
    lake varchar,
    status varchar,
    n_listed bigint,
    n_new bigint,
    n_images bigint,
    n_skipped bigint,
    n_predictions bigint,
    n_shards integer,
    n_failed_shards integer,
    models json,
    wall_seconds double
);
