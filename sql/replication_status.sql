-- For DBAs: the state of TripTrip Realtime's logical replication.
-- Run with psql against the server's database; every query here is exercised by tests/sql_examples.rs.

-- 1. The slot: who holds it, how far it has confirmed, and how much WAL it keeps on disk.
--    `lag_bytes` grows while the server is behind or down; `retained_wal_bytes` is what a dead
--    consumer costs in disk. Cap it with max_slot_wal_keep_size (wal_status turns 'lost' when
--    the cap is hit; the server then recreates the slot and clients recover from the tables).
SELECT slot_name,
       active,
       active_pid,
       confirmed_flush_lsn,
       wal_status,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) AS lag_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)         AS retained_wal_bytes,
       current_setting('max_slot_wal_keep_size')                  AS max_slot_wal_keep_size
FROM pg_replication_slots
WHERE plugin = 'pgoutput' AND slot_name LIKE 'triptrip%';

-- 2. The walsender serving the slot, as PostgreSQL sees it (positions the server reported).
SELECT application_name, state, sent_lsn, write_lsn, flush_lsn, replay_lsn, reply_time
FROM pg_stat_replication
WHERE application_name LIKE 'triptrip%';

-- 3. The tables whose committed changes are streamed.
SELECT schemaname, tablename
FROM pg_publication_tables
WHERE pubname = 'triptrip_realtime'
ORDER BY 1, 2;

-- 4. Settings logical replication depends on.
SELECT name, setting, unit
FROM pg_settings
WHERE name IN ('wal_level', 'max_replication_slots', 'max_wal_senders',
               'max_slot_wal_keep_size', 'wal_sender_timeout', 'logical_decoding_work_mem')
ORDER BY name;
